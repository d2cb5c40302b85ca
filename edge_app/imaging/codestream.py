"""The real size of compressed DICOM pixel data, read from the codestream itself before anything is decoded.

A DICOM header can say 512x512 over a JPEG 2000 codestream of 30000x30000; the decoder believes the codestream.
Each encapsulated frame is asked for its own dimensions with the decoder plugins' header readers (libjpeg for JPEG
and JPEG-LS, openjpeg for JPEG 2000) and, for RLE, from its segment table and the length of its first segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

# Transfer syntax UIDs (PS3.6 Annex A).
_JPEG = {
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
_J2K = {
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
_RLE = "1.2.840.10008.1.2.5"


@dataclass(frozen=True)
class FrameSize:
    """What a codestream says of itself: its pixel count and samples, and its rows and columns where it has them."""

    pixels: int
    samples: int
    shape: tuple[int, int] | None = None


def frame_size(transfer_syntax: str, frame: bytes, samples: int, bits_allocated: int) -> FrameSize | None:
    """The size one encapsulated frame decodes to, or None for a transfer syntax not read here.

    Raises `ValueError` where the codestream's own header cannot be read.
    """
    if transfer_syntax in _JPEG:
        from libjpeg.utils import get_parameters as jpeg_parameters

        jpg: dict[str, Any] = jpeg_parameters(frame)
        return _sized(int(jpg["rows"]), int(jpg["columns"]), int(jpg["nr_components"]))
    if transfer_syntax in _J2K:
        from openjpeg.utils import get_parameters as j2k_parameters

        j2k: dict[str, Any] = j2k_parameters(frame)
        return _sized(int(j2k["rows"]), int(j2k["columns"]), int(j2k["samples_per_pixel"]))
    if transfer_syntax == _RLE:
        return _rle_size(frame, samples, bits_allocated)
    return None


def _sized(rows: int, columns: int, samples: int) -> FrameSize:
    return FrameSize(rows * columns, samples, (rows, columns))


def _rle_size(frame: bytes, samples: int, bits_allocated: int) -> FrameSize:
    """PS3.5 Annex G: a 64-byte header of segment count and offsets, one segment per byte plane per sample.

    The segment count must match the header's samples and bits; the first segment, unpacked (it is one byte
    plane, a few MB at most), gives the pixel count; RLE does not record rows and columns apart.
    """
    from rle.rle import decode_segment

    if len(frame) < 64:
        raise ValueError("RLE frame shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16I", frame[:64])
    expected = samples * ((bits_allocated + 7) // 8)  # byte planes: 1 for 1 or 8 bits, 2 for 16, 4 for 32
    if count != expected:
        raise ValueError(
            f"RLE frame has {count} segments; {samples} sample(s) of {bits_allocated} bits need {expected}"
        )
    ends = [*offsets[1:count], len(frame)]
    if any(not 64 <= start < end <= len(frame) for start, end in zip(offsets[:count], ends, strict=True)):
        raise ValueError("RLE segment offsets point outside the frame")
    pixels = len(decode_segment(frame[offsets[0] : ends[0]]))
    return FrameSize(pixels, samples)
