"""What a PACS sends the box besides plain images, through a real `edge-app serve` and real peers (pynetdicom,
dcmtk): Deflated images decode; SRs, key object selections and presentation states are accepted, kept with their
study and never diagnosed; the box's own outputs coming back (its UID root) are kept as its own, never read as new
images."""

from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BlendingSoftcopyPresentationStateStorage,
    ColorSoftcopyPresentationStateStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    PseudoColorSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from edge_app.imaging.uids import new_output_uid
from support import processes
from support.dicom import dicom_file
from support.orthanc import Orthanc
from support.tools import EDGE_APP, dcmtk
from support.web import token_headers

pytestmark = pytest.mark.system

KEPT = "kept with the study, not diagnosed"


@dataclass(frozen=True)
class Box:
    """A running `edge-app serve` with its DICOM receiver."""

    api: str
    dicom_port: int
    headers: dict[str, str]

    def study(self, uid: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.api}/studies/{uid}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.load(answer))

    def settled(self, uid: str, count: int) -> list[dict[str, Any]]:
        """The study's `count` objects once none is queued (the worker has had its turn at each)."""
        deadline = time.monotonic() + 60
        while True:
            images = self.study(uid)["images"] if self._held(uid) else []
            if len(images) == count and all(i["status"] != "queued" for i in images):
                return list(images)
            assert time.monotonic() < deadline, images
            time.sleep(0.2)

    def _held(self, uid: str) -> bool:
        try:
            self.study(uid)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    data = tmp_path_factory.mktemp("inbound") / "data"
    port, dicom_port = processes.free_port(), processes.free_port()
    env = {
        "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
        "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
        "EDGE_APP_CAPTURE_DICOM_PORT": str(dicom_port),
        "EDGE_APP_MODEL_THREADS": "1",
    }
    proc = processes.launch(data, port, env)
    yield Box(f"http://127.0.0.1:{port}/api/v1", dicom_port, token_headers(data))
    proc.terminate()
    proc.wait(timeout=20)


def _store(port: int, datasets: list[Dataset], syntax: str | None = None) -> list[tuple[str, int]]:
    """Each data set by C-STORE on one association (each proposed in `syntax`, else its own): the transfer
    syntax accepted and the status answered."""
    ae = AE(ae_title="PACS")
    for sop_class in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(sop_class, syntax or ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEAPP")
    assert assoc.is_established
    try:
        accepted = {cx.abstract_syntax: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert set(accepted) == {ds.SOPClassUID for ds in datasets}, "every class accepted at association"
        return [(accepted[ds.SOPClassUID], int(assoc.send_c_store(ds).Status)) for ds in datasets]
    finally:
        assoc.release()


def _renew(ds: Dataset) -> None:
    """A new study, series and instance: the image again, as another patient visit would bring it."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))


def _probabilities(findings: list[dict[str, Any]]) -> dict[str, float]:
    return {f["label"]: f["probability"] for f in findings}


def test_deflated_images_decode_as_their_uncompressed_selves(box: Box, tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian is accepted and decoded (not refused as truncated): a file dcmtk deflated
    (`dcmconv +td`) and sent by `storescu -xd`, and one pynetdicom sends over a Deflated-only context, each read
    with the findings `edge-app diagnose` gives the uncompressed original; `diagnose` reads the Deflated file the
    same."""
    original = dicom_file("RG1_UNCR.dcm")
    diagnosed = subprocess.run([*EDGE_APP, "diagnose", str(original)], capture_output=True, text=True, timeout=300)
    expected = _probabilities(json.loads(diagnosed.stdout)["findings"])
    deflated = tmp_path / "deflated.dcm"
    ds = pydicom.dcmread(original)
    _renew(ds)
    ds.save_as(tmp_path / "plain.dcm")
    subprocess.run([dcmtk("dcmconv"), "+td", str(tmp_path / "plain.dcm"), str(deflated)], check=True)
    assert (
        pydicom.dcmread(deflated, stop_before_pixels=True).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    )
    assert deflated.stat().st_size < original.stat().st_size

    again = subprocess.run([*EDGE_APP, "diagnose", str(deflated)], capture_output=True, text=True, timeout=300)
    assert _probabilities(json.loads(again.stdout)["findings"]) == expected, again.stderr[-2000:]

    storescu = [dcmtk("storescu"), "-xd", "-v", "-aec", "EDGEAPP", "127.0.0.1", str(box.dicom_port)]
    sent = subprocess.run([*storescu, str(deflated)], capture_output=True, text=True, timeout=60)
    said = sent.stderr + sent.stdout
    assert "-> Deflated Explicit VR Little Endian" in said, "sent in the syntax accepted: Deflated"
    assert "Received Store Response (Success)" in said, said
    second = pydicom.dcmread(original)
    _renew(second)
    assert _store(box.dicom_port, [second], DeflatedExplicitVRLittleEndian) == [(DeflatedExplicitVRLittleEndian, 0)]
    for study in (ds.StudyInstanceUID, second.StudyInstanceUID):
        (image,) = box.settled(study, 1)
        assert image["status"] == "done", image.get("reason")
        (result,) = image["results"]
        assert _probabilities(result["findings"]) == expected


# The presentation states besides the grayscale one highdicom makes: that one, of each of these classes.
OTHER_STATES = (
    ColorSoftcopyPresentationStateStorage,
    PseudoColorSoftcopyPresentationStateStorage,
    BlendingSoftcopyPresentationStateStorage,
)


def _objects_of_a_study(image: Dataset) -> list[Dataset]:
    """What a PACS holds with a radiograph: a radiologist's SR (a real Comprehensive SR moved into the study), a
    key object selection and a grayscale presentation state (highdicom) referencing it, and a presentation state
    of each other kind (the grayscale one as that class)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = pydicom.dcmread(dicom_file("test-SR.dcm"))
    sr.StudyInstanceUID, sr.PatientID = image.StudyInstanceUID, image.PatientID
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[image],
        content=hd.ko.KeyObjectSelection(codes.DCM.OfInterest, referenced_objects=[image]),
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=hd.UID(),
        series_number=51,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="PACS",
        manufacturer_model_name="viewer",
        software_versions="1",
        device_serial_number="1",
        content_label="WINDOW",
    )
    others = []
    for sop_class in OTHER_STATES:
        state = copy.deepcopy(pr)
        state.SOPClassUID = state.file_meta.MediaStorageSOPClassUID = sop_class
        state.SOPInstanceUID = state.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        others.append(state)
    return [sr, kos, pr, *others]


def test_reports_key_objects_and_presentation_states_are_kept_with_their_study_never_diagnosed(box: Box) -> None:
    """A study as a PACS re-sends it: the image, an SR, a KOS and a presentation state of each kind (grayscale,
    color, pseudo-color, blending), each accepted at association and answered success (0x0000); the study lists
    them all, the non-images as such, with no result (the worker never had them); sent again, each is
    acknowledged and held once."""
    image = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    _renew(image)
    others = _objects_of_a_study(image)
    for _ in range(2):
        answers = _store(box.dicom_port, [image, *others])
        assert [status for _, status in answers] == [0] * 7
    listed = {i["sop_instance_uid"]: i for i in box.settled(image.StudyInstanceUID, 7)}
    assert listed[image.SOPInstanceUID]["status"] == "done"
    for ds in others:
        kept = listed[ds.SOPInstanceUID]
        assert kept["status"] == "rejected" and kept["results"] == []
        assert kept["reason"] == f"not an image ({ds.SOPClassUID.name}): {KEPT}"


def _ours(image: Dataset) -> list[Dataset]:
    """The box's own outputs for `image` as a PACS sends them back: a heatmap Secondary Capture (an image!) and
    an SR, their UIDs under the box's root."""
    sc = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.StudyInstanceUID, sc.Modality = image.StudyInstanceUID, "OT"
    sc.SeriesInstanceUID, sc.SOPInstanceUID = new_output_uid(), new_output_uid()
    sr = pydicom.dcmread(dicom_file("test-SR.dcm"))
    sr.StudyInstanceUID, sr.PatientID = image.StudyInstanceUID, image.PatientID
    sr.SeriesInstanceUID, sr.SOPInstanceUID = new_output_uid(), new_output_uid()
    return [sc, sr]


def test_the_box_own_outputs_coming_back_are_kept_as_its_own_never_diagnosed(box: Box, tmp_path: Path) -> None:
    """The box's heatmap SC (by pynetdicom) and SR (by dcmtk's storescu), re-sent by a PACS with the study: success,
    listed as made by the box, never diagnosed, though the SC holds a chest radiograph's pixels; an image whose
    series alone is under the box's root is known as ours too."""
    image = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    _renew(image)
    sc, sr = _ours(image)
    series_only = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    series_only.StudyInstanceUID, series_only.SOPInstanceUID = image.StudyInstanceUID, pydicom.uid.generate_uid()
    series_only.SeriesInstanceUID = new_output_uid()
    assert [status for _, status in _store(box.dicom_port, [image, sc, series_only])] == [0, 0, 0]
    sr.save_as(tmp_path / "sr.dcm")
    sent = subprocess.run(
        [dcmtk("storescu"), "-v", "-aec", "EDGEAPP", "127.0.0.1", str(box.dicom_port), str(tmp_path / "sr.dcm")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "(Success)" in sent.stderr + sent.stdout, sent.stderr
    listed = {i["sop_instance_uid"]: i for i in box.settled(image.StudyInstanceUID, 4)}
    assert listed[image.SOPInstanceUID]["status"] == "done"
    for ds in (sc, series_only, sr):
        kept = listed[ds.SOPInstanceUID]
        assert kept["status"] == "rejected" and kept["results"] == []
        assert kept["reason"] == f"made by this appliance ({ds.SOPClassUID.name}): {KEPT}"


@pytest.fixture
def orthanc(box: Box, tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc (Debian's) on 127.0.0.1 with its own storage, the box declared as the modality `edgeapp`."""
    pacs = Orthanc(tmp_path / "orthanc", modalities={"edgeapp": ("EDGEAPP", box.dicom_port)})
    yield pacs
    pacs.stop()


def test_orthanc_re_sending_a_study_that_holds_our_sr_succeeds(box: Box, orthanc: Orthanc) -> None:
    """Orthanc holds a study: the radiograph, the box's SR and heatmap SC, a KOS. It pushes the whole study to the
    box by C-STORE: the push succeeds (Orthanc answered HTTP 500 while the SR class was refused); the image is
    diagnosed, the rest kept with the study, never diagnosed."""
    from support.dicom import dicom_bytes

    image = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    _renew(image)
    sc, sr = _ours(image)
    kos = _objects_of_a_study(image)[1]
    pushed = orthanc.push("edgeapp", [orthanc.upload(dicom_bytes(ds)) for ds in (image, sc, sr, kos)])
    assert pushed["FailedInstancesCount"] == 0 and pushed["InstancesCount"] == 4, pushed
    listed = {i["sop_instance_uid"]: i for i in box.settled(image.StudyInstanceUID, 4)}
    assert listed[image.SOPInstanceUID]["status"] == "done"
    for ds in (sc, sr, kos):
        assert listed[ds.SOPInstanceUID]["status"] == "rejected" and listed[ds.SOPInstanceUID]["results"] == []
        assert listed[ds.SOPInstanceUID]["reason"].endswith(KEPT)
