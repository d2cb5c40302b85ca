"""Results back to DICOM destinations: a real storage SCP on localhost (pynetdicom's, and dcmtk's storescp where
installed) receives the Structured Report and the Secondary Capture; dsrdump reads the SR; a destination that is
away gets them once it is back."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.imaging.uids import is_ours
from edge_app.service import Service
from edge_app.web import create_app
from support.bundles import bundle_for, bundle_named
from support.dicom import dicom_bytes, dicom_file
from support.tools import dciodvfy_errors, dcmtk

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
        ae.add_supported_context(Comprehensive3DSRStorage)
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


def _post(client: FlaskClient, data: bytes | None = None, filename: str = "rg1.dcm") -> dict:  # type: ignore[type-arg]
    body = data if data is not None else dicom_file("RG1_UNCR.dcm").read_bytes()
    resp = client.post(f"/api/v1/studies?filename={filename}", data=body)
    assert resp.status_code == 201
    return resp.get_json()  # type: ignore[no-any-return]


@pytest.fixture
def pacs(free_port: int) -> Iterator[Pacs]:
    p = Pacs(free_port)
    yield p
    p.stop()


# The Patient and General Study attributes a source may carry: each one it has, the SR and the SC carry unchanged.
COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def _latin1() -> bytes:
    """RG1 for a patient whose name and ID need ISO 8859-1 (ISO_IR 100)."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = "Müller^Zoë", "ÅÖ-4711"
    return dicom_bytes(ds)


def _ordered() -> bytes:
    """RG1 made for an order: accession number, request attributes, issuer, study ID, a time zone of its own."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.AccessionNumber, ds.StudyID, ds.IssuerOfPatientID = "ACC-778", "S-12", "CLINIC"
    ds.ReferringPhysicianName, ds.TimezoneOffsetFromUTC = "Hale^Ada", "+0530"
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID, request.AccessionNumber = "RP-5", "SPS-5", "ACC-778"
    ds.RequestAttributesSequence = [request]
    return dicom_bytes(ds)


def _received(pacs: Pacs, tmp_path: Path, count: int = 2) -> tuple[list[Dataset], list[Dataset]]:
    """What the PACS received (the SRs, the SCs), each written to a file that dciodvfy finds no error in."""
    _until(lambda: len(pacs.received) == count)
    for n, ds in enumerate(pacs.received):
        path = tmp_path / f"received-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], f"{ds.SOPClassUID.name} is a valid object"
    by_class: dict[str, list[Dataset]] = {Comprehensive3DSRStorage: [], SecondaryCaptureImageStorage: []}
    for ds in pacs.received:
        by_class[str(ds.SOPClassUID)].append(ds)
    return by_class[Comprehensive3DSRStorage], by_class[SecondaryCaptureImageStorage]


def _findings(sr: Dataset) -> dict[str, tuple[tuple[str, str], float, float, str]]:
    """The SR's findings read back with highdicom: per tracking identifier (the label), the finding's code
    (value, scheme), its probability, its threshold and the decision's meaning."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    found = {}
    for group in report.get_image_measurement_groups():
        concept = group.finding_type
        (probability,) = group.get_measurements(name=codes.DCM.Probability)
        (threshold,) = group.get_measurements(name=codes.DCM.ThresholdValue)
        (decision,) = group.get_qualitative_evaluations(name=concept)
        key = (concept.value, concept.scheme_designator)
        found[group.tracking_identifier] = (key, probability.value, threshold.value, decision.value.meaning)
    return found


@pytest.mark.parametrize("source", ["cr", "latin1", "ordered", "png"])
def test_the_report_and_the_heatmap_capture_are_valid_and_carry_the_source_s_patient_and_study(
    source: str,
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    request: pytest.FixtureRequest,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """A CR, a Latin-1 patient, an image made for an order, a PNG through the API: dciodvfy finds 0 errors in
    the SR and the SC, both carry the source's Patient and General Study attributes unchanged, the SR its
    findings coded as the bundle says and the order, the SC a reference to its source."""
    made = {"cr": lambda: dicom_file("RG1_UNCR.dcm").read_bytes(), "latin1": _latin1, "ordered": _ordered}
    data = made[source]() if source != "png" else request.getfixturevalue("nih_png").read_bytes()
    app = create_app(service(_settings(tmp_path, free_port)))
    client = api_client(app)
    study = _post(client, data, "a.png" if source == "png" else "a.dcm")
    ((sr,), (sc,)) = _received(pacs, tmp_path)
    (image,) = study["images"]
    original = pydicom.dcmread(io.BytesIO(data)) if source != "png" else Dataset()
    for keyword in COPIED:
        if keyword in original:
            assert sr[keyword].value == sc[keyword].value == original[keyword].value, keyword
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == study["uid"], "they join the image's study"
    if source == "png":
        assert sr.PatientName == sr.StudyDate == sr.AccessionNumber == sc.PatientName == "", "Type 2: empty"
        assert "SpecificCharacterSet" not in sr
    if source == "latin1":
        assert sr.SpecificCharacterSet == sc.SpecificCharacterSet == "ISO_IR 100"
        assert str(sr.PatientName) == "Müller^Zoë" and sr.PatientID == "ÅÖ-4711"
    if source == "ordered":
        (request,) = sr.ReferencedRequestSequence
        assert (request.AccessionNumber, request.RequestedProcedureID) == ("ACC-778", "RP-5")
        assert request.StudyInstanceUID == study["uid"]
        assert sc.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS-5"
        assert sr.TimezoneOffsetFromUTC == sc.TimezoneOffsetFromUTC == "+0530", "the source's zone"
    elif source == "png":
        assert "ReferencedRequestSequence" not in sr, "no order, none made up"
    else:  # RG1 says only its accession number
        (request,) = sr.ReferencedRequestSequence
        assert request.AccessionNumber == original.AccessionNumber == "exam Number"

    result = image["results"][0]
    made_at = dt.datetime.fromisoformat(result["created_at"])
    content = dt.datetime.strptime(f"{sr.ContentDate}{sr.ContentTime}{sr.TimezoneOffsetFromUTC}", "%Y%m%d%H%M%S.%f%z")
    assert content == made_at, "Content Date/Time: the result's time, in the zone the object says"
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    found = _findings(sr)
    assert list(found) == list(manifest.labels)
    for finding in result["findings"]:
        code = manifest.codes[finding["label"]]
        said = "Indeterminate" if not finding["validated"] else "Present" if finding["positive"] else "Absent"
        assert found[finding["label"]] == (
            (code.value, "SCT"),
            pytest.approx(finding["probability"]),
            pytest.approx(finding["threshold"]),
            said,
        )
    assert found["Infiltration"][3] == "Indeterminate", "an unvalidated label is neither positive nor negative"
    tree = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    statement = tree[0].ContentSequence[-1].ContentSequence[0]
    assert statement.TextValue.startswith("Not for clinical use")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in evidence}
    assert referenced == {image["sop_instance_uid"], sc.SOPInstanceUID}, "the image read and the heatmap"

    (used,) = sc.SourceImageSequence
    assert used.ReferencedSOPInstanceUID == image["sop_instance_uid"], "the SC references its source"
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3
    assert max(sc.pixel_array.shape[:2]) == 512, "the documented size, not the original's"
    assert (sr.SeriesNumber, sc.SeriesNumber) == (9001, 9002)
    assert sr.SeriesDescription.startswith("AI findings cxr-reference 1.1.1")
    assert sc.SeriesDescription.startswith("AI heatmap cxr-reference 1.1.1")
    for uid in (sr.SOPInstanceUID, sr.SeriesInstanceUID, sc.SOPInstanceUID, sc.SeriesInstanceUID):
        assert is_ours(uid)
    _until(lambda: [o["state"] for o in _image(client, study)["outputs"]] == ["sent", "sent"])


@pytest.mark.parametrize(
    ("name", "sop_class", "modality"),
    [
        ("color-pl.dcm", "1.2.840.10008.5.1.4.1.1.6", "US"),  # a real one, of 1994
        ("OBXXXX1A_2frame.dcm", "1.2.840.10008.5.1.4.1.1.3", "US"),  # Ultrasound Multi-frame Image (Retired)
        ("RG1_UNCR.dcm", "1.2.840.10008.5.1.4.1.1.12.3", "XA"),  # X-Ray Angiographic Bi-Plane Image (Retired)
    ],
)
def test_an_image_of_a_retired_class_gets_its_report_and_capture(
    name: str,
    sop_class: str,
    modality: str,
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """An image of a retired class the receiver accepts, read by a model made for its modality: its SR and SC are
    valid (dciodvfy: 0 errors), carry its patient and study (an old unit's ACR-NEMA date and time in DICOM's
    form), and reference it by its own class."""
    ds = pydicom.dcmread(dicom_file(name))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    # color-pl's UIDs have an example's root (999.), which dciodvfy rightly calls illegal in anything joining its study
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    settings = _settings(tmp_path, free_port).model_copy(deep=True)
    settings.model.extra_bundles = [bundle_for(tmp_path, "us-xa-demo", ("US", "XA"))]
    client = api_client(create_app(service(settings)))
    study = _post(client, dicom_bytes(ds), name)
    ((sr,), (sc,)) = _received(pacs, tmp_path)
    (image,) = study["images"]
    assert [r["model"]["name"] for r in image["results"]] == ["us-xa-demo"]
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID == study["uid"]
    assert sr.PatientName == sc.PatientName == ds.PatientName
    if name == "color-pl.dcm":
        assert (ds.StudyDate, ds.StudyTime) == ("1994.11.05", "11:20:00"), "ACR-NEMA's forms"
        assert (sr.StudyDate, sr.StudyTime) == (sc.StudyDate, sc.StudyTime) == ("19941105", "112000")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    classes = {s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: s.ReferencedSOPSequence[0] for s in evidence}
    assert classes[ds.SOPInstanceUID].ReferencedSOPClassUID == sop_class, "the SR's evidence: the image's own class"
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == sop_class, "the SC's source: the image's own class"
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert {str(g.source_images[0].referenced_sop_class_uid) for g in groups} == {sop_class}


def test_each_image_read_makes_series_of_its_own(
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """Two images of one study: the second result's SR and SC take the next series numbers, described by the
    image they read."""
    second = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    second.SOPInstanceUID, second.SeriesInstanceUID = generate_uid(), generate_uid()
    second.SeriesNumber, second.InstanceNumber = 7, 3
    client = api_client(create_app(service(_settings(tmp_path, free_port))))
    _post(client)
    _until(lambda: len(pacs.received) == 2)
    _post(client, dicom_bytes(second), "second.dcm")
    srs, scs = _received(pacs, tmp_path, 4)
    assert sorted(ds.SeriesNumber for ds in srs) == [9001, 9003] and sorted(ds.SeriesNumber for ds in scs) == [
        9002,
        9004,
    ]
    assert len({ds.SeriesInstanceUID for ds in srs + scs}) == 4
    last = max(srs, key=lambda ds: ds.SeriesNumber)
    assert last.SeriesDescription == "AI findings cxr-reference 1.1.1, series 7 image 3"


def test_labels_without_a_standard_code_take_the_private_scheme_and_two_models_take_series_of_their_own(
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """One image read by two models, the second's manifest coding one label only: its other findings take the
    private scheme 99EDGEAPP, identified in the SR's Coding Scheme Identification (the first model's SR, all coded,
    has none); the four objects are valid (dciodvfy: 0 errors) and each in a series of its own number."""
    settings = _settings(tmp_path, free_port).model_copy(deep=True)
    one_coded = lambda m: {"codes": {m.labels[0]: m.codes[m.labels[0]]}}  # noqa: E731
    settings.model.extra_bundles = [bundle_named(tmp_path, "cxr-private", one_coded)]
    _post(api_client(create_app(service(settings))))
    srs, scs = _received(pacs, tmp_path, 4)
    assert sorted(ds.SeriesNumber for ds in srs + scs) == [9001, 9002, 9003, 9004]
    assert len({ds.SeriesInstanceUID for ds in srs + scs}) == 4
    by_model = {sr.SeriesDescription.split()[2]: sr for sr in srs}
    reference, private = by_model["cxr-reference"], by_model["cxr-private"]
    assert "CodingSchemeIdentificationSequence" not in reference
    assert {key[1] for key, *_ in _findings(reference).values()} == {"SCT"}
    labels = load_bundle(EMBEDDED_BUNDLE).manifest.labels
    schemes = {label: key[1] for label, (key, *_) in _findings(private).items()}
    assert schemes == {label: "SCT" if label == labels[0] else "99EDGEAPP" for label in labels}
    (scheme,) = private.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99EDGEAPP"
    assert scheme.CodingSchemeName and scheme.CodingSchemeResponsibleOrganization


def test_documents_made_in_turn_each_carry_their_own_image_s_findings_and_uids(
    tmp_path: Path,
    pacs: Pacs,
    free_port: int,
    nih_png: Path,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """Two images of two patients read by one model, their documents made one after the other by one documents
    process (which makes what every report of the model shares once): each SR holds its own image's findings, its
    own tracking UIDs and its own image and heatmap as evidence; dciodvfy finds no error in either."""
    client = api_client(create_app(service(_settings(tmp_path, free_port))))
    studies = [_post(client), _post(client, nih_png.read_bytes(), "a.png")]
    srs, scs = _received(pacs, tmp_path, 4)
    probabilities, tracking = [], []
    for study in studies:
        (image,) = study["images"]
        (sr,) = [ds for ds in srs if ds.StudyInstanceUID == study["uid"]]
        (sc,) = [ds for ds in scs if ds.StudyInstanceUID == study["uid"]]
        own = {f["label"]: f["probability"] for f in image["results"][0]["findings"]}
        assert {label: found[1] for label, found in _findings(sr).items()} == pytest.approx(own)
        probabilities.append(own)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        referenced = {s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in evidence}
        assert referenced == {image["sop_instance_uid"], sc.SOPInstanceUID}
        groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
        assert {str(g.source_images[0].referenced_sop_instance_uid) for g in groups} == {image["sop_instance_uid"]}
        tracking += [str(g.tracking_uid) for g in groups]
    assert probabilities[0] != probabilities[1], "two images the model reads differently"
    assert len(set(tracking)) == len(tracking) == 10, "each finding of each image its own tracking UID"


def test_documents_made_together_each_copy_their_own_image_s_header() -> None:
    """Drafts of two PNGs (no stored header: `source_path` None) made in one call: each SR is its own image's
    (study, series, instance referenced, patient), not the first one's."""
    from edge_app.imaging.header import generated_header
    from edge_app.outputs.documents import Draft, make
    from edge_app.store.rows import StoredFinding

    model = {"name": "m", "version": "1", "precision": "fp32", "runner": "onnxruntime"}
    drafts = [
        Draft(
            source_path=None,
            header=generated_header("png"),
            patient_id=patient,
            made_at=dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.timezone.utc),
            ordinal=1,
            model=model,
            bundle_sha256="b" * 64,
            findings=(StoredFinding("Effusion", 0.7, 0.5, True),),
            codes={},
            view=None,
            heatmap=None,
        )
        for patient in ("P-ONE", "P-TWO")
    ]
    made = [pydicom.dcmread(io.BytesIO(documents["sr"])) for documents in make(drafts)]
    for draft, sr in zip(drafts, made, strict=True):
        assert (sr.PatientID, sr.StudyInstanceUID) == (draft.patient_id, draft.header.study_uid)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == draft.header.series_uid
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft.header.sop_instance_uid


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
        dump = subprocess.run([dsrdump, "+Pl", str(sr)], capture_output=True, text=True)
        assert dump.returncode == 0, dump.stderr
        assert "Comprehensive 3D SR" in dump.stdout and '"Algorithm Name")="cxr-reference"' in dump.stdout
        assert "Not for clinical use" in dump.stdout and '=(287272002,SCT,"Cardiomegaly")' in dump.stdout
        assert '"Probability")=' in dump.stdout and not dump.stderr, "a tree dsrdump reads without a warning"
        (sc,) = [p for p in received.iterdir() if p.name.startswith("SC")]
        assert pydicom.dcmread(sc).Modality == "OT"
    finally:
        scp.terminate()
        scp.wait()
