"""The real size of compressed DICOM pixel data, read from the codestream itself before anything is decoded.

A DICOM header can say 512x512 over a JPEG 2000 codestream of 30000x30000; the decoder believes the codestream.
Each encapsulated frame is asked for its own dimensions with the decoder plugins' header readers (libjpeg for JPEG
and JPEG-LS, openjpeg for JPEG 2000) and, for RLE, from its segment table and the length of its first segment.
A JPEG 2000 codestream's resolution levels (`j2k_levels`) say how far it can be decoded at a reduced resolution.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

# Transfer syntax UIDs (PS3.6 Annex A).
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"  # 8 bit
_JPEG = {
    JPEG_BASELINE,
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
J2K_SYNTAXES = {
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
    if transfer_syntax in J2K_SYNTAXES:
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


@dataclass(frozen=True)
class J2kLevels:
    """What a raw JPEG 2000 / HTJ2K codestream's headers say of its reduced resolutions (ISO/IEC 15444-1 A.5, A.6)."""

    rows: int
    columns: int
    origin: tuple[int, int]  # the image's offset on the reference grid (YOsiz, XOsiz)
    subsampled: bool  # a component sampled on a coarser grid than the image (XRsiz or YRsiz above 1)
    precision: int  # bits of the first component
    signed: bool
    levels: int  # the fewest decomposition levels of any component in any tile: the deepest reduction allowed


_COD, _COC, _SOT, _SOD = 0xFF52, 0xFF53, 0xFF90, 0xFF93


def j2k_levels(frame: bytes) -> J2kLevels:
    """Read a raw codestream's SIZ, and its COD and COC markers in the main header and every tile-part header.

    pylibjpeg-openjpeg's `get_parameters` gives neither the decomposition levels nor the offsets; the markers are
    read here, a few fixed fields each. Raises `ValueError` for anything else (a JP2 file, a header cut short).
    """
    if frame[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a raw JPEG 2000 codestream (SOC then SIZ)")
    lsiz, _, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", frame, 4)
    (csiz,) = struct.unpack_from(">H", frame, 40)
    if csiz < 1 or lsiz != 38 + 3 * csiz:
        raise ValueError(f"SIZ marker of {lsiz} bytes for {csiz} components")
    components = [struct.unpack_from(">BBB", frame, 42 + 3 * c) for c in range(csiz)]
    found, at = _coding_levels(frame, 4 + lsiz, csiz)  # the main header, up to the first tile-part
    while True:
        marker, lsot, _, psot = struct.unpack_from(">HHHI", frame, at)
        if marker != _SOT or lsot != 10:
            raise ValueError(f"no tile-part header at byte {at}")
        found += _coding_levels(frame, at + 12, csiz)[0]
        if psot == 0 or at + psot + 2 > len(frame) or frame[at + psot : at + psot + 2] == b"\xff\xd9":
            break
        at += psot
    if not found:
        raise ValueError("no COD marker")
    ssiz = components[0][0]
    return J2kLevels(
        rows=ysiz - yosiz,
        columns=xsiz - xosiz,
        origin=(yosiz, xosiz),
        subsampled=any(x != 1 or y != 1 for _, x, y in components),
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=min(found),
    )


def _coding_levels(frame: bytes, at: int, components: int) -> tuple[list[int], int]:
    """The decomposition levels of the COD and COC markers from `at` to the header's end (SOT or SOD), and where
    it ends."""
    found: list[int] = []
    while True:
        marker, length = struct.unpack_from(">HH", frame, at)
        if marker in (_SOT, _SOD):
            return found, at
        if marker <= 0xFF00 or length < 2:  # 0xFF00 is no marker (15444-1 A.1)
            raise ValueError(f"no marker segment at byte {at}")
        if marker == _COD:
            found.append(frame[at + 9])  # Lcod, Scod, SGcod (4 bytes), then SPcod's levels
        elif marker == _COC:
            found.append(frame[at + 5 + (1 if components < 257 else 2)])  # Lcoc, Ccoc, Scoc, SPcoc's levels
        at += 2 + length
