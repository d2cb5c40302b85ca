"""Decode DICOM, PNG and JPEG files into display-ready pixels.

Every decoder returns a `DecodedImage`: float32 pixels in [0, 1], shape (H, W) for grey or (H, W, 3) for colour,
with the metadata routing and the UI need. The intensity transforms are the ones a radiologist's viewer applies
(Modality LUT, VOI LUT or window, MONOCHROME1 inverted), so the model sees what the screen shows.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from edge_app.errors import ImageRejected

Pixels = NDArray[np.float32]
FrameChoice = Literal["first", "middle", "last"] | int

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PERCENTILE_WINDOW = (0.5, 99.5)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels in [0, 1] and what is known about where they came from."""

    pixels: Pixels
    source: str
    format: Literal["dicom", "png", "jpeg"]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecodeLimits:
    """Refusals applied before any pixel is decoded."""

    max_pixels: int = 50_000_000
    frame: FrameChoice = "middle"


def decode(data: bytes | Path | str, *, source: str | None = None, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG image given as a path or its bytes; raise `ImageRejected` on anything else."""
    limits = limits or DecodeLimits()
    if isinstance(data, (str, Path)):
        path = Path(data)
        source = source or str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageRejected(source, f"cannot be read ({exc.strerror or exc})") from None
    source = source or "<bytes>"
    if not data:
        raise ImageRejected(source, "the file is empty")
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return _decode_pillow(data, source, limits)
    if len(data) >= 132 and data[128:132] == b"DICM":
        return _decode_dicom(io.BytesIO(data), source, limits)
    raise ImageRejected(source, "not a DICOM (Part 10), PNG or JPEG file")


# -- DICOM ---------------------------------------------------------------------------------------------------------


def _decode_dicom(stream: BinaryIO, source: str, limits: DecodeLimits) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(stream)
    except InvalidDicomError as exc:
        raise ImageRejected(source, f"not a valid DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageRejected(source, f"damaged or truncated DICOM file ({type(exc).__name__}: {exc})") from None

    sop_class = ds.get("SOPClassUID")
    if "PixelData" not in ds and any("end of file" in str(w.message).lower() for w in caught):
        raise ImageRejected(source, "truncated DICOM file (the file ends before its data set does)")
    if "PixelData" not in ds:
        kind = getattr(sop_class, "name", None) or str(sop_class or "unknown SOP class")
        raise ImageRejected(source, f"DICOM object holds no image ({kind})")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if rows <= 0 or cols <= 0:
        raise ImageRejected(source, "DICOM image has no Rows/Columns")
    if rows * cols > limits.max_pixels:
        raise ImageRejected(source, f"image of {cols}x{rows} pixels exceeds the limit of {limits.max_pixels:,} pixels")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    index = _frame_index(limits.frame, n_frames, source)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()

    try:
        from pydicom.pixels.utils import pixel_array

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index if n_frames > 1 else None)
            pixels = _dicom_intensity(arr, ds, photometric, samples)
    except ImageRejected:
        raise
    except Exception as exc:
        raise ImageRejected(source, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(pixels).all():
        raise ImageRejected(source, "pixel data decodes to non-finite values")

    metadata = {
        "modality": str(ds.get("Modality", "")),
        "body_part": str(ds.get("BodyPartExamined", "")),
        "view": str(ds.get("ViewPosition", "")),
        "photometric": photometric,
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "sop_class": getattr(sop_class, "name", str(sop_class or "")),
        "rows": rows,
        "columns": cols,
        "frames": n_frames,
        "frame": index,
        "patient_id": str(ds.get("PatientID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }
    return DecodedImage(pixels=pixels, source=source, format="dicom", metadata=metadata)


def _frame_index(choice: FrameChoice, n_frames: int, source: str) -> int:
    if choice == "first":
        return 0
    if choice == "middle":
        return n_frames // 2
    if choice == "last":
        return n_frames - 1
    if not 0 <= choice < n_frames:
        raise ImageRejected(source, f"frame {choice} asked for, but the image has {n_frames} frame(s)")
    return choice


def _dicom_intensity(arr: NDArray[Any], ds: Any, photometric: str, samples: int) -> Pixels:
    """Map decoded stored values to display intensities in [0, 1]."""
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        entries, first, bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
        # Many palettes declare 16-bit entries but hold 8-bit values (seen in big-endian ultrasound files):
        # judge the depth by the whole palette, as viewers do, not by one image's pixels.
        palette = apply_color_lut(np.arange(first, first + (entries or 65536), dtype=np.uint16), ds)
        top = 255.0 if bits == 8 or palette.max() <= 255 else 65535.0
        return np.asarray(rgb / top, dtype=np.float32).clip(0.0, 1.0)
    if samples == 3:
        # pydicom converts YBR_FULL/YBR_FULL_422 to RGB; the JPEG 2000 decoder undoes YBR_ICT/RCT itself.
        bits = int(ds.get("BitsStored") or 8)
        return (arr.astype(np.float32) / float(2**bits - 1)).clip(0.0, 1.0)
    if samples != 1 or arr.ndim != 2:
        raise ValueError(f"unsupported pixel layout: {samples} samples, array shape {arr.shape}")

    values = apply_modality_lut(arr, ds).astype(np.float32)
    if "VOILUTSequence" in ds:
        lut_data = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float32)
        out = _linear(values, float(lut_data.min()), float(lut_data.max()))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "")))
    else:
        lo, hi = np.percentile(values, _PERCENTILE_WINDOW)
        out = _linear(values, float(lo), float(hi))
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def _first(value: Any) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _linear(values: NDArray[np.float32], lo: float, hi: float) -> NDArray[np.float32]:
    if hi <= lo:
        return np.zeros_like(values)
    return np.asarray(np.clip((values - lo) / (hi - lo), 0.0, 1.0), dtype=np.float32)


def _window(values: NDArray[np.float32], center: float, width: float, function: str) -> NDArray[np.float32]:
    """PS3.3 C.11.2.1.2 windowing onto [0, 1].

    Written here rather than taken from pydicom's `apply_windowing`, which maps onto the stored-value range and
    would have to be undone; the formulas are the standard's, a few lines each.
    """
    function = function.upper()
    if function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6))), dtype=np.float32)
    if function == "LINEAR_EXACT":
        return _linear(values, center - width / 2.0, center + width / 2.0)
    if width <= 1.0:  # LINEAR requires width >= 1; a width of 1 is a threshold
        return (values > center - 0.5).astype(np.float32)
    return np.asarray(np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0), dtype=np.float32)


# -- PNG and JPEG --------------------------------------------------------------------------------------------------


def _decode_pillow(data: bytes, source: str, limits: DecodeLimits) -> DecodedImage:
    from PIL import Image

    fmt: Literal["png", "jpeg"] = "png" if data.startswith(_PNG_MAGIC) else "jpeg"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))  # reads the header only
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    source,
                    f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels:,} pixels",
                )
            img.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(source, f"image exceeds the limit of {limits.max_pixels:,} pixels ({exc})") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ...
        raise ImageRejected(source, f"damaged or truncated {fmt.upper()} file ({exc})") from None

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        pixels = arr / (65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0)
    elif mode == "F":
        pixels = _linear(np.asarray(img, dtype=np.float32), *_minmax(np.asarray(img))).astype(np.float32)
    elif mode in ("L", "1", "LA"):
        pixels = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    metadata = {"rows": height, "columns": width, "mode": mode, "frames": 1, "frame": 0}
    return DecodedImage(pixels=np.clip(pixels, 0.0, 1.0), source=source, format=fmt, metadata=metadata)


def _minmax(arr: NDArray[Any]) -> tuple[float, float]:
    return float(arr.min()), float(arr.max())
