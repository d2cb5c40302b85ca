"""What an image says about itself before its pixels are touched: identity (DICOM UIDs) and what it shows.

Read when an image arrives, in the receiving process: pure-Python header parsing (pydicom; values over 1 KB, the
pixel data among them, left on disk), never a native decoder. PNG and JPEG carry no identity: they get new UIDs.
A DICOM object without pixel data (a structured report, a key object selection, a presentation state) is read for
its identity too: `holds_image` says it is none.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

from edge_app.errors import ImageRejected, NotAnImage

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# PS3.5 9.1: components of digits joined by dots, at most 64 characters. Leading zeros, which some units write,
# are let through; anything else (a '/', a line break, a quote) would become a path, a header or a URL later.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_SPACED = {
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
    "SOPInstanceUID": "SOP Instance UID",
}


@dataclass(frozen=True)
class ImageHeader:
    """An image's identity and what routing needs to know of it."""

    format: Literal["dicom", "png", "jpeg", "unknown"]
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str = ""
    body_part: str = ""
    view: str = ""
    patient_id: str = ""
    sop_class: str = ""
    sop_class_uid: str = ""
    patient_name: str = ""  # shown on the tablet and the report; never logged
    accession_number: str = ""  # the order's number at the clinic (RIS): searched for on the worklist
    device: str = ""  # the modality that made it: manufacturer, model, station
    # Who and what, for the model's monitoring by group (never shown apart from aggregates): the patient's sex
    # (M, F, O or ""), age in years at the study (None: unknown), and the unit apart.
    patient_sex: str = ""
    age_years: float | None = None
    manufacturer: str = ""
    device_model: str = ""
    station: str = ""
    holds_image: bool = True  # False: a DICOM object of a class without pixels (an SR, a KOS, a presentation state)
    # The patient's context, shown to the clinician as the DICOM gives it (DA dates YYYYMMDD, AS ages "045Y").
    study_date: str = ""
    patient_age: str = ""
    patient_birth_date: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImageHeader:
        """The header stored with an image (its metadata holds more; a migrated one may hold less)."""
        known = {f.name for f in fields(cls)}
        given = {
            k: v if isinstance(v, (bool, float)) else str(v) for k, v in values.items() if k in known and v is not None
        }
        given.setdefault("format", "unknown")
        for uid in ("study_uid", "series_uid", "sop_instance_uid"):
            given.setdefault(uid, "")
        return cls(**given)  # type: ignore[arg-type]


def read_header(path: Path, source: str, max_inflated_mb: int = 320) -> ImageHeader:
    """The header of a stored DICOM, PNG or JPEG file; raise `ImageRejected` for anything else, and for a Deflated
    data set that inflates past `max_inflated_mb` (imaging.max_decode_mb, 320 by default: it could never be
    decoded)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageRejected(source, f"cannot be read ({exc.strerror or exc})", "unreadable") from exc
    if not head:
        raise ImageRejected(source, "the file is empty", "unreadable")
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return generated_header("png" if head.startswith(_PNG_MAGIC) else "jpeg")
    if head[128:132] != b"DICM":
        raise ImageRejected(source, "not a DICOM (Part 10), PNG or JPEG file", "unreadable")
    return _dicom_header(path, source, max_inflated_mb * 2**20)


def generated_header(fmt: Literal["png", "jpeg", "unknown"] = "unknown") -> ImageHeader:
    """New UIDs, for an image that carries none (PNG, JPEG) or whose own cannot be read."""
    from pydicom.uid import generate_uid

    return ImageHeader(fmt, generate_uid(), generate_uid(), generate_uid())


_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_string(age: str) -> tuple[int, str] | None:
    """A Patient Age (an AS value: "045Y", "006M", "010W", "005D") as its number and unit letter; None where it is
    not one."""
    found = re.fullmatch(r"(\d{3})([DWMY])", age.strip().upper())
    return (int(found[1]), found[2]) if found else None


def _age_years(age: str, birth: str, study: str) -> float | None:
    """The patient's age in years: Patient Age, else Study Date less Patient's Birth Date; None where neither can
    be read."""
    if (given := age_string(age)) is not None:
        return round(given[0] * _AGE_UNIT_YEARS[given[1]], 2)
    try:
        born, taken = (dt.datetime.strptime(d, "%Y%m%d") for d in (birth, study))
    except ValueError:
        return None
    return round((taken - born).days / 365.25, 2) if taken >= born else None


def _dicom_header(path: Path, source: str, max_inflated: int) -> ImageHeader:
    import pydicom
    from pydicom.uid import generate_uid

    who = ("", "")
    try:
        with path.open("rb") as fh:
            inflated = deflated_size(fh, max_inflated, source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Values over 1 KB, the pixels among them, stay on disk; a Deflated data set is inflated whole (pydicom
            # reads it so) and its deferred values would be read back from the deflated file, wrongly: none deferred.
            ds = pydicom.dcmread(path, defer_size=1024 if inflated is None else None)
            sop_class = ds.get("SOPClassUID")
            kind = getattr(sop_class, "name", None) or str(sop_class or "unknown SOP class")
            holds_image = "PixelData" in ds

            def text(keyword: str) -> str:
                return str(ds.get(keyword, "") or "").strip()

            patient_name = " ".join(text("PatientName").replace("^", " ").split())
            who = (patient_name, text("PatientID"))  # a refusal from here on still says whose image it was
            # Kept where it holds no image by its class; an image class (every one's name says so, retired ones
            # too) without pixels, or an object of no class, is refused.
            if not holds_image and (sop_class is None or "Image Storage" in kind):
                raise NotAnImage(source, f"DICOM object holds no image ({kind})")
            if holds_image:  # the data set's end: the file's, or the inflated data set's (its offsets are in it)
                _check_pixel_data_length(ds, path.stat().st_size if inflated is None else inflated, source)

            def uid(keyword: str) -> str:
                value = text(keyword)
                if value and not (len(value) <= 64 and _UID.fullmatch(value)):
                    shown = "".join(c if c.isprintable() and c != "\\" else "?" for c in value[:80])
                    raise ImageRejected(
                        source,
                        f"its {_SPACED[keyword]} '{shown}' is not a DICOM UID (digits and dots, at most 64)",
                        "damaged",
                    )
                return value or generate_uid()

            return ImageHeader(
                "dicom",
                study_uid=uid("StudyInstanceUID"),
                series_uid=uid("SeriesInstanceUID"),
                sop_instance_uid=uid("SOPInstanceUID"),
                modality=text("Modality").upper(),
                body_part=text("BodyPartExamined").upper(),
                view=text("ViewPosition").upper(),
                patient_id=text("PatientID"),
                sop_class=getattr(sop_class, "name", str(sop_class or "")),
                sop_class_uid=str(sop_class or ""),
                patient_name=patient_name,
                accession_number=text("AccessionNumber"),
                device=" ".join(
                    dict.fromkeys(v for v in map(text, ("Manufacturer", "ManufacturerModelName", "StationName")) if v)
                ),
                patient_sex=text("PatientSex").upper(),
                age_years=_age_years(text("PatientAge"), text("PatientBirthDate"), text("StudyDate")),
                manufacturer=text("Manufacturer"),
                device_model=text("ManufacturerModelName"),
                station=text("StationName"),
                holds_image=holds_image,
                study_date=text("StudyDate"),
                patient_age=text("PatientAge"),
                patient_birth_date=text("PatientBirthDate"),
            )
    except ImageRejected as exc:
        exc.patient_name, exc.patient_id = who
        raise
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise ImageRejected(source, f"damaged DICOM header ({type(exc).__name__}: {exc})", "damaged") from exc


def deflated_size(stream: BinaryIO, limit: int, source: str) -> int | None:
    """The size of a Deflated Explicit VR Little Endian file's data set once inflated, None for any other transfer
    syntax; `ImageRejected` past `limit` bytes or where the deflate stream is damaged. pydicom inflates such a data
    set whole into memory before reading it, and a small file may inflate a thousandfold: the size is counted
    first, a chunk at a time (zlib's `max_length`), never held. Leaves `stream` at its start."""
    # pydicom's own reading of the file meta (its private function: no public one reads it from a stream and
    # stops where the data set begins, as the inflating must)
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream.seek(0)
    read_preamble(stream, False)
    if _read_file_meta_info(stream).get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        stream.seek(0)
        return None
    inflater, size, chunk = zlib.decompressobj(-zlib.MAX_WBITS), 0, 2**20
    try:
        for data in iter(lambda: stream.read(chunk), b""):
            while data and not inflater.eof:
                size += len(inflater.decompress(data, chunk))
                data = inflater.unconsumed_tail
                if size > limit:
                    raise ImageRejected(
                        source,
                        f"its Deflated data set inflates past {limit / 2**20:,.0f} MB (imaging.max_decode_mb)",
                        "too_large",
                    )
        size += len(inflater.flush())
    except zlib.error as exc:
        raise ImageRejected(source, f"damaged Deflated data set ({exc})", "damaged") from exc
    stream.seek(0)
    return size


def _check_pixel_data_length(ds: Any, data_end: int, source: str) -> None:
    """Refuse pixel data cut short: a data set that ends (at `data_end`) before its pixel data does, or
    uncompressed pixel data shorter than the header's image needs. Both are known from the element's header,
    without reading it."""
    from pydicom.pixels.utils import get_expected_length

    raw = ds.get_item("PixelData", keep_deferred=True)
    length, start = int(getattr(raw, "length", 0)), getattr(raw, "value_tell", None)
    if length == 0xFFFFFFFF:  # encapsulated (compressed): its fragments say their own lengths
        return
    if start is not None and start + length > data_end:
        raise ImageRejected(
            source,
            f"truncated DICOM file: its pixel data needs {length:,} bytes, {data_end - start:,} follow",
            "damaged",
        )
    try:
        expected = int(get_expected_length(ds))
    except Exception:  # a header too odd to say: decoding will tell
        return
    if length < expected:
        raise ImageRejected(
            source, f"truncated pixel data: {length:,} bytes, the header's image needs {expected:,}", "damaged"
        )
