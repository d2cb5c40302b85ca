"""The JSON API through Flask's test client, on real images."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from conftest import dicom_file
from edge_app.errors import ConfigError
from edge_app.web import create_app


def test_health(client: FlaskClient) -> None:
    body = client.get("/api/v1/health").get_json()
    assert body["status"] == "ok" and body["runner"] == "onnxruntime"
    assert body["model"] == "cxr-reference" and body["version"] == "1.1.0"


def test_post_png_gives_a_study_with_findings(client: FlaskClient, nih_png: Path) -> None:
    with nih_png.open("rb") as fh:
        resp = client.post("/api/v1/studies", data={"file": (fh, "chest.png")})
    assert resp.status_code == 201
    study = resp.get_json()
    assert resp.headers["Location"] == f"/api/v1/studies/{study['uid']}"
    (image,) = study["images"]
    (result,) = image["results"]
    assert result["status"] == "ok" and len(result["findings"]) == 5
    assert result["model"]["runner"] == "onnxruntime"
    assert client.get(f"/api/v1/studies/{study['uid']}").get_json() == study

    heat = client.get(f"/api/v1/results/{result['id']}/heatmap.png")
    assert heat.status_code == 200 and heat.mimetype == "image/png"
    assert Image.open(io.BytesIO(heat.data)).size == (4, 4)
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
    assert image["results"][0]["status"] == "rejected"
    store = app.extensions["edge_app"].store
    assert store.read_file(image["sha256"]) == b"GIF89a nonsense", "what was sent is kept"


def test_empty_upload(client: FlaskClient) -> None:
    resp = client.post("/api/v1/studies", data=b"")
    assert resp.status_code == 400 and "no image" in resp.get_json()["detail"]


def test_unknown_study_and_result(client: FlaskClient) -> None:
    assert client.get("/api/v1/studies/0123").status_code == 404
    assert client.get("/api/v1/results/999/heatmap.png").get_json()["error"] == "Not Found"


def test_upload_over_the_limit(tmp_path: Path) -> None:
    app = create_app({"storage": {"data_dir": str(tmp_path)}, "server": {"max_upload_mb": 1}})
    resp = app.test_client().post("/api/v1/studies", data=b"\0" * (2 * 1024 * 1024))
    assert resp.status_code == 413 and resp.get_json()["error"] == "Request Entity Too Large"


def test_insecure_app_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refusing to listen"):
        create_app({"storage": {"data_dir": str(tmp_path)}, "server": {"host": "192.0.2.1"}})
    with pytest.raises(ConfigError, match=r"server.port"):
        create_app({"server": {"port": "eighty"}})


def test_raw_body_with_a_form_content_type(client: FlaskClient, nih_png: Path) -> None:
    """Simple clients (urllib, curl --data-binary) label raw bytes as a form; the image must still arrive."""
    resp = client.post(
        "/api/v1/studies?filename=c.png", data=nih_png.read_bytes(), content_type="application/x-www-form-urlencoded"
    )
    assert resp.status_code == 201 and resp.get_json()["images"][0]["filename"] == "c.png"
