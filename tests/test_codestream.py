"""A compressed frame's own size, read before decoding: RLE segment tables built here byte by byte, and the
transfer syntaxes read or left alone."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from edge_app.imaging.codestream import FrameSize, frame_size

pytestmark = pytest.mark.unit

RLE = "1.2.840.10008.1.2.5"


def _rle(segments: list[bytes], count: int | None = None, offsets: list[int] | None = None) -> bytes:
    """An RLE frame: the 64-byte header (segment count, 15 offsets), then the segments."""
    if offsets is None:
        offsets, at = [], 64
        for segment in segments:
            offsets.append(at)
            at += len(segment)
    header = struct.pack("<16I", len(segments) if count is None else count, *offsets, *[0] * (15 - len(offsets)))
    return header + b"".join(segments)


def _packbits(data: bytes) -> bytes:
    """PackBits literal runs of at most 128 bytes (the RLE segment encoding, PS3.5 G.3.1)."""
    out = bytearray()
    for i in range(0, len(data), 128):
        chunk = data[i : i + 128]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out)


def test_an_rle_frame_says_its_pixel_count() -> None:
    frame = _rle([_packbits(bytes(range(200)) * 3)])
    assert frame_size(RLE, frame, samples=1, bits_allocated=8) == FrameSize(600, 1)


def test_sixteen_bit_rle_has_two_segments_a_sample() -> None:
    plane = _packbits(bytes(100))
    assert frame_size(RLE, _rle([plane, plane]), samples=1, bits_allocated=16) == FrameSize(100, 1)
    with pytest.raises(ValueError, match=r"RLE frame has 1 segments; 1 sample\(s\) of 16 bits need 2"):
        frame_size(RLE, _rle([plane]), samples=1, bits_allocated=16)
    with pytest.raises(ValueError, match=r"RLE frame has 3 segments; 1 sample\(s\) of 16 bits need 2"):
        frame_size(RLE, _rle([plane, plane, plane]), samples=1, bits_allocated=16)


def test_an_rle_header_cut_short_or_pointing_outside_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than its 64-byte header"):
        frame_size(RLE, b"\x01" + b"\x00" * 62, samples=1, bits_allocated=8)
    with pytest.raises(ValueError, match="offsets point outside the frame"):
        frame_size(RLE, _rle([b""]), samples=1, bits_allocated=8)  # exactly 64 bytes: an empty segment
    plane = _packbits(bytes(10))
    with pytest.raises(ValueError, match="offsets point outside the frame"):
        frame_size(RLE, _rle([plane], offsets=[60]), samples=1, bits_allocated=8)
    with pytest.raises(ValueError, match="offsets point outside the frame"):
        frame_size(RLE, _rle([plane, plane], offsets=[64, 64]), samples=1, bits_allocated=16)
    with pytest.raises(ValueError, match="offsets point outside the frame"):
        frame_size(RLE, _rle([plane], offsets=[64 + 4096]), samples=1, bits_allocated=8)
    three = _rle([plane] * 3)
    with pytest.raises(ValueError, match="offsets point outside the frame"):  # a middle segment beyond the end
        frame_size(
            RLE, _rle([plane] * 3, offsets=[64, 64 + len(plane), len(three) + 1000]), samples=3, bits_allocated=8
        )


@pytest.mark.parametrize(("bits", "planes"), [(1, 1), (8, 1), (16, 2), (32, 4)])
def test_rle_has_one_segment_per_byte_plane(bits: int, planes: int) -> None:
    plane = _packbits(bytes(40))
    assert frame_size(RLE, _rle([plane] * planes), samples=1, bits_allocated=bits) == FrameSize(40, 1)
    assert frame_size(RLE, _rle([plane] * planes * 3), samples=3, bits_allocated=bits) == FrameSize(40, 3)
    with pytest.raises(ValueError, match=f"need {planes}$"):
        frame_size(RLE, _rle([plane] * (planes + 1)), samples=1, bits_allocated=bits)


@pytest.mark.parametrize(
    "syntax",
    ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.6.1", "9.9"],
)
def test_other_transfer_syntaxes_are_not_read(syntax: str) -> None:
    assert frame_size(syntax, b"\x00" * 10, samples=1, bits_allocated=8) is None


def test_a_frame_size_is_a_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FrameSize(1, 1).pixels = 2  # type: ignore[misc]
