"""A real PACS (Debian's Orthanc) and a launched `edge-app serve`: Orthanc pushes images to the box, the results
land in Orthanc's same study; a result given up is re-sent by `edge-app outbox retry`; a box killed (-9) while
sending sends everything after its restart."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom import dicom_bytes, dicom_file
from support.orthanc import Orthanc, toml_destinations
from support.processes import free_port

pytestmark = pytest.mark.system


def _until(check: Callable[[], object], timeout: float = 30.0, what: str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


PATIENT = "CompressedSamples^RG1"  # RG1_UNCR.dcm's


def _image(study_uid: str) -> bytes:
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return dicom_bytes(ds)


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


class Box:
    """A launched `edge-app serve` with its DICOM receiver, sending its results to Orthanc."""

    def __init__(self, work: Path, launch: Callable[..., subprocess.Popen[str]], orthanc_port: int, **env: str):
        self.data, self.port, self.dicom_port = work / "data", free_port(), free_port()
        self.env = {
            "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
            "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
            "EDGE_APP_CAPTURE_DICOM_PORT": str(self.dicom_port),
            "EDGE_APP_OUTPUTS_DESTINATIONS": toml_destinations({"ORTHANC": orthanc_port}),
            "EDGE_APP_OUTPUTS_RETRY_S": "0.5",
            "EDGE_APP_OUTPUTS_ANSWER_TIMEOUT_S": "2",
            **env,
        }
        self.launch = launch
        self.proc = launch(self.data, self.port, self.env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def orthanc_and_box(tmp_path: Path) -> Iterator[Callable[..., tuple[Orthanc, Box]]]:
    made: list[Orthanc | Box] = []

    def make(launch: Callable[..., subprocess.Popen[str]], **env: str) -> tuple[Orthanc, Box]:
        orthanc_port = free_port()
        box = Box(tmp_path, launch, orthanc_port, **env)
        made.append(box)
        modalities = {"edgeapp": ("EDGEAPP", box.dicom_port)}
        orthanc = Orthanc(tmp_path / "orthanc", modalities=modalities, dicom_port=orthanc_port)
        made.append(orthanc)
        return orthanc, box

    yield make
    for thing in reversed(made):
        thing.stop()


def test_images_pushed_by_orthanc_come_back_as_results_in_its_study(
    orthanc_and_box: Callable[..., tuple[Orthanc, Box]], launch: Callable[..., subprocess.Popen[str]]
) -> None:
    orthanc, _ = orthanc_and_box(launch)
    study = generate_uid()
    ids = [orthanc.upload(_image(study)) for _ in range(2)]
    orthanc.push("edgeapp", ids)
    _until(lambda: len(orthanc.instances("SR")) == 2, 60, "the SRs reach Orthanc")
    for sr in orthanc.instances("SR"):
        assert sr["StudyInstanceUID"] == study, "in the study of the images"
        assert (sr["PatientName"], sr["PatientID"], sr["StudyDate"]) == (PATIENT, "9RG1", "20040826"), "the source's"
        assert sr["AccessionNumber"] == "exam Number"


def test_a_result_reaching_orthanc_before_its_image_names_the_patient_and_the_study_date(
    orthanc_and_box: Callable[..., tuple[Orthanc, Box]], launch: Callable[..., subprocess.Popen[str]]
) -> None:
    """A modality sends to the box alone: the study Orthanc makes of the first object it receives (our SR) has
    the patient's name, sex, birth date, the study date and accession, not blanks and today's date."""
    orthanc, box = orthanc_and_box(launch)
    study = generate_uid()
    _push(box, _image(study))
    _until(lambda: len(orthanc.instances("SR")) == 1, 60, "the SR reaches Orthanc")
    (held,) = orthanc.get("/studies")
    tags = orthanc.get(f"/studies/{held}")
    assert tags["MainDicomTags"]["StudyInstanceUID"] == study
    assert (
        tags["MainDicomTags"]["StudyDate"] == "20040826" and tags["MainDicomTags"]["AccessionNumber"] == "exam Number"
    )
    patient = tags["PatientMainDicomTags"]
    assert (patient["PatientName"], patient["PatientSex"], patient["PatientBirthDate"]) == (PATIENT, "F", "19400305")


def test_a_result_given_up_is_sent_again_by_the_cli_and_the_api(
    orthanc_and_box: Callable[..., tuple[Orthanc, Box]],
    launch: Callable[..., subprocess.Popen[str]],
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """Orthanc away and max_attempts 1: the results are given up, health says so; `edge-app outbox retry` sends
    them once Orthanc is back; given up again while it is away, POST /api/v1/outbox/retry sends them."""
    orthanc, box = orthanc_and_box(launch, EDGE_APP_OUTPUTS_MAX_ATTEMPTS="1")
    orthanc.stop()
    dicom_port = orthanc.dicom_port
    for attempt in ("cli", "api"):
        study = generate_uid()
        _push(box, _image(study))
        _until(lambda: sum(o["failed"] for o in _health(box.port)["outbox"]) == 2, 30, "given up")
        health = _health(box.port)
        assert health["status"] == "degraded" and "connection refused" in health["problem"]
        orthanc = Orthanc(tmp_path / "orthanc", dicom_port=dicom_port)
        try:
            if attempt == "cli":
                result = cli("outbox", "retry", env={"EDGE_APP_STORAGE_DATA_DIR": str(box.data), **box.env})
                assert result.returncode == 0 and "2 result(s) queued again" in result.stdout, result.stderr
            else:
                _retry_through_the_api(box)
            held = orthanc
            _until(lambda s=study, o=held: any(sr["StudyInstanceUID"] == s for sr in o.instances("SR")), 30)
            _until(lambda: _health(box.port)["status"] == "ok", 10)
        finally:
            orthanc.stop()


def _push(box: Box, image: bytes) -> None:
    """C-STORE an image to the box as a modality would."""
    from pynetdicom import AE

    ds = pydicom.dcmread(io.BytesIO(image))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", box.dicom_port, ae_title="EDGEAPP")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def _retry_through_the_api(box: Box) -> None:
    from support.web import token_headers

    request = urllib.request.Request(
        f"http://127.0.0.1:{box.port}/api/v1/outbox/retry",
        data=b"{}",
        method="POST",
        headers={**token_headers(box.data, "admin"), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read()) == {"queued": 2}


def test_a_box_killed_while_sending_sends_everything_after_its_restart(
    orthanc_and_box: Callable[..., tuple[Orthanc, Box]], launch: Callable[..., subprocess.Popen[str]]
) -> None:
    """Orthanc frozen mid-association, the box killed (-9), Orthanc running again, the box restarted: every
    result reaches Orthanc at once (the hold of the killed sender does not delay it)."""
    orthanc, box = orthanc_and_box(launch, EDGE_APP_OUTPUTS_ANSWER_TIMEOUT_S="600")
    study = generate_uid()
    orthanc.freeze()
    for _ in range(3):
        _push(box, _image(study))
    _until(lambda: sum(o["waiting"] for o in _health(box.port)["outbox"]) == 6, 30)
    time.sleep(1.0)  # the sender is in its association with the frozen Orthanc
    box.proc.send_signal(signal.SIGKILL)
    box.proc.wait()
    orthanc.thaw()
    box.proc = launch(box.data, box.port, box.env)
    _until(lambda: len(orthanc.instances("SR")) == 3, 20, "sent after the restart")
    _until(lambda: _health(box.port)["outbox"] == [], 10)
