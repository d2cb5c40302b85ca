"""Results back to DICOM destinations: a real storage SCP on localhost (pynetdicom's, and dcmtk's storescp where
installed) receives the Structured Report and the Secondary Capture; dsrdump reads the SR; a destination that is
away gets them once it is back."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from edge_app.config import Settings
from edge_app.service import Service
from edge_app.web import create_app
from support.dicom import dicom_file
from support.tools import dcmtk

pytestmark = pytest.mark.integration


def _until(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Pacs:
    """A storage SCP that keeps what it receives."""

    def __init__(self, port: int) -> None:
        self.received: list[Any] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(ComprehensiveSRStorage)
        ae.add_supported_context(SecondaryCaptureImageStorage)
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _settings(tmp_path: Path, port: int, retry_s: float = 30.0) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1},
            "outputs": {
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
                "retry_s": retry_s,
            },
        }
    )


def _post(client: FlaskClient) -> dict:  # type: ignore[type-arg]
    resp = client.post("/api/v1/studies?filename=rg1.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes())
    assert resp.status_code == 201
    return resp.get_json()  # type: ignore[no-any-return]


@pytest.fixture
def pacs(free_port: int) -> Iterator[Pacs]:
    p = Pacs(free_port)
    yield p
    p.stop()


def test_the_report_and_the_heatmap_capture_reach_the_pacs(
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    app = create_app(service(_settings(tmp_path, free_port)))
    client = api_client(app)
    study = _post(client)
    _until(lambda: len(pacs.received) == 2)
    by_class = {str(ds.SOPClassUID): ds for ds in pacs.received}
    sr, sc = by_class[ComprehensiveSRStorage], by_class[SecondaryCaptureImageStorage]
    source = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID, "they join the image's study"
    texts = [item.TextValue for item in sr.ContentSequence]
    assert texts[0] == "cxr-reference 1.1.1 (fp32, onnxruntime)"
    assert "Not for clinical use" in texts[2]
    (image,) = study["images"]
    for finding, text in zip(image["results"][0]["findings"], texts[3:], strict=True):
        assert text.startswith(f"{finding['label']}: probability {finding['probability']:.4f}, threshold")
        said = "not validated" if not finding["validated"] else "positive" if finding["positive"] else "negative"
        assert text.endswith(f", {said}"), "an unvalidated label is neither positive nor negative in the PACS"
    assert texts[-1].startswith("Infiltration:") and texts[-1].endswith(", not validated")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3
    assert max(sc.pixel_array.shape[:2]) == 1024, "the preview, not the 1955x1841 original"
    _until(lambda: [o["state"] for o in _image(client, study)["outputs"]] == ["sent", "sent"])


def _image(client: FlaskClient, study: dict) -> dict:  # type: ignore[type-arg]
    body = client.get(f"/api/v1/studies/{study['uid']}").get_json()
    return body["images"][0]  # type: ignore[no-any-return]


def test_a_destination_that_is_away_gets_them_when_it_is_back(
    tmp_path: Path, free_port: int, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    app = create_app(service(_settings(tmp_path, free_port, retry_s=0.2)))
    client = api_client(app)
    study = _post(client)
    _until(lambda: any(o["attempts"] >= 1 for o in _image(client, study)["outputs"]))
    outputs = _image(client, study)["outputs"]
    assert {o["state"] for o in outputs} == {"queued"} and outputs[0]["last_error"]
    pacs = Pacs(free_port)
    try:
        _until(lambda: len(pacs.received) == 2)
        _until(lambda: {o["state"] for o in _image(client, study)["outputs"]} == {"sent"})
    finally:
        pacs.stop()


def test_dcmtk_storescp_receives_and_dsrdump_reads_the_report(
    tmp_path: Path, free_port: int, api_client: Callable[[Flask], FlaskClient]
) -> None:
    storescp, dsrdump = dcmtk("storescp"), dcmtk("dsrdump")
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen([storescp, "-aet", "PACS", "-od", str(received), "+xa", str(free_port)])
    try:
        time.sleep(0.5)
        with Service(_settings(tmp_path, free_port)) as svc:
            app = create_app(svc)
            _post(api_client(app))
            _until(lambda: len(list(received.iterdir())) == 2)
        (sr,) = [p for p in received.iterdir() if p.name.startswith("SR")]
        dump = subprocess.run([dsrdump, str(sr)], capture_output=True, text=True)
        assert dump.returncode == 0, dump.stderr
        assert "Comprehensive SR" in dump.stdout and "cxr-reference 1.1.1" in dump.stdout
        assert "Not for clinical use" in dump.stdout and "Cardiomegaly: probability" in dump.stdout
        (sc,) = [p for p in received.iterdir() if p.name.startswith("SC")]
        assert pydicom.dcmread(sc).Modality == "OT"
    finally:
        scp.terminate()
        scp.wait()
