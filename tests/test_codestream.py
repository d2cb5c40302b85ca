"""A compressed frame's own size, read before decoding: RLE segment tables built here byte by byte, and the
transfer syntaxes read or left alone; a JPEG 2000 codestream's decomposition levels, size and sign from its own
headers (SIZ, COD, COC, every tile-part's), built here byte by byte too."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from edge_app.imaging.codestream import FrameSize, J2kLevels, frame_size, j2k_levels

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


# -- JPEG 2000 codestream headers (ISO/IEC 15444-1 A.5, A.6), built here byte by byte --------------------------


def _siz(
    rows: int = 64, columns: int = 48, origin: tuple[int, int] = (0, 0), components: list[bytes] | None = None
) -> bytes:
    """SIZ: the image's and tiles' sizes on the reference grid, then each component's Ssiz, XRsiz, YRsiz."""
    comps = components if components is not None else [bytes([14, 1, 1])]
    yo, xo = origin
    body = struct.pack(">HIIIIIIIIH", 0, columns + xo, rows + yo, xo, yo, columns, rows, 0, 0, len(comps))
    return b"\xff\x51" + struct.pack(">H", 2 + len(body) + 3 * len(comps)) + body + b"".join(comps)


def _cod(levels: int) -> bytes:
    """COD: Scod, progression, layers, MCT, then SPcod's decomposition levels and code-block fields."""
    return b"\xff\x52" + struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, levels, 4, 4, 0, 1)


def _coc(levels: int, component: int = 0, wide: bool = False) -> bytes:
    """COC for one component (its index on two bytes where the image has 257 or more)."""
    index = struct.pack(">H" if wide else ">B", component)
    body = index + bytes([0, levels, 4, 4, 0, 1])
    return b"\xff\x53" + struct.pack(">H", 2 + len(body)) + body


def _tile_part(header: bytes = b"", data: bytes = b"\x00" * 8, psot: int | None = None, lsot: int = 10) -> bytes:
    """SOT (Lsot, Isot, Psot: the tile-part's length from SOT to its data's end), its header, SOD, its data."""
    length = 12 + len(header) + 2 + len(data)
    return (
        b"\xff\x90"
        + struct.pack(">HHIBB", lsot, 0, length if psot is None else psot, 0, 1)
        + header
        + b"\xff\x93"
        + data
    )


def _j2k(main: bytes, *tile_parts: bytes, siz: bytes | None = None, eoc: bool = True) -> bytes:
    """SOC, SIZ, the main header's markers, the tile-parts, EOC."""
    end = b"\xff\xd9" if eoc else b""
    return b"\xff\x4f" + (siz or _siz()) + main + b"".join(tile_parts or (_tile_part(),)) + end


def test_a_codestream_says_its_size_offset_precision_and_sign() -> None:
    siz = _siz(rows=30, columns=20, origin=(7, 5), components=[bytes([0x80 | 11, 1, 1])])
    levels = j2k_levels(_j2k(_cod(3), siz=siz))
    assert levels == J2kLevels(
        rows=30, columns=20, origin=(7, 5), subsampled=False, precision=12, signed=True, levels=3
    )
    unsigned = j2k_levels(_j2k(_cod(3), siz=_siz(components=[bytes([11, 1, 1])])))
    assert (unsigned.precision, unsigned.signed) == (12, False)


@pytest.mark.parametrize(("x", "y"), [(2, 1), (1, 2)])
def test_a_component_on_a_coarser_grid_is_subsampled(x: int, y: int) -> None:
    siz = _siz(components=[bytes([7, 1, 1]), bytes([7, x, y]), bytes([7, 1, 1])])
    assert j2k_levels(_j2k(_cod(5), siz=siz)).subsampled
    on_one_grid = _siz(components=[bytes([7, 1, 1])] * 3)
    assert not j2k_levels(_j2k(_cod(5), siz=on_one_grid)).subsampled, "each component's fields read where they are"


def test_the_fewest_levels_of_every_tile_part_bound_the_codestream() -> None:
    """Levels set in the main header, overridden per component (COC) and per tile-part: the fewest of all."""
    parts = [_tile_part(_cod(4)), _tile_part(), _tile_part(_coc(2)), _tile_part(_cod(5))]
    assert j2k_levels(_j2k(_cod(5), *parts)).levels == 2
    assert j2k_levels(_j2k(_cod(5), *parts[:2])).levels == 4


def test_a_coc_of_an_image_of_257_components_has_a_two_byte_index() -> None:
    siz = _siz(components=[bytes([7, 1, 1])] * 257)
    assert j2k_levels(_j2k(_cod(5) + _coc(1, 256, wide=True), siz=siz)).levels == 1
    assert j2k_levels(_j2k(_cod(5) + _coc(1, 3), siz=_siz(components=[bytes([7, 1, 1])] * 256))).levels == 1


def test_a_last_tile_part_running_to_the_end_or_past_it_ends_the_reading() -> None:
    """Psot 0 (the last tile-part, to the codestream's end) and a Psot past the end stop at that tile-part; what a
    later one would say is not read."""
    last = _tile_part(_cod(3), psot=0)
    assert j2k_levels(_j2k(_cod(5), _tile_part(), last)).levels == 3
    past = _tile_part(_cod(4), psot=10_000)
    assert j2k_levels(_j2k(_cod(5), past, _tile_part(_cod(1)))).levels == 4
    exact = _tile_part(_cod(4))  # ends two bytes before the end: the EOC marker follows
    assert j2k_levels(_j2k(_cod(5), exact)).levels == 4
    assert j2k_levels(_j2k(_cod(5), exact, eoc=False)).levels == 4, "a codestream cut before its EOC"
    with pytest.raises(struct.error):  # two bytes that are no EOC after the last tile-part: no header to read there
        j2k_levels(_j2k(_cod(5), exact, eoc=False) + b"\x00\x00")


def test_a_tile_part_s_length_pointing_short_of_the_next_is_refused() -> None:
    first = _tile_part(psot=len(_tile_part()) - 1)
    with pytest.raises(ValueError, match=r"^no tile-part header at byte \d+$"):
        j2k_levels(_j2k(_cod(5), first, _tile_part()))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_j2k(_cod(5), _tile_part(lsot=11)), r"^no tile-part header at byte 59$"),
        (_j2k(_cod(5), _tile_part(lsot=9)), r"^no tile-part header at byte 59$"),
        (_j2k(_cod(5), b"\xff\x93" + _tile_part()[2:]), r"^no tile-part header at byte 59$"),
        (_j2k(b"", _tile_part()), r"^no COD marker$"),
        (_j2k(b"\x00\x52" + _cod(5)[2:]), r"^no marker segment at byte 45$"),
        (_j2k(b"\xff\x64\x00\x01"), r"^no marker segment at byte 45$"),
        (_j2k(b"\xff\x00\x00\x04\x00\x00" + _cod(5)), r"^no marker segment at byte 45$"),
        (_j2k(_cod(5), siz=_siz(components=[])), r"^SIZ marker of 38 bytes for 0 components$"),
    ],
    ids=["lsot-over", "lsot-under", "sod-for-sot", "no-cod", "not-a-marker", "length-under-2", "ff00", "no-components"],
)
def test_a_damaged_codestream_header_is_refused_saying_where(frame: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        j2k_levels(frame)
