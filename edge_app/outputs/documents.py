"""The DICOM objects a result is sent back as, built with highdicom: a Comprehensive 3D SR on TID 1500 (a
measurement report: per finding its coded concept, its probability and threshold, the decision) and a Secondary
Capture of the image with the heatmap of its most probable finding over it.

Both join the image's own study: the source's Patient and General Study modules and its Specific Character Set are
copied unchanged (from the stored file's header; a PNG or JPEG has none: the patient ID the box was given, empty
Type 2 values). Each result (an image read by a model) makes its own two series: the n-th diagnosed result of a
study puts its SR in series `SERIES_BASE + 2n - 1` and its SC in `SERIES_BASE + 2n`, each described by the model,
its version and the image read. docs/conformance.md says all of it for a PACS administrator."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import re
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.manifest import Code
from edge_app.imaging.encode import heatmap_overlay
from edge_app.imaging.header import ImageHeader
from edge_app.imaging.uids import new_output_uid
from edge_app.store.rows import StoredFinding

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PRIVATE_SCHEME = "99EDGEAPP"  # a label's code where its bundle gives none (PS3.16 8.2: a private coding scheme)
SERIES_BASE = 9000
CAPTURE_SIDE = 512  # the Secondary Capture's longest side, in pixels
MANUFACTURER = "edge-app"
NOT_CLINICAL = "Not for clinical use: a demonstration, not a diagnosis"
# The retired image classes the receiver accepts, each with the class that replaced it. highdicom copies the
# Patient and General Study modules by the source's IOD and knows no retired one: it is shown the source as of the
# class that replaced it (those modules are the same), while every reference names the image by its real class.
_REPLACED_BY = {
    "1.2.840.10008.5.1.4.1.1.6": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3": "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.12.3": "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Bi-Plane: X-Ray Angiographic
}
# ACR-NEMA's forms of a date (yyyy.mm.dd) and a time (hh:mm:ss), which old units still write (pydicom's
# color-pl.dcm, an ultrasound of 1994): neither highdicom nor dciodvfy takes them, and pydicom does not convert them.
_OLD_FORMS = {
    "DA": (re.compile(r"(\d{4})\.(\d\d)\.(\d\d)"), r"\1\2\3"),
    "TM": (re.compile(r"(\d\d):(\d\d)(?::(\d\d(?:\.\d{1,6})?))?"), r"\1\2\3"),
}
_OFFSET = re.compile(r"([+-])(\d\d)(\d\d)")  # Timezone Offset From UTC: &ZZXX
# The Type 2 attributes of the Patient and General Study modules: present, empty where the source has no value.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class Origin:
    """What the documents of one result share: the image read, when, by which model, the result's rank."""

    source: Dataset  # the image's header (`source_header`)
    made_at: dt.datetime  # the result's time, timezone-aware
    ordinal: int  # this result among its study's diagnosed results, from 1
    model: Mapping[str, str]  # name, version, precision, runner (and server) as the result records them
    bundle_sha256: str

    def series_number(self, kind: Literal["sr", "sc"]) -> int:
        return SERIES_BASE + 2 * self.ordinal - (1 if kind == "sr" else 0)

    def series_description(self, kind: Literal["sr", "sc"]) -> str:
        what = "AI findings" if kind == "sr" else "AI heatmap"
        of = f"series {self.source.get('SeriesNumber', '')} image {self.source.get('InstanceNumber', '')}"
        name = f"{what} {self.model['name']} {self.model['version']}, {of.strip()}"
        return name[:64]  # LO


def source_header(path: Path | None, header: ImageHeader, patient_id: str) -> Dataset:
    """The source image's header (the stored DICOM file's, pixels not read); for a PNG or JPEG (`path` None) or
    a file removed since, one made of what the store knows. The UIDs are the ones the store holds the image by."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = Dataset()
    if path is not None:
        with contextlib.suppress(OSError, pydicom.errors.InvalidDicomError):  # removed by retention: what is known
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = header.study_uid, header.series_uid
    ds.SOPInstanceUID, ds.SOPClassUID = header.sop_instance_uid, header.sop_class_uid or SECONDARY_CAPTURE
    if not ds.get("PatientID"):
        ds.PatientID = header.patient_id or patient_id
    if not ds.get("Modality"):
        ds.Modality = header.modality or "OT"
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for element in ds:  # an old form written in DICOM's: the same date or time
        if element.VR in _OLD_FORMS and isinstance(element.value, str):
            pattern, form = _OLD_FORMS[element.VR]
            if pattern.fullmatch(element.value):
                element.value = pattern.sub(form, element.value)
    return ds


def heatmap_capture(origin: Origin, preview: NDArray[np.uint8], heatmap: NDArray[np.float32], label: str) -> Dataset:
    """A Secondary Capture of the image (its preview, CAPTURE_SIDE pixels on its longest side) with the heatmap
    laid over it in red; it references its source image."""
    import highdicom as hd
    from PIL import Image
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    source = origin.source
    height, width = preview.shape[:2]
    scale = CAPTURE_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        preview = np.asarray(Image.fromarray(preview).resize(size, Image.Resampling.LANCZOS))
    rgb = heatmap_overlay(preview, heatmap)
    # The preview is the image's pixel grid scaled: its orientation is the source's. highdicom needs one to make a
    # patient-coordinate SC; where the source gives none, the Type 2 value stays empty.
    given = [str(v) for v in source.get("PatientOrientation", []) or []]
    orientation = (given[0], given[1]) if len(given) == 2 else None
    sc = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=new_output_uid(),
        series_number=origin.series_number("sc"),
        sop_instance_uid=new_output_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        specific_character_set=source.get("SpecificCharacterSet"),
        series_description=origin.series_description("sc"),
    )
    if orientation is None:
        sc.add_new("PatientOrientation", "CS", None)  # Type 2: present, empty
    sc.copy_patient_and_study_information(_as_highdicom_knows(source))
    _dated(sc, origin)
    if "BodyPartExamined" not in source:
        sc.add_new(
            "Laterality", "CS", None
        )  # Type 2C: a body part not known may be a paired one; its side is not known either
    for keyword in ("Laterality", "BodyPartExamined", "RequestAttributesSequence"):
        if keyword in source:
            sc[keyword] = deepcopy(source[keyword])
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.DerivationDescription = f"Heatmap of {label} by {origin.model['name']} {origin.model['version']}"[:1024]
    sc.ImageComments = f"Heatmap of {label}; not for clinical use"
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    return sc


def findings_report(
    origin: Origin, findings: Sequence[StoredFinding], label_codes: Mapping[str, Code], capture: Dataset | None
) -> Dataset:
    """A Comprehensive 3D SR on TID 1500: a measurement group per finding (its coded concept; probability and
    threshold as numbers; Present, Absent or Indeterminate where its label is not validated), the model as the
    algorithm identification, the not-for-clinical-use statement; the image and the heatmap capture as evidence."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    source = origin.source
    model = origin.model
    algorithm = _algorithm(
        model["name"],
        model["version"],
        (f"precision {model['precision']}", f"runner {_where(model)}", f"bundle sha256 {origin.bundle_sha256}"),
    )
    read = [hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)]
    groups = []
    for finding in findings:
        concept = _concept(finding.label, label_codes.get(finding.label))
        # A label its validation does not support is neither: say so, as the tablet does.
        decision = (
            codes.SCT.Indeterminate
            if not finding.validated
            else codes.SCT.Present
            if finding.positive
            else codes.SCT.Absent
        )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_output_uid(), identifier=finding.label),
                finding_type=concept,
                algorithm_id=algorithm,
                source_images=read,
                measurements=[
                    hd.sr.Measurement(codes.DCM.Probability, finding.probability, codes.UCUM.NoUnits),
                    hd.sr.Measurement(codes.DCM.ThresholdValue, finding.threshold, codes.UCUM.NoUnits),
                ],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(concept, decision)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    root = report[0]
    root.ContentSequence.append(_statement())
    # The document is made around the report without its measurement groups, which are then set in the
    # document's own copy of their container: Comprehensive3DSR deep-copies, parses and searches the tree it is
    # given (about 35 ms for 5 groups, most of the cost of the documents), and the groups, each made and checked
    # by highdicom just above, hold nothing its evidence is made of (that is the `evidence` given).
    measurements = _container(root, codes.DCM.ImagingMeasurements)
    made_groups, measurements.ContentSequence = measurements.ContentSequence, hd.sr.ContentSequence([])
    made = hd.sr.Comprehensive3DSR(
        evidence=[_as_highdicom_knows(source)] + ([capture] if capture is not None else []),
        content=root,
        series_instance_uid=new_output_uid(),
        series_number=origin.series_number("sr"),
        sop_instance_uid=new_output_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        requested_procedures=_requests(source),
        series_description=origin.series_description("sr"),
    )
    _container(made, codes.DCM.ImagingMeasurements).ContentSequence = made_groups
    # A plain data set: highdicom's `content` view of it, parsed at its making, lacks the groups.
    sr = Dataset(made)
    sr.file_meta = made.file_meta
    for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        for item in series.ReferencedSOPSequence:  # the image by its real class (see _as_highdicom_knows)
            if item.ReferencedSOPInstanceUID == source.SOPInstanceUID:
                item.ReferencedSOPClassUID = source.SOPClassUID
    _dated(sr, origin)
    if any(label not in label_codes for label in (f.label for f in findings)):
        scheme = Dataset()
        scheme.CodingSchemeDesignator = PRIVATE_SCHEME
        scheme.CodingSchemeName = "edge-app labels without a standard code"
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


@dataclass(frozen=True)
class Draft:
    """What one diagnosed result's documents are made of, in plain values: it crosses to the process that makes
    them (`make`)."""

    source_path: Path | None  # the stored DICOM file whose header the documents copy; None for a PNG or JPEG
    header: ImageHeader
    patient_id: str
    made_at: dt.datetime
    ordinal: int
    model: Mapping[str, str]
    bundle_sha256: str
    findings: tuple[StoredFinding, ...]
    codes: Mapping[str, Code]  # its bundle's codes of labels
    view: bytes | None  # the image's preview (JPEG) and its most probable finding's heatmap (label, PNG)
    heatmap: tuple[str, bytes] | None


def make(drafts: Sequence[Draft]) -> list[dict[str, bytes]]:
    """Each draft's documents as DICOM files' bytes by kind ("sr", and "sc" where it has a heatmap and a view)."""
    made: list[dict[str, bytes]] = []
    sources: dict[tuple[Path | None, ImageHeader, str], Dataset] = {}  # read once per image, keyed by all it is
    for draft in drafts:  # made of (two PNGs share the path None)
        key = (draft.source_path, draft.header, draft.patient_id)
        if key not in sources:
            sources[key] = source_header(*key)
        origin = Origin(sources[key], draft.made_at, draft.ordinal, draft.model, draft.bundle_sha256)
        documents: dict[str, bytes] = {}
        capture = None
        if draft.heatmap is not None and draft.view is not None:
            label, values = draft.heatmap
            heatmap = _pixels(values).astype(np.float32) / np.float32(255)
            capture = heatmap_capture(origin, _pixels(draft.view, CAPTURE_SIDE), heatmap, label)
            documents["sc"] = encode(capture)
        documents["sr"] = encode(findings_report(origin, draft.findings, draft.codes, capture))
        made.append(documents)
    return made


def warm() -> None:
    """Make and drop the documents of a made-up result: what a new process does once (the libraries' imports,
    highdicom's tables of the standard, pydicom's dictionaries of codes: about 2 s, twice that on a loaded box)
    is then done before the first image's documents, not while they wait."""
    from edge_app.imaging.header import generated_header

    model = {"name": "warm-up", "version": "0", "precision": "fp32", "runner": "none"}
    origin = Origin(source_header(None, generated_header("png"), ""), dt.datetime.now(dt.timezone.utc), 1, model, "")
    capture = heatmap_capture(origin, np.zeros((8, 8), np.uint8), np.zeros((2, 2), np.float32), "warm-up")
    encode(capture)
    encode(findings_report(origin, [StoredFinding("warm-up", 0.5, 0.5, False)], {}, capture))


def encode(ds: Dataset) -> bytes:
    """A data set as a DICOM file's bytes (Part 10, Explicit VR Little Endian as highdicom made it)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _as_highdicom_knows(source: Dataset) -> Dataset:
    """The source, or where its class is a retired one, a copy of it as of the class that replaced it."""
    from pydicom.dataset import Dataset

    replaced_by = _REPLACED_BY.get(str(source.SOPClassUID))
    if replaced_by is None:
        return source
    shown = Dataset(dict(source.items()))  # a dict of its own: a new element for the class leaves the source's be
    shown.add_new("SOPClassUID", "UI", replaced_by)
    return shown


# What is the same in every report of a model is made once per process (the documents process makes them one
# after another for the same few models): its algorithm identification, its labels' coded concepts.


@functools.lru_cache(maxsize=16)
def _algorithm(name: str, version: str, parameters: tuple[str, ...]) -> Any:
    """A model's algorithm identification (TID 4019)."""
    from highdicom.sr import AlgorithmIdentification

    return AlgorithmIdentification(name=name, version=version, parameters=list(parameters), manufacturer=MANUFACTURER)


@functools.lru_cache(maxsize=256)
def _concept(label: str, code: Code | None) -> Any:
    """A label's coded concept: its bundle's code, or a private one where it gives none."""
    from highdicom.sr import CodedConcept

    if code is None:
        return CodedConcept(label.upper().replace(" ", "_")[:16], PRIVATE_SCHEME, label[:64])
    return CodedConcept(code.value, code.scheme, code.meaning)


def _container(parent: Dataset, name: Any) -> Dataset:
    """The container item `name` (a code) among the children of an SR content item."""
    found: Dataset
    (found,) = [
        item
        for item in parent.ContentSequence
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == name.value
    ]
    return found


def _statement() -> Any:
    """TID 1500's qualitative evaluations (row 12): the not-for-clinical-use statement, as text."""
    from highdicom.sr import CodedConcept, ContainerContentItem, ContentSequence, TextContentItem
    from pydicom.sr.codedict import codes

    container = ContainerContentItem(
        name=CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"), relationship_type="CONTAINS"
    )
    container.ContentSequence = ContentSequence(
        [TextContentItem(name=codes.DCM.Comment, value=NOT_CLINICAL, relationship_type="CONTAINS")]
    )
    return container


def _requests(source: Dataset) -> list[Dataset] | None:
    """The orders the image was made for, as the SR's Referenced Request Sequence: the source's own where it has
    one, else one per item of its Request Attributes Sequence, else one for its accession number; None if none."""
    from pydicom.dataset import Dataset

    if "ReferencedRequestSequence" in source:
        return list(deepcopy(source.ReferencedRequestSequence))
    asked = list(source.get("RequestAttributesSequence", [])) or ([Dataset()] if source.AccessionNumber else [])
    requests = []
    for request in asked:
        item = Dataset()
        item.StudyInstanceUID = source.StudyInstanceUID
        item.ReferencedStudySequence = []
        item.AccessionNumber = request.get("AccessionNumber") or source.AccessionNumber
        issuer = request.get("IssuerOfAccessionNumberSequence") or source.get("IssuerOfAccessionNumberSequence")
        if issuer:  # Type 3: absent rather than empty
            item.IssuerOfAccessionNumberSequence = deepcopy(issuer)
        item.PlacerOrderNumberImagingServiceRequest = request.get("PlacerOrderNumberImagingServiceRequest", "")
        item.FillerOrderNumberImagingServiceRequest = request.get("FillerOrderNumberImagingServiceRequest", "")
        item.RequestedProcedureID = request.get("RequestedProcedureID", "")
        item.RequestedProcedureDescription = request.get("RequestedProcedureDescription", "")
        item.RequestedProcedureCodeSequence = deepcopy(request.get("RequestedProcedureCodeSequence") or [])
        requests.append(item)
    return requests or None


def _dated(ds: Dataset, origin: Origin) -> None:
    """Content Date/Time: the result's time, in the zone the object says (the source's Timezone Offset From UTC
    where it gives one, else this box's), which also holds for the study's dates copied from the source."""
    offset = _OFFSET.fullmatch(str(origin.source.get("TimezoneOffsetFromUTC", "")).strip())
    zone: dt.tzinfo
    if offset:
        sign = -1 if offset[1] == "-" else 1
        zone = dt.timezone(sign * dt.timedelta(hours=int(offset[2]), minutes=int(offset[3])))
    else:
        zone = dt.datetime.now().astimezone().tzinfo or dt.timezone.utc
    when = origin.made_at.astimezone(zone)
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.TimezoneOffsetFromUTC = when.strftime("%z")


def _where(model: Mapping[str, str]) -> str:
    """The runner that computed a result, and the server where it was not this box."""
    return f"{model['runner']} at {model['server']}" if model.get("server") else model["runner"]


def _pixels(encoded: bytes, longest: int | None = None) -> NDArray[np.uint8]:
    """A stored PNG or JPEG (a heatmap, an image's view) as 8-bit pixels; a JPEG larger than `longest` pixels on
    its longest side decoded at the smallest of its DCT scales that keeps that many (Pillow's `draft`: the 1024-pixel
    view at half its size, a quarter of the decoding and no resampling for a 512-pixel capture)."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as img:
        scale = longest / max(img.size) if longest is not None else 1.0
        if scale < 1:
            img.draft(img.mode, (round(img.width * scale), round(img.height * scale)))
        return np.asarray(img, dtype=np.uint8)
