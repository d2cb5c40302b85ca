"""The JSON API through Flask's test client, on real images."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from edge_app.config import Settings, with_overrides
from edge_app.errors import ConfigError
from edge_app.service import Service
from edge_app.web import create_app, services
from support.dicom import dicom_file

pytestmark = pytest.mark.unit


def test_health(client: FlaskClient) -> None:
    body = client.get("/api/v1/health").get_json()
    assert body["status"] == "ok" and body["runner"] == "onnxruntime"
    assert body["model"] == "cxr-reference" and body["version"] == "1.1.1"


def test_post_png_gives_a_study_with_findings(client: FlaskClient, nih_png: Path) -> None:
    with nih_png.open("rb") as fh:
        resp = client.post("/api/v1/studies", data={"file": (fh, "chest.png")})
    assert resp.status_code == 201
    study = resp.get_json()
    assert resp.headers["Location"] == f"/api/v1/studies/{study['uid']}"
    (image,) = study["images"]
    assert image["status"] == "done" and image["reason"] is None and image["source"] == "api"
    (result,) = image["results"]
    assert result["status"] == "ok" and len(result["findings"]) == 5
    assert result["model"]["runner"] == "onnxruntime"
    assert study.pop("image_id") == image["id"] and study.pop("duplicate") is False and study.pop("kept") is False
    assert client.get(f"/api/v1/studies/{study['uid']}").get_json() == study

    heat = client.get(f"/api/v1/results/{result['id']}/heatmap.png")
    assert heat.status_code == 200 and heat.mimetype == "image/png"
    assert Image.open(io.BytesIO(heat.data)).size == (4, 4)
    first = result["heatmaps"][0]["label"]
    assert client.get(f"/api/v1/results/{result['id']}/heatmap.png?label={first}").data == heat.data, "the first"
    other = next(f["label"] for f in result["findings"] if not f["positive"])
    refused = client.get(f"/api/v1/results/{result['id']}/heatmap.png?label={other}")
    assert refused.status_code == 404 and refused.get_json()["detail"] == (
        f"result {result['id']} has no heatmap for {other!r} (it has: "
        + ", ".join(m["label"] for m in result["heatmaps"])
        + ")"
    )
    listed = client.get("/api/v1/studies").get_json()["studies"]
    assert [s["uid"] for s in listed] == [study["uid"]]


def test_post_raw_dicom_body(client: FlaskClient) -> None:
    data = dicom_file("RG1_J2KR.dcm").read_bytes()
    resp = client.post("/api/v1/studies?filename=rg1.dcm", data=data, content_type="application/dicom")
    assert resp.status_code == 201
    image = resp.get_json()["images"][0]
    assert image["metadata"]["modality"] == "CR" and image["metadata"]["photometric"] == "MONOCHROME1"


def test_bad_image_is_refused_clearly_and_kept(client: FlaskClient, app: Flask) -> None:
    resp = client.post("/api/v1/studies", data={"file": (io.BytesIO(b"GIF89a nonsense"), "x.gif")})
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["detail"] == "not a DICOM (Part 10), PNG or JPEG file"
    image = body["study"]["images"][0]
    assert image["status"] == "rejected" and image["reason"] == "not a DICOM (Part 10), PNG or JPEG file"
    assert image["results"] == [], "refused as it arrived: no model ran"
    store = app.extensions["edge_app"].store
    assert store.read_file(image["sha256"]) == b"GIF89a nonsense", "what was sent is kept"


def test_empty_upload(client: FlaskClient) -> None:
    resp = client.post("/api/v1/studies", data=b"")
    assert resp.status_code == 400 and "no image" in resp.get_json()["detail"]


def test_unknown_study_and_result(client: FlaskClient) -> None:
    assert client.get("/api/v1/studies/0123").status_code == 404
    assert client.get("/api/v1/results/999/heatmap.png").get_json()["error"] == "Not Found"


def test_upload_over_the_limit_says_the_limit(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    app = create_app(service({"storage": {"data_dir": str(tmp_path)}, "server": {"max_upload_mb": 1}}))
    client = api_client(app)
    resp = client.post("/api/v1/studies", data=b"\0" * (1024 * 1024 + 1))
    assert resp.status_code == 413 and resp.get_json() == {
        "error": "Request Entity Too Large",
        "detail": "the upload is larger than the limit of 1 MB (server.max_upload_mb)",
    }
    assert client.post("/api/v1/studies", data=b"\0" * (1024 * 1024 - 1000)).status_code == 422, "under it"


def test_result_ids_beyond_sqlite_integers_are_not_found(client: FlaskClient) -> None:
    for result_id in ("9" * 20, str(2**63), "0"):
        resp = client.get(f"/api/v1/results/{result_id}/heatmap.png")
        assert resp.status_code == 404 and resp.get_json()["error"] == "Not Found"


def test_a_multipart_file_name_that_is_not_utf8_is_refused_plainly(client: FlaskClient) -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="\xff\xfe.png"\r\n'
        b"Content-Type: image/png\r\n\r\nDATA\r\n--XX--\r\n"
    )
    resp = client.post("/api/v1/studies", data=body, content_type="multipart/form-data; boundary=XX")
    assert resp.status_code == 400
    detail = resp.get_json()["detail"]
    assert detail.startswith("the multipart body cannot be read ('utf-8' codec can't decode byte 0xff")
    assert "must be UTF-8" in detail


def test_a_multipart_body_without_a_file_field(client: FlaskClient) -> None:
    resp = client.post("/api/v1/studies", data={"other": "x"}, content_type="multipart/form-data")
    assert resp.status_code == 400 and resp.get_json()["detail"].startswith("no image: send a multipart field")


def test_the_service_finishes_what_a_crash_left(tmp_path: Path, nih_png: Path, service: Callable[..., Service]) -> None:
    """An image whose diagnosis a crash interrupted is diagnosed at the next start; temporaries and unreferenced
    files are removed; the files rows refer to are kept."""
    from edge_app.imaging.header import read_header
    from edge_app.store import Store

    store = Store(tmp_path)
    with nih_png.open("rb") as fh:
        digest, size = store.put_stream(fh)
    added = store.add_image(digest, size, "a.png", "api", read_header(store.file_path(digest), "a.png"))
    assert store.claim_job(lease_s=3600, max_attempts=3) is not None  # the worker took it, then the power went
    orphan = store.put_file(b"stored, but the crash came before its row")
    incoming = store.files_dir / ".incoming-half-written"
    incoming.write_bytes(b"half")
    store.close()

    app = create_app(service({"storage": {"data_dir": str(tmp_path)}, "model": {"threads": 1}}))
    store = services.get_from(app).store
    assert store.wait_for(added.image_id, timeout=60) == ("done", None)
    (image,) = store.get_study(added.study_uid).images
    (result,) = image.results
    assert result.status == "ok" and store.read_file(result.heatmaps[0].sha256)
    assert store.read_file(digest) == nih_png.read_bytes(), "the image itself is kept"
    assert not store.file_path(orphan).exists() and not incoming.exists()


def test_insecure_app_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refusing to listen"):
        Service(Settings.model_validate({"storage": {"data_dir": str(tmp_path)}, "server": {"host": "192.0.2.1"}}))
    with pytest.raises(ConfigError, match=r"server.port"):
        with_overrides(Settings(), "server", {"port": "eighty"})


def test_raw_body_with_a_form_content_type(client: FlaskClient, nih_png: Path) -> None:
    """Simple clients (urllib, curl --data-binary) label raw bytes as a form; the image must still arrive."""
    resp = client.post(
        "/api/v1/studies?filename=c.png", data=nih_png.read_bytes(), content_type="application/x-www-form-urlencoded"
    )
    assert resp.status_code == 201 and resp.get_json()["images"][0]["filename"] == "c.png"


def test_an_internal_error_fails_that_image_and_the_worker_goes_on(
    tmp_path: Path, broken_bundle: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """A model that fails at inference: each image is answered 500 with its reason and marked failed; the worker
    takes the next one (nothing is left queued)."""
    app = create_app(
        service({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"bundle": str(broken_bundle)}})
    )
    client = api_client(app)
    for name in ("a.dcm", "b.dcm"):
        data = dicom_file("RG1_UNCR.dcm").read_bytes() if name == "a.dcm" else dicom_file("RG1_J2KR.dcm").read_bytes()
        resp = client.post(f"/api/v1/studies?filename={name}", data=data)
        assert resp.status_code == 500
        body = resp.get_json()
        assert body["error"] == "Internal error" and body["detail"].startswith("internal error: InferenceError")
        assert body["duplicate"] is False
        (image,) = [i for i in body["study"]["images"] if i["id"] == body["image_id"]]
        assert image["status"] == "failed" and image["results"][0]["status"] == "failed"
    assert client.get("/api/v1/health").get_json()["queued"] == 0


def _named_dicom(tmp_path: Path, name: str, accession: str) -> bytes:
    import pydicom

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.PatientName, ds.AccessionNumber, ds.PatientID = name, accession, "KE-0042"
    ds.save_as(tmp_path / "named.dcm")
    return (tmp_path / "named.dcm").read_bytes()


def test_the_study_list_pages_past_its_stated_maximum(client: FlaskClient, tmp_path: Path) -> None:
    """`limit` is honoured up to 200 (docs/integrator.md), never a 500; `total` and `next` lead to every study;
    the worklist's search and filters hold."""
    from edge_app.web.api import MAX_STUDIES

    named = client.post("/api/v1/studies?filename=a.dcm", data=_named_dicom(tmp_path, "Nakato^Amina", "ACC-77"))
    assert named.status_code == 201
    for n in range(219):
        client.post(f"/api/v1/studies?filename=junk{n}.bin", data=b"\x00" * 300 + n.to_bytes(2, "big"))
    first = client.get("/api/v1/studies?limit=2000")
    assert first.status_code == 200, first.get_data(as_text=True)
    body = first.get_json()
    assert (len(body["studies"]), body["total"], body["limit"], MAX_STUDIES) == (200, 220, 200, 200)
    rest = client.get(body["next"]).get_json()
    assert len(rest["studies"]) == 20 and rest["next"] is None
    seen = [s["uid"] for s in body["studies"] + rest["studies"]]
    assert len(set(seen)) == 220 and seen[-1] == named.get_json()["uid"], "every study once, newest first"
    for q in ("nakato", "KE-0042", "acc-77"):
        found = client.get(f"/api/v1/studies?q={q}").get_json()
        assert [s["uid"] for s in found["studies"]] == [named.get_json()["uid"]] and found["total"] == 1, q
    assert client.get("/api/v1/studies?state=refused&limit=1").get_json()["total"] == 219
    assert client.get("/api/v1/studies?modality=CR").get_json()["total"] == 1
    for bad in ("limit=0", "offset=-1", "state=lost", "from=yesterday"):
        assert client.get(f"/api/v1/studies?{bad}").status_code == 400, bad


def test_a_report_sent_with_a_study_is_kept_and_not_diagnosed(client: FlaskClient) -> None:
    """An SR through the API is answered as the DICOM receiver answers it: success, kept with its study, no model
    run; sent again, the same."""
    data = dicom_file("test-SR.dcm").read_bytes()
    for duplicate in (False, True):
        resp = client.post("/api/v1/studies?filename=report.dcm", data=data)
        assert resp.status_code == 201, resp.get_json()
        body = resp.get_json()
        assert body["kept"] is True and body["duplicate"] is duplicate
        assert body["reason"] == "not an image (Comprehensive SR Storage): kept with the study, not diagnosed"
        (image,) = body["images"]
        assert image["id"] == body["image_id"] and image["results"] == []


def test_the_date_filter_takes_the_clinic_s_calendar_days(
    service: Callable[..., Service], make_settings: Callable[..., Settings], api_client: Callable[[Flask], FlaskClient]
) -> None:
    """`from` and `to` are days of the clinic's calendar (site.timezone, Nairobi: UTC+3), `to` included: a study
    received at 22:30 UTC on 1 March arrived at 01:30 on 2 March in the clinic, one at 20:30 UTC at 23:30 on the
    1st; the clinic's midnight (21:00 UTC) opens the 2nd."""
    app = create_app(service(make_settings(site={"timezone": "Africa/Nairobi"})))
    client = api_client(app)
    received = {"late": "2025-03-01T22:30:00.000+00:00", "evening": "2025-03-01T20:30:00.000+00:00"}
    received["midnight"] = "2025-03-01T21:00:00.000+00:00"
    uids = {
        client.post("/api/v1/studies?filename=x.bin", data=bytes([n]) * 300).get_json()["study"]["uid"]: name
        for n, name in enumerate(received)
    }
    with sqlite3.connect(services.get_from(app).settings.storage.data_dir / "edge-app.sqlite3") as db:
        db.executemany("UPDATE studies SET created_at = ? WHERE uid = ?", [(received[n], u) for u, n in uids.items()])

    def found(query: str) -> set[str]:
        body = client.get(f"/api/v1/studies?{query}").get_json()
        return {uids[s["uid"]] for s in body["studies"]}

    assert found("from=2025-03-02&to=2025-03-02") == {"late", "midnight"}
    assert found("to=2025-03-01") == {"evening"}
    assert found("from=2025-03-01&to=2025-03-01") == {"evening"}
    assert found("from=2025-03-02") == {"late", "midnight"}
    assert found("to=2025-02-28") == set() and found("from=2025-03-03") == set()
