"""The DICOM objects a result is sent back as: a Comprehensive SR of the findings and a Secondary Capture of the
image with its heatmap over it. Both join the image's own study (same Study Instance UID), in new series."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.imaging.encode import heatmap_overlay
from edge_app.imaging.header import ImageHeader

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_SCHEME = "99EDGEAPP"  # codes of this appliance's own (PS3.16 8.2: a private coding scheme)


def _code(value: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, _SCHEME, meaning[:64]
    return code


def _text(name: str, meaning: str, text: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [_code(name, meaning)]
    item.TextValue = text
    return item


def _base(header: ImageHeader, sop_class: str, modality: str, series_number: int) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = header.study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, 1
    ds.PatientID, ds.PatientName = header.patient_id, ""
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Manufacturer, ds.SeriesDescription = "edge-app", "AI findings (not for clinical use)"
    return ds


def _encode(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def findings_report(
    header: ImageHeader, model: Mapping[str, str], bundle_sha256: str, findings: list[dict[str, Any]]
) -> bytes:
    """A Comprehensive SR: the model, its bundle, the not-for-clinical-use flag, and per label the probability,
    the threshold and the decision; it references the image it reads."""
    from pydicom.dataset import Dataset

    ds = _base(header, COMPREHENSIVE_SR, "SR", 901)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ConceptNameCodeSequence = [_code("AIFINDINGS", "AI findings")]
    items = [
        _text("MODEL", "Model", f"{model['name']} {model['version']} ({model['precision']}, {_where(model)})"),
        _text("BUNDLE", "Model bundle SHA-256", bundle_sha256),
        _text("NOTCLINICAL", "Intended use", "Not for clinical use: a demonstration, not a diagnosis"),
    ]
    for f in findings:
        # A label its validation does not support is neither: say so, as the tablet does.
        decision = "not validated" if f.get("validated") is False else "positive" if f["positive"] else "negative"
        items.append(
            _text(
                "FINDING",
                str(f["label"]),
                f"{f['label']}: probability {f['probability']:.4f}, threshold {f['threshold']:.4f}, {decision}",
            )
        )
    ds.ContentSequence = items
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.sop_class_uid or SECONDARY_CAPTURE
    reference.ReferencedSOPInstanceUID = header.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPSequence = header.series_uid, [reference]
    evidence = Dataset()
    evidence.StudyInstanceUID, evidence.ReferencedSeriesSequence = header.study_uid, [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.PerformedProcedureCodeSequence = []
    return _encode(ds)


def heatmap_capture(header: ImageHeader, preview: NDArray[np.uint8], heatmap: NDArray[np.float32], label: str) -> bytes:
    """A Secondary Capture of the image (its preview) with the heatmap laid over it in red."""
    from pydicom.pixels.utils import set_pixel_data

    rgb = heatmap_overlay(preview, heatmap)
    ds = _base(header, SECONDARY_CAPTURE, "OT", 902)
    ds.ConversionType, ds.ImageComments = "WSD", f"Heatmap of {label}; not for clinical use"
    set_pixel_data(ds, rgb, "RGB", 8)
    return _encode(ds)


def _where(model: Mapping[str, str]) -> str:
    """The runner that computed a result, and the server where it was not this box."""
    return f"{model['runner']} at {model['server']}" if model.get("server") else model["runner"]
