"""Decode DICOM, PNG and JPEG files into display-ready pixels.

Every decoder returns a `DecodedImage`: float32 pixels in [0, 1], shape (H, W) for grey or (H, W, 3) for colour,
with the metadata routing and the UI need. The intensity transforms are the ones a radiologist's viewer applies
(Modality LUT, VOI LUT or window, MONOCHROME1 inverted), so the model sees what the screen shows.

Given what its users need (`Wanted`), a JPEG 2000 / HTJ2K frame is decoded at the smallest of its codestream's
resolution levels that still holds it, and a JPEG file or a grey JPEG baseline frame with its DCT scaling
(Pillow's `draft`): decoding a
1955x1841 CR at half its resolution takes a quarter of the time. The limits apply to the declared full size all the
same, before anything is decoded.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_app.errors import ImageRejected, NotAnImage
from edge_app.imaging.codestream import J2K_SYNTAXES, JPEG_BASELINE, J2kLevels, frame_size, j2k_levels
from edge_app.imaging.header import deflated_size

Pixels = NDArray[np.float32]
_T = TypeVar("_T")
FrameChoice = Literal["first", "middle", "last"] | int

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PERCENTILE_WINDOW = (0.5, 99.5)
_PILLOW_SAMPLE_BYTES = {"I;16": 2, "I": 4}  # 16-bit grey PNG, named by Pillow's version; other modes: 1 byte


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

    max_pixels: int = 25_000_000
    max_decode_mb: int = 320
    frame: FrameChoice = "middle"


@dataclass(frozen=True)
class Wanted:
    """The least a decoded image must hold for its users: `longer` pixels on its longer side and `shorter` on its
    shorter one (or the image's own, where it has fewer). A reduced decode keeps at least that much."""

    longer: int
    shorter: int


def decode(
    data: bytes | Path | str,
    *,
    source: str | None = None,
    limits: DecodeLimits | None = None,
    wanted: Wanted | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG image given as a path or its bytes; raise `ImageRejected` on anything else.
    With `wanted`, at a reduced resolution where the codec allows it (the metadata keeps the image's own size).

    A file is read as it is decoded, never whole into memory first: a 200 MB cine loop costs 200 MB, not 400.
    """
    limits = limits or DecodeLimits()
    if isinstance(data, bytes):
        return _decode_stream(io.BytesIO(data), len(data), source or "<bytes>", limits, wanted)
    source = source or str(data)
    try:
        with open(data, "rb") as fh:
            return _decode_stream(fh, os.fstat(fh.fileno()).st_size, source, limits, wanted)
    except OSError as exc:
        raise ImageRejected(source, f"cannot be read ({exc.strerror or exc})", "unreadable") from exc


def _decode_stream(
    stream: BinaryIO, size: int, source: str, limits: DecodeLimits, wanted: Wanted | None
) -> DecodedImage:
    if not size:
        raise ImageRejected(source, "the file is empty", "unreadable")
    head = stream.read(132)
    stream.seek(0)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return _decode_pillow(stream, size, source, limits, wanted)
    if head[128:132] == b"DICM":
        return _decode_dicom(stream, size, source, limits, wanted)
    raise ImageRejected(source, "not a DICOM (Part 10), PNG or JPEG file", "unreadable")


# -- DICOM ---------------------------------------------------------------------------------------------------------


def _decode_dicom(
    stream: BinaryIO, size: int, source: str, limits: DecodeLimits, wanted: Wanted | None
) -> DecodedImage:
    ds, header = _read_dicom(stream, size, source, limits)
    pixels = _dicom_pixels(ds, header, source, wanted)
    if not np.isfinite(pixels).all():
        raise ImageRejected(source, "pixel data decodes to non-finite values", "damaged")
    return DecodedImage(pixels=pixels, source=source, format="dicom", metadata=header)


def _read_dicom(stream: BinaryIO, size: int, source: str, limits: DecodeLimits) -> tuple[Any, dict[str, Any]]:
    """The data set and its checked image pixel module (`_pixel_header`), nothing decoded yet."""
    import pydicom

    try:
        inflated = deflated_size(stream, limits.max_decode_mb * 2**20, source)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(stream)
    except ImageRejected:
        raise
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageRejected(
            source, f"damaged or truncated DICOM file ({type(exc).__name__}: {exc})", "damaged"
        ) from exc

    if "PixelData" not in ds and any("end of file" in str(w.message).lower() for w in caught):
        raise ImageRejected(source, "truncated DICOM file (the file ends before its data set does)", "damaged")
    size = size if inflated is None else inflated  # what is held while decoding: the inflated data set
    try:  # values are parsed on first access: an unknown VR or a malformed number raises here
        header = _pixel_header(ds, size, source, limits)
    except (ImageRejected, MemoryError):
        raise
    except Exception as exc:
        raise ImageRejected(source, f"damaged DICOM header ({type(exc).__name__}: {exc})", "damaged") from exc
    return ds, header


def _pixel_header(ds: Any, size: int, source: str, limits: DecodeLimits) -> dict[str, Any]:
    """Read and check the image pixel module; return the image's metadata."""
    sop_class = ds.get("SOPClassUID")
    if "PixelData" not in ds:
        kind = getattr(sop_class, "name", None) or str(sop_class or "unknown SOP class")
        raise NotAnImage(source, f"DICOM object holds no image ({kind})")
    rows, cols = _number(ds, "Rows", 0, source), _number(ds, "Columns", 0, source)
    if rows <= 0 or cols <= 0:
        raise ImageRejected(source, "DICOM image has no Rows/Columns", "unsupported")
    samples, bits = _number(ds, "SamplesPerPixel", 0, source), _number(ds, "BitsAllocated", 0, source)
    if samples not in (1, 3):
        raise ImageRejected(
            source, f"SamplesPerPixel {samples or 'absent'} is not 1 (grey) or 3 (colour)", "unsupported"
        )
    if bits not in (1, 8, 16, 32):
        raise ImageRejected(source, f"BitsAllocated {bits or 'absent'} is not 1, 8, 16 or 32", "unsupported")
    check_size(rows, cols, samples, max(1, bits // 8), size, source, limits)
    n_frames = _number(ds, "NumberOfFrames", 1, source)
    if n_frames < 1:
        raise ImageRejected(source, f"NumberOfFrames {n_frames} is not a positive number", "unsupported")
    index = _frame_index(limits.frame, n_frames, source)
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if ds["PixelData"].is_undefined_length:
        _check_codestream(ds, transfer_syntax, index, n_frames, (rows, cols, samples, bits), source)
    return {
        "modality": str(ds.get("Modality", "")),
        "body_part": str(ds.get("BodyPartExamined", "")),
        "view": str(ds.get("ViewPosition", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")).upper(),
        "transfer_syntax": transfer_syntax,
        "sop_class": getattr(sop_class, "name", str(sop_class or "")),
        "rows": rows,
        "columns": cols,
        "samples": samples,
        "bits_stored": _number(ds, "BitsStored", bits, source),
        "frames": n_frames,
        "frame": index,
        "patient_id": str(ds.get("PatientID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }


def _number(ds: Any, keyword: str, default: int, source: str) -> int:
    value = ds.get(keyword)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageRejected(source, f"{keyword} {str(value)[:40]!r} is not a number", "damaged") from None


def check_size(
    rows: int, cols: int, samples: int, sample_bytes: int, file_size: int, source: str, limits: DecodeLimits
) -> None:
    """Refuse, before decoding, an image over the pixel limit or one that would not fit the decoding budget (the
    file, held while it is decoded, and the working memory of one frame)."""
    if rows * cols > limits.max_pixels:
        raise ImageRejected(
            source, f"image of {cols}x{rows} pixels exceeds the limit of {limits.max_pixels:,} pixels", "too_large"
        )
    need = file_size + decode_bytes(rows, cols, samples, sample_bytes)
    if need > limits.max_decode_mb * 2**20:
        raise ImageRejected(
            source,
            f"image of {cols}x{rows} pixels, {samples} sample(s) of {8 * sample_bytes} bits, needs about "
            f"{need / 2**20:,.0f} MB to decode, over the limit of {limits.max_decode_mb:,} MB",
            "too_large",
        )


def decode_bytes(rows: int, cols: int, samples: int, sample_bytes: int) -> int:
    """Working memory to decode and preprocess one image, an upper bound: the decoded samples and one float32 copy
    of them, plus two float32 planes (the percentile window's or the resize's copy). Measured peaks are 0.6 to 0.8
    of it (tests/benchmarks/decode_memory.py)."""
    return rows * cols * (samples * (sample_bytes + 4) + 2 * 4)


def _check_codestream(
    ds: Any, transfer_syntax: str, index: int, n_frames: int, header: tuple[int, int, int, int], source: str
) -> None:
    """Refuse compressed pixel data whose codestream disagrees with the header (a decompression bomb)."""
    from pydicom.encaps import get_frame

    rows, cols, samples, bits = header
    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=n_frames)
        size = frame_size(transfer_syntax, frame, samples, bits)
    except Exception as exc:
        raise ImageRejected(
            source, f"compressed frame {index} cannot be read ({type(exc).__name__}: {exc})", "damaged"
        ) from exc
    if size is None:
        return
    if size.shape is not None and size.shape != (rows, cols):
        found = f"an image of {size.shape[1]}x{size.shape[0]}"
    elif size.pixels != rows * cols:
        found = f"{size.pixels:,} pixels"
    else:
        found = ""
    if found:
        raise ImageRejected(
            source, f"compressed frame {index} holds {found}, but the header says {cols}x{rows}", "damaged"
        )
    if size.samples != samples:
        raise ImageRejected(
            source,
            f"compressed frame {index} has {size.samples} sample(s) per pixel, the header says {samples}",
            "damaged",
        )


def _dicom_pixels(ds: Any, header: dict[str, Any], source: str, wanted: Wanted | None) -> Pixels:
    return _decoded(
        ds, header, source, lambda arr: _dicom_intensity(arr, ds, header["photometric"], header["samples"]), wanted
    )


def _decoded(
    ds: Any, header: dict[str, Any], source: str, then: Callable[[NDArray[Any]], _T], wanted: Wanted | None = None
) -> _T:
    """`then` of the frame's stored values (at a reduced resolution where `wanted` allows one), every decoder
    failure an `ImageRejected`."""
    from pydicom.pixels.utils import pixel_array

    rows, cols, samples = header["rows"], header["columns"], header["samples"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = None if wanted is None else _reduced(ds, header, wanted)
            if arr is None:
                arr = pixel_array(ds, index=header["frame"] if header["frames"] > 1 else None)
                expected = (rows, cols) if samples == 1 else (rows, cols, samples)
                if arr.shape != expected:
                    raise ImageRejected(
                        source,
                        f"pixel data decodes to shape {arr.shape}; the header declares {expected} per frame",
                        "damaged",
                    )
            return then(arr)
    except (ImageRejected, MemoryError):
        raise
    except Exception as exc:
        raise ImageRejected(source, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})", "damaged") from exc
    except BaseException as exc:  # a native decoder's panic (pyo3's PanicException is a BaseException)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ImageRejected(source, f"the pixel decoder failed ({type(exc).__name__}: {exc})", "decoder") from exc


# Photometric interpretations whose reduced decode (a low-pass of the samples) is the image at a lower resolution:
# not a palette's indices, nor YBR_FULL, which the JPEG 2000 decoder leaves to pydicom to convert.
_REDUCIBLE = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_ICT", "YBR_RCT"}


def reduction(rows: int, columns: int, levels: int, wanted: Wanted) -> int:
    """How many times (at most `levels`, the codestream's decomposition levels) a JPEG 2000 image can be halved and
    still hold `wanted`; each halving a size Pillow's decoder agrees on (Pillow 13 rounds a reduced size to the
    nearest pixel where openjpeg rounds up, 1841 / 4 to 460 for 461, and then refuses the codestream as broken)."""
    longer, shorter = min(wanted.longer, max(rows, columns)), min(wanted.shorter, min(rows, columns))
    for r in range(levels, 0, -1):
        power = 1 << r
        size = (-(-rows // power), -(-columns // power))
        pillow = ((rows + power // 2) // power, (columns + power // 2) // power)
        if size == pillow and max(size) >= longer and min(size) >= shorter:
            return r
    return 0


def _reduced(ds: Any, header: dict[str, Any], wanted: Wanted) -> NDArray[Any] | None:
    """The frame's stored values at a reduced resolution that holds `wanted`, where its codec has one."""
    if header["transfer_syntax"] in J2K_SYNTAXES:
        return _reduced_j2k(ds, header, wanted)
    if header["transfer_syntax"] == JPEG_BASELINE:
        return _reduced_jpeg(ds, header, wanted)
    return None


def _reduced_jpeg(ds: Any, header: dict[str, Any], wanted: Wanted) -> NDArray[Any] | None:
    """A JPEG baseline grey frame's values at the DCT's smallest scaling (1/2, 1/4, 1/8) that holds `wanted`, by
    Pillow's `draft` (pydicom's decoders decode full size only); None where no scaling applies, for colour (its
    YBR is pydicom's to convert) and for a frame whose size is not the header's."""
    from PIL import Image
    from pydicom.encaps import get_frame

    rows, cols = header["rows"], header["columns"]
    if header["samples"] != 1:
        return None
    try:
        img = Image.open(io.BytesIO(get_frame(ds.PixelData, header["frame"], number_of_frames=header["frames"])))
        if img.size != (cols, rows) or img.mode != "L":
            return None
        img.draft("L", _draft_size(cols, rows, wanted))
        return np.asarray(img) if img.size != (cols, rows) else None
    except MemoryError:
        raise
    except Exception:  # a frame Pillow does not read: the full decode says what is wrong
        return None


def _reduced_j2k(ds: Any, header: dict[str, Any], wanted: Wanted) -> NDArray[Any] | None:
    """A JPEG 2000 frame's stored values at the smallest resolution level that holds `wanted`, as pydicom gives
    them at full size; None where no reduction applies (another codec, a palette, a level too small, a codestream
    Pillow does not decode: the full decode then says what is wrong).

    pydicom's decoders decode full size only; Pillow's JPEG 2000 decoder (openjpeg) reduces (`j2k_values`).
    """
    from pydicom.encaps import get_frame

    rows, cols = header["rows"], header["columns"]
    if header["photometric"] not in _REDUCIBLE:
        return None
    try:
        frame = get_frame(ds.PixelData, header["frame"], number_of_frames=header["frames"])
        j2k = j2k_levels(frame)
    except (ValueError, struct.error):  # not encapsulated, a JP2 file, a header cut short
        return None
    sizes_agree = (j2k.rows, j2k.columns, j2k.origin) == (rows, cols, (0, 0)) and not j2k.subsampled
    if not sizes_agree or j2k.precision > (8 if header["samples"] == 3 else 16):
        return None
    r = reduction(rows, cols, j2k.levels, wanted)
    if r == 0:
        return None
    try:
        return j2k_values(frame, j2k, r, int(ds.get("PixelRepresentation", 0)))
    except MemoryError:
        raise
    except Exception:
        return None


def j2k_values(frame: bytes, j2k: J2kLevels, reduce: int, pixel_representation: int) -> NDArray[Any]:
    """A JPEG 2000 codestream decoded by Pillow at `reduce` halvings, as pydicom's stored values: Pillow scales the
    samples to its mode's 8 or 16 bits, a signed one offset to unsigned first; a codestream whose sign is not the
    header's has its bits read with the header's sign, as pydicom does."""
    from PIL import Image

    img = Image.open(io.BytesIO(frame), formats=("JPEG2000",))
    img.reduce = reduce  # type: ignore[assignment, method-assign]  # the JPEG 2000 plugin's own setting
    img.load()
    values = np.asarray(img)
    if values.ndim == 3:
        return values
    unsigned = values.astype(np.int32) >> (8 * values.itemsize - j2k.precision)
    stored = unsigned - (1 << (j2k.precision - 1)) if j2k.signed else unsigned
    if j2k.signed != bool(pixel_representation):
        stored &= (1 << j2k.precision) - 1
        if not j2k.signed:
            stored -= (stored >> (j2k.precision - 1)) << j2k.precision
    return stored


@dataclass(frozen=True)
class FullDepth:
    """A greyscale DICOM image's values after its Modality LUT, before any window: what the diagnostic view
    windows itself. `values` * `step` + `offset` are the real values (a CT's HU, a CR's stored units)."""

    values: NDArray[np.uint16]  # at most FULL_DEPTH_SIDE a side
    offset: float
    step: float
    center: float  # the header's first window, else the values' 0.5-99.5 percentiles
    width: float
    inverted: bool  # MONOCHROME1: the lowest value shows white


FULL_DEPTH_SIDE = 4096  # a tablet's budget: 4096 x 4096 x 2 bytes is 32 MB


def has_full_depth(metadata: Mapping[str, Any]) -> bool:
    """Whether a decoded image's metadata is a greyscale DICOM's of more than 8 bits (a diagnostic view shows
    more than its 8-bit view)."""
    grey = metadata.get("photometric") in ("MONOCHROME1", "MONOCHROME2") and metadata.get("samples") == 1
    return grey and int(metadata.get("bits_stored") or 0) > 8


def full_depth_bytes(metadata: Mapping[str, Any]) -> int:
    """What the diagnostic view of an image with `has_full_depth` weighs (16 bits a pixel)."""
    rows, cols = int(metadata["rows"]), int(metadata["columns"])
    every = -(-max(rows, cols) // FULL_DEPTH_SIDE)
    return -(-rows // every) * -(-cols // every) * 2


def decode_full_depth(path: Path | str, *, source: str, limits: DecodeLimits) -> FullDepth:
    """The full-depth values of a greyscale DICOM image (more than 8 bits stored); `ImageRejected` for any other
    image (a PNG, a JPEG, colour, 8 bits: its 8-bit view is all there is) or one that does not decode."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if fh.read(132)[128:132] != b"DICM":
                raise ImageRejected(source, "only a DICOM image has a full-depth view", "unsupported")
            fh.seek(0)
            ds, header = _read_dicom(fh, size, source, limits)
            if not has_full_depth(header):
                raise ImageRejected(source, "an 8-bit or colour image has no more than its view shows", "unsupported")
            return _decoded(ds, header, source, lambda arr: _full_depth(arr, ds, header["photometric"], source))
    except OSError as exc:
        raise ImageRejected(source, f"cannot be read ({exc.strerror or exc})", "unreadable") from exc


def _full_depth(arr: NDArray[Any], ds: Any, photometric: str, source: str) -> FullDepth:
    from pydicom.pixels.processing import apply_modality_lut

    every = -(-max(arr.shape) // FULL_DEPTH_SIDE)  # every n-th pixel: a stride, no copy
    values = _modality(arr[::every, ::every], ds, apply_modality_lut)
    if not np.isfinite(values).all():
        raise ImageRejected(source, "pixel data decodes to non-finite values", "damaged")
    lo, hi = float(values.min()), float(values.max())
    step = max(1.0, (hi - lo) / 65535)  # a range wider than 16 bits (32-bit data) is quantised
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), max(1.0, _first(ds.WindowWidth))
    else:
        p_lo, p_hi = (float(v) for v in np.percentile(values, _PERCENTILE_WINDOW))
        center, width = (p_lo + p_hi) / 2, max(1.0, p_hi - p_lo)
    values -= np.float32(lo)
    values /= np.float32(step)
    return FullDepth(np.round(values).astype(np.uint16), lo, step, center, width, photometric == "MONOCHROME1")


def _frame_index(choice: FrameChoice, n_frames: int, source: str) -> int:
    if choice == "first":
        return 0
    if choice == "middle":
        return n_frames // 2
    if choice == "last":
        return n_frames - 1
    if not 0 <= choice < n_frames:
        raise ImageRejected(source, f"frame {choice} asked for, but the image has {n_frames} frame(s)", "unsupported")
    return choice


def _dicom_intensity(arr: NDArray[Any], ds: Any, photometric: str, samples: int) -> Pixels:
    """Map decoded stored values to display intensities in [0, 1], in float32 and in place where possible."""
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

    if photometric == "PALETTE COLOR":
        # Many palettes declare 16-bit entries but hold 8-bit values (seen in big-endian ultrasound files):
        # judge the depth by the whole palette, as viewers do, not by one image's pixels. Every 16-bit value
        # looked up gives every entry (those outside the palette's range take its first or last).
        palette = apply_color_lut(np.arange(65536, dtype=np.uint16), ds)
        top = 255.0 if palette.max() <= 255 else 65535.0
        return _scaled(apply_color_lut(arr, ds), top)
    if samples == 3:
        # pydicom converts YBR_FULL/YBR_FULL_422 to RGB; the JPEG 2000 decoder undoes YBR_ICT/RCT itself.
        return _scaled(arr, float(2 ** int(ds.BitsStored) - 1))  # pydicom has decoded it: BitsStored is there

    values = _modality(arr, ds, apply_modality_lut)
    del arr
    if "VOILUTSequence" in ds:
        lut_data = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float32, copy=False)
        out = _linear(values, float(lut_data.min()), float(lut_data.max()))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "")))
    else:
        lo, hi = np.percentile(values, _PERCENTILE_WINDOW)
        out = _linear(values, float(lo), float(hi))
    if photometric == "MONOCHROME1":
        np.subtract(1.0, out, out=out)
    return out


def _scaled(arr: NDArray[Any], top: float) -> Pixels:
    out = arr.astype(np.float32)
    out *= np.float32(1.0 / top)
    return np.clip(out, 0.0, 1.0, out=out)


def _modality(arr: NDArray[Any], ds: Any, apply_modality_lut: Any) -> NDArray[np.float32]:
    """The Modality LUT. A plain rescale is applied here in float32: pydicom's `apply_modality_lut` computes in
    float64, twice the memory of an image that may be 25 M pixels."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    values = arr.astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _first(value: Any) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _linear(values: NDArray[np.float32], lo: float, hi: float) -> NDArray[np.float32]:
    """Map [lo, hi] onto [0, 1], clipped; overwrites `values`."""
    if hi <= lo:
        return np.zeros_like(values)
    values -= np.float32(lo)
    values *= np.float32(1.0 / (hi - lo))
    return np.clip(values, 0.0, 1.0, out=values)


def _window(values: NDArray[np.float32], center: float, width: float, function: str) -> NDArray[np.float32]:
    """PS3.3 C.11.2.1.2 windowing onto [0, 1]; overwrites `values`.

    Written here rather than taken from pydicom's `apply_windowing`, which maps onto the stored-value range and
    would have to be undone; the formulas are the standard's, a few lines each.
    """
    function = function.upper()
    if function == "SIGMOID":
        values -= np.float32(center)
        values *= np.float32(-4.0 / max(width, 1e-6))
        np.exp(values, out=values)
        values += np.float32(1.0)
        return np.reciprocal(values, out=values)
    if function == "LINEAR_EXACT":
        if width <= 0.0:  # the standard asks for more; its limit is a threshold at the center
            return (values > center).astype(np.float32)
        return _linear(values, center - width / 2.0, center + width / 2.0)
    if width <= 1.0:  # LINEAR requires width >= 1; a width of 1 is a threshold
        return (values > center - 0.5).astype(np.float32)
    return _linear(values, center - 0.5 - (width - 1.0) / 2.0, center - 0.5 + (width - 1.0) / 2.0)


# -- PNG and JPEG --------------------------------------------------------------------------------------------------


def _decode_pillow(
    stream: BinaryIO, size: int, source: str, limits: DecodeLimits, wanted: Wanted | None
) -> DecodedImage:
    from PIL import Image

    fmt: Literal["png", "jpeg"] = "png" if stream.read(8) == _PNG_MAGIC else "jpeg"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(stream)  # from the start; reads the header only (PNG IHDR, JPEG SOF)
            width, height = img.size
            sample_bytes = _PILLOW_SAMPLE_BYTES.get(img.mode, 1)
            check_size(height, width, len(img.getbands()), sample_bytes, size, source, limits)
            if wanted is not None and fmt == "jpeg":  # the DCT's scaling: 1/2, 1/4 or 1/8, at least the size asked
                img.draft(img.mode, _draft_size(width, height, wanted))
            img.load()
    except (ImageRejected, MemoryError):
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours, met while opening
        raise ImageRejected(
            source, f"image exceeds the limit of {limits.max_pixels:,} pixels ({exc})", "too_large"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise ImageRejected(source, f"damaged or truncated {fmt.upper()} file ({exc})", "damaged") from exc

    mode = img.mode
    if mode in _PILLOW_SAMPLE_BYTES:
        pixels = np.asarray(img, dtype=np.float32)
        pixels *= np.float32(1.0 / 65535.0)
    else:
        target = "L" if mode in ("L", "1", "LA") else "RGB"
        pixels = np.asarray(img if mode == target else img.convert(target), dtype=np.float32)
        pixels *= np.float32(1.0 / 255.0)
    del img
    metadata = {"rows": height, "columns": width, "mode": mode, "frames": 1, "frame": 0}
    return DecodedImage(pixels=np.clip(pixels, 0.0, 1.0, out=pixels), source=source, format=fmt, metadata=metadata)


def _draft_size(width: int, height: int, wanted: Wanted) -> tuple[int, int]:
    """The (width, height) Pillow's `draft` is asked for: `wanted`'s sides on the image's, no more than it has."""
    longer, shorter = (wanted.longer, wanted.shorter) if width >= height else (wanted.shorter, wanted.longer)
    return min(longer, width), min(shorter, height)
