"""Drift through a real service, its worker on the reference model, given real NIH chest X-rays as DICOM through the
API from three stations: a steady one not flagged, one whose images arrive inverted (MONOCHROME1 over MONOCHROME2
pixels) partway through flagged within half a window, its refused rate's rise with it, one re-windowed flagged by its
intensity histogram; each flag on the health check, the devices page and the "Model performance" page, acknowledged
there and audited. (The figures against hand computations: tests/test_drift_figures.py.)"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from itertools import count
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.service import Service
from edge_app.store.monitoring import Monitoring

pytestmark = pytest.mark.integration
_uids = count(1)
WINDOW = 30  # a station's latest 30 images: the KS limit at alpha 0.001 against 200 images is 0.364


def _cr(png: Path, station: str, photometric: str = "MONOCHROME2", window: tuple[float, float] = (127.5, 256)) -> bytes:
    """A CR chest PA holding an NIH image's pixels, from an ACME X1 in room `station` (the station as the fairness
    groups see it), its window the whole 8-bit range (shown as the PNG the fingerprint was taken from: without one
    the box windows at the 0.5-99.5 percentiles); as MONOCHROME1 its pixels show inverted; with another window,
    re-windowed."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(png).convert("L"))
    n = next(_uids)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientAge = f"D{n}", f"Drift^{n}", "F", "050Y"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = "ACME", "X1", station
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # a Part 10 file: preamble and file meta written
    return out.getvalue()


def _send(client: FlaskClient, images: list[Path], station: str, **kind: object) -> list[str]:
    """Each image through the API (the worker's result awaited): "done", or "outside" where the guard refused it."""
    out = []
    for png in images:
        answer = client.post(
            "/api/v1/studies?filename=x.dcm", data=_cr(png, station, **kind), content_type="application/dicom"
        )  # type: ignore[arg-type]
        assert answer.status_code == 201 or answer.get_json()["error"] == "Not what the model reads", answer.data
        out.append("done" if answer.status_code == 201 else "outside")
    return out


@pytest.fixture
def split(nih: Path) -> dict[str, list[Path]]:
    """The NIH sample's images by split, shuffled alike each run."""
    rows = list(csv.DictReader((nih / "split.csv").open()))
    rng = random.Random(24)
    rng.shuffle(rows)
    return {s: [nih / "images" / r["image"] for r in rows if r["split"] == s] for s in ("train", "test")}


def test_inverted_and_rewindowed_stations_are_flagged_and_a_steady_one_is_not(
    service: Callable[..., Service],
    make_settings: Callable[..., Settings],
    api_client: Callable[..., FlaskClient],
    split: dict[str, list[Path]],
) -> None:
    from edge_app.web import create_app
    from support.pdf import pdf_lines
    from support.web import AuthActions

    svc = service(make_settings(monitoring={"drift_window": WINDOW, "every_s": 3600}))
    app = create_app(svc)
    app.config.update(TESTING=True)
    client = api_client(app)
    assert svc.monitor is not None
    test, train = split["test"], split["train"]

    # Steady: two windows of the fingerprint's own kind of image. Room 2: a window and a half of them, then half a
    # window inverted. Room 3: half a window as calibrated, then a window re-windowed (centre 130, width 140).
    assert _send(client, test[:60], "ROOM-1").count("done") >= 58
    assert _send(client, test[60:105], "ROOM-2").count("done") >= 43
    assert _send(client, test[105:120], "ROOM-3").count("done") >= 14
    (bundle,) = svc.monitor.run_once()
    before = {d.station: d for d in bundle.drift}
    assert [before[f"ACME / X1 / ROOM-{n}"].state for n in (1, 2, 3)] == ["ok", "ok", "too_few"]
    assert not Monitoring(svc.store).flags()

    assert _send(client, train[:15], "ROOM-2", photometric="MONOCHROME1") == ["outside"] * 15
    assert _send(client, train[15:45], "ROOM-3", window=(130, 140)).count("done") >= 25
    (bundle,) = svc.monitor.run_once()
    drift = {d.station: d for d in bundle.drift}
    steady, inverted, rewindowed = (drift[f"ACME / X1 / ROOM-{n}"] for n in (1, 2, 3))
    assert steady.state == "ok" and steady.images == WINDOW and not steady.reasons
    assert steady.guard_ks is not None and steady.guard_limit is not None and steady.guard_ks < steady.guard_limit
    assert steady.intensity is not None and steady.intensity < 0.10, "30 of the calibration's kind: 0.02-0.07"
    assert steady.refused_before.n == 30, "its rates judged too: the window against its 30 images before"

    assert inverted.state == "drifted" and inverted.guard_limit == pytest.approx(0.3639, abs=1e-4)
    assert inverted.guard_ks is not None and inverted.guard_ks > 0.45, "half the window far outside"
    assert inverted.refused.k >= 15 and inverted.refused.n == WINDOW and (inverted.refused_before.value or 0) < 0.05
    assert any(r.startswith("input guard scores moved away") for r in inverted.reasons), inverted.reasons
    assert any(r.startswith(f"refused {inverted.refused.value:.0%} of the last 30 images") for r in inverted.reasons)

    assert rewindowed.state == "drifted" and rewindowed.intensity is not None and rewindowed.intensity > 0.25
    assert any(r.startswith("intensity histogram moved away") for r in rewindowed.reasons), rewindowed.reasons

    flags = {f.key.split("station=")[1]: f for f in Monitoring(svc.store).flags()}
    assert sorted(flags) == ["ACME / X1 / ROOM-2", "ACME / X1 / ROOM-3"]
    assert {f.kind for f in flags.values()} == {"drift"}
    assert flags["ACME / X1 / ROOM-2"].reason.startswith("cxr-reference 1.1.1, station ACME / X1 / ROOM-2: ")
    audit = [(a["action"], a["subject"]) for a in svc.store.audit_trail()]
    assert ("monitor.flag", flags["ACME / X1 / ROOM-2"].key) in audit

    health = client.get("/api/v1/health").get_json()
    assert health["status"] == "degraded" and "station ACME / X1 / ROOM-2: input guard scores" in health["problem"]
    browser = app.test_client()
    auth = AuthActions(app, browser)
    assert auth.login("admin").status_code == 302
    page = browser.get("/admin/performance").get_data(as_text=True)
    assert "Drift by station" in page and "ACME / X1 / ROOM-3" in page and "Drifted" in page
    assert f"{inverted.guard_ks:.2f}" in page and f"{rewindowed.intensity:.2f}" in page
    assert "station ACME / X1 / ROOM-2" in browser.get("/devices").get_data(as_text=True)
    rows = {
        r["group"]: r
        for r in csv.DictReader(browser.get("/admin/performance.csv").get_data(as_text=True).splitlines())
        if r["dimension"] == "drift"
    }
    assert [rows[f"ACME / X1 / ROOM-{n}"]["state"] for n in (1, 2, 3)] == ["ok", "drifted", "drifted"]
    assert float(rows["ACME / X1 / ROOM-2"]["guard_ks"]) == pytest.approx(inverted.guard_ks, abs=1e-4)
    assert float(rows["ACME / X1 / ROOM-3"]["intensity_tv"]) == pytest.approx(rewindowed.intensity, abs=1e-4)
    assert rows["ACME / X1 / ROOM-2"]["refused"] == str(inverted.refused.k) and rows["ACME / X1 / ROOM-2"]["reason"]
    text = pdf_lines(browser.get("/admin/performance.pdf").data)
    first = text.index("Drift by station") + 3  # its heading, a note, its columns' heads, then a line per station
    shown = f"ACME / X1 / ROOM-2 {WINDOW} {inverted.guard_ks:.2f} ({inverted.guard_limit:.2f})"
    assert text[first + 1].startswith(shown) and text[first + 1].endswith("Drifted"), text[first : first + 3]
    assert text[first].startswith("ACME / X1 / ROOM-1") and text[first].endswith("Steady")
    for flag in flags.values():
        token = auth.csrf("/admin/performance")
        answer = browser.post(f"/admin/performance/flags/{flag.id}/acknowledge", data={"csrf_token": token})
        assert answer.status_code == 302
    assert client.get("/api/v1/health").get_json()["status"] == "ok", "acknowledged: no longer degraded"
    assert [a["action"] for a in svc.store.audit_trail()[:2]] == ["monitor.acknowledge"] * 2
