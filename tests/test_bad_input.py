"""Bad input gets a clear `ImageRejected` naming the file and the reason: no crash, traceback or hang."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from edge_app.errors import ImageRejected, NotAnImage
from edge_app.imaging import DecodeLimits, decode
from support.dicom import dicom_bytes, dicom_file

pytestmark = pytest.mark.unit


def _rejected(data: bytes | Path, source: str = "bad.file", **limits: object) -> str:
    with pytest.raises(ImageRejected) as info:
        decode(data, source=source, limits=DecodeLimits(**limits))  # type: ignore[arg-type]
    assert info.value.source == source
    assert str(info.value).startswith(source + ": ")
    return info.value.reason


def test_structured_report_is_not_an_image() -> None:
    assert "holds no image" in _rejected(dicom_file("test-SR.dcm"))


def test_rt_plan_is_not_an_image() -> None:
    assert _rejected(dicom_file("rtplan.dcm")) == "DICOM object holds no image (RT Plan Storage)"


def test_truncated_dicom_header() -> None:
    reason = _rejected(dicom_file("rtplan_truncated.dcm"))
    assert "truncated" in reason or "no image" in reason


def test_truncated_pixel_data() -> None:
    data = dicom_file("RG1_UNCR.dcm").read_bytes()
    reason = _rejected(data[: len(data) // 2])
    assert reason.startswith("pixel data cannot be decoded") and "less than expected" in reason


def test_truncated_jpeg2000() -> None:
    data = dicom_file("RG1_J2KR.dcm").read_bytes()
    assert _rejected(data[: len(data) - 200_000]).startswith("truncated DICOM file")


def test_non_dicom_bytes() -> None:
    assert _rejected(b"%PDF-1.7 not an image at all" * 20) == "not a DICOM (Part 10), PNG or JPEG file"


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert _rejected(empty, source="empty.dcm") == "the file is empty"


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot be read" in _rejected(tmp_path / "nope.dcm", source="nope.dcm")


def test_dicom_preamble_with_garbage() -> None:
    assert "DICOM" in _rejected(b"\0" * 128 + b"DICM" + b"\xff" * 64)


def test_absurd_dicom_dimensions_refused_before_decoding() -> None:
    """A header claiming 60000 x 60000 pixels (3.6 G) over a few bytes is refused from the header alone."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.Rows = ds.Columns = 60000
    buf = io.BytesIO()
    ds.save_as(buf)
    reason = _rejected(buf.getvalue())
    assert reason == "image of 60000x60000 pixels exceeds the limit of 25,000,000 pixels"


def test_pixel_limit_is_configurable() -> None:
    assert "exceeds the limit of 1,000,000" in _rejected(dicom_file("RG1_UNCR.dcm"), max_pixels=1_000_000)


def test_absurd_png_dimensions_refused_before_decoding() -> None:
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    data = bytearray(png.getvalue())
    # Rewrite the IHDR chunk to claim 100000 x 100000 pixels, with a valid CRC.
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", 100_000, 100_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    assert "exceeds the limit of 25,000,000 pixels" in _rejected(bytes(data))


def test_truncated_png(nih_png: Path) -> None:
    data = nih_png.read_bytes()
    assert "damaged or truncated PNG" in _rejected(data[: len(data) // 3])


def test_truncated_jpeg(nih_png: Path) -> None:
    buf = io.BytesIO()
    Image.open(nih_png).save(buf, format="JPEG")
    assert "damaged or truncated JPEG" in _rejected(buf.getvalue()[:2000])


def test_frame_out_of_range() -> None:
    assert "frame 500 asked for" in _rejected(dicom_file("color3d_jpeg_baseline.dcm"), frame=500)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_pixel_limit_is_ours(fmt: str) -> None:
    """A 100x100 image under a 9,999-pixel limit: far below Pillow's own bomb limit, so only ours refuses it."""
    buf = io.BytesIO()
    Image.new("L", (100, 100), 128).save(buf, format=fmt)
    assert _rejected(buf.getvalue(), max_pixels=9_999) == "image of 100x100 pixels exceeds the limit of 9,999 pixels"
    assert decode(buf.getvalue(), limits=DecodeLimits(max_pixels=10_000)).pixels.shape == (100, 100)


def test_memory_budget_boundary() -> None:
    """The estimate refuses above the budget and accepts at it: a 1000x1000 grey 8-bit PNG needs the file plus
    1000 * 1000 * (1 * (1 + 4) + 8) bytes."""
    buf = io.BytesIO()
    Image.new("L", (1000, 1000), 128).save(buf, format="PNG")
    need_mb = (len(buf.getvalue()) + 13_000_000) / 2**20
    assert 12 < need_mb < 13
    assert "needs about 12 MB to decode, over the limit of 12 MB" in _rejected(buf.getvalue(), max_decode_mb=12)
    assert decode(buf.getvalue(), limits=DecodeLimits(max_decode_mb=13)).pixels.shape == (1000, 1000)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_memory_budget_of_a_dicom_image(bits: int) -> None:
    """1024 x 1024 grey, uncompressed, of 1, 2 or 4 bytes a sample: a MiB each of pixel data plus a header, and
    1024 * 1024 * (1 * (bytes + 4) + 8) to decode: just over 14, 16 or 20 MB, refused at that and decoded above."""
    sample_bytes = bits // 8
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = (np.arange(1024 * 1024) % 251).astype(f"uint{bits}").tobytes()
    data = dicom_bytes(ds)
    limit = 2 * sample_bytes + 12
    assert limit < (len(data) + 1024 * 1024 * (sample_bytes + 12)) / 2**20 < limit + 0.01
    assert _rejected(data, max_decode_mb=limit) == (
        f"image of 1024x1024 pixels, 1 sample(s) of {bits} bits, needs about {limit} MB to decode, "
        f"over the limit of {limit} MB"
    )
    assert decode(data, limits=DecodeLimits(max_decode_mb=limit + 1)).pixels.shape == (1024, 1024)


@pytest.mark.parametrize("keyword", ["BitsAllocated", "SamplesPerPixel"])
def test_an_image_without_its_pixel_format(keyword: str) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    delattr(ds, keyword)
    assert _rejected(dicom_bytes(ds)).startswith(f"{keyword} absent is not 1")


def test_memory_budget_of_a_16_bit_png() -> None:
    """A 16-bit grey PNG counts two bytes a sample: 1024 * 1024 * (1 * (2 + 4) + 8) bytes = 14 MiB and the file."""
    buf = io.BytesIO()
    Image.fromarray(np.arange(1024 * 1024, dtype=np.uint16).reshape(1024, 1024)).save(buf, format="PNG")
    need_mb = (len(buf.getvalue()) + 1024 * 1024 * 14) / 2**20
    limit = int(need_mb)
    assert _rejected(buf.getvalue(), max_decode_mb=limit) == (
        f"image of 1024x1024 pixels, 1 sample(s) of 16 bits, needs about {need_mb:,.0f} MB to decode, "
        f"over the limit of {limit} MB"
    )
    assert decode(buf.getvalue(), limits=DecodeLimits(max_decode_mb=limit + 1)).pixels.shape == (1024, 1024)


@pytest.mark.parametrize(("rows", "columns"), [(0, 64), (64, 0), (None, 64), (64, None)])
def test_an_image_without_rows_or_columns(rows: int | None, columns: int | None) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns = rows, columns
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value is None:
            delattr(ds, keyword)
    assert _rejected(dicom_bytes(ds)) == "DICOM image has no Rows/Columns"


@pytest.mark.parametrize(
    ("name", "samples", "photometric"), [("US1_J2KR.dcm", 1, "MONOCHROME2"), ("RG1_J2KR.dcm", 3, "RGB")]
)
def test_a_codestream_whose_colour_disagrees_with_the_header(name: str, samples: int, photometric: str) -> None:
    """A JPEG 2000 frame of 3 components under a header that says grey, and of 1 under one that says colour."""
    ds = pydicom.dcmread(dicom_file(name))
    found = ds.SamplesPerPixel
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    assert _rejected(dicom_bytes(ds)) == (
        f"compressed frame 0 has {found} sample(s) per pixel, the header says {samples}"
    )


def test_a_number_that_is_not_one_is_quoted_shortened() -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds[0x00280008] = pydicom.DataElement(0x00280008, "LT", "seven" * 12)  # NumberOfFrames, written as text
    assert _rejected(dicom_bytes(ds)) == f"NumberOfFrames {('seven' * 8)!r} is not a number"


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    assert _rejected(tmp_path / "gone.dcm") == "cannot be read (No such file or directory)"


def test_no_frames() -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.NumberOfFrames = 0
    assert _rejected(dicom_bytes(ds)) == "NumberOfFrames 0 is not a positive number"


def test_more_frames_said_than_the_compressed_data_holds() -> None:
    ds = pydicom.dcmread(dicom_file("RG1_J2KR.dcm"))
    ds.NumberOfFrames = 2  # the middle frame asked for is the second, which is not there
    assert _rejected(dicom_bytes(ds)) == (
        "compressed frame 1 cannot be read (ValueError: There is insufficient pixel data to contain 2 frames)"
    )


def test_a_codestream_smaller_than_the_header_says() -> None:
    ds = pydicom.dcmread(dicom_file("RG1_J2KR.dcm"))
    rows, columns = ds.Rows, ds.Columns
    ds.Rows, ds.Columns = 2000, 2100
    assert rows != columns
    assert _rejected(dicom_bytes(ds)) == (
        f"compressed frame 0 holds an image of {columns}x{rows}, but the header says 2100x2000"
    )


def test_an_empty_number_of_frames_is_not_a_number() -> None:
    """Written as text and left empty (seen in converted files): pydicom cannot decode such a file either."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds[0x00280008] = pydicom.DataElement(0x00280008, "LO", "")
    assert _rejected(dicom_bytes(ds)) == "NumberOfFrames '' is not a number"


def test_a_native_decoder_panic_is_a_refusal() -> None:
    """One byte of MR_small_RLE's run-length data changed (found by fuzzing): the segment's runs overrun its plane,
    which passes the codestream checks and makes the Rust RLE decoder panic (pyo3's PanicException, a
    BaseException): the file is refused, the process goes on."""
    data = bytearray(dicom_file("MR_small_RLE.dcm").read_bytes())
    assert data[4589] == 63
    data[4589] = 66
    assert _rejected(bytes(data)) == (
        "the pixel decoder failed (PanicException: index out of bounds: the len is 8192 but the index is 8192)"
    )


def test_a_file_cut_inside_its_meta_header() -> None:
    """pydicom raises (struct.error) reading a file cut 21 bytes after DICM: refused as damaged, with its words."""
    data = dicom_file("CT_small.dcm").read_bytes()[:153]
    assert _rejected(data) == "damaged or truncated DICOM file (error: unpack requires a buffer of 4 bytes)"


def test_the_memory_budget_is_inclusive() -> None:
    """A file padded so that it and its decoding need exactly 16 MiB decodes under a 16 MB budget; two bytes
    more are refused."""

    def padded(extra: int) -> bytes:
        ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
        ds.Rows = ds.Columns = 1000
        ds.PixelData = np.zeros(1000 * 1000, np.uint16).tobytes()
        ds.add_new(0x00090010, "LO", "EDGE TEST")
        ds.add_new(0x00091000, "OB", b"")
        out = io.BytesIO()
        ds.save_as(out)
        ds[0x00091000].value = bytes(16 * 2**20 - 1000 * 1000 * 14 - len(out.getvalue()) + extra)
        out = io.BytesIO()
        ds.save_as(out)
        assert len(out.getvalue()) + 1000 * 1000 * 14 == 16 * 2**20 + extra
        return out.getvalue()

    assert decode(padded(0), limits=DecodeLimits(max_decode_mb=16)).pixels.shape == (1000, 1000)
    assert "over the limit of 16 MB" in _rejected(padded(2), max_decode_mb=16)


def test_a_file_of_no_sop_class_and_no_image() -> None:
    assert _rejected(b"\0" * 128 + b"DICM") == "DICOM object holds no image (unknown SOP class)"


def test_pixel_data_of_more_frames_than_the_header_says() -> None:
    """SC_rgb_2frame's two 100 x 100 RGB frames under a header of one frame of one row: pydicom reads 200 rows."""
    ds = pydicom.dcmread(dicom_file("SC_rgb_2frame.dcm"))
    ds.NumberOfFrames, ds.Rows = 1, 1
    assert _rejected(dicom_bytes(ds)) == (
        "pixel data decodes to shape (200, 1, 100, 3); the header declares (1, 100, 3) per frame"
    )


@pytest.mark.parametrize("data", [b"A" * 200, b"GIF89a"], ids=["text", "short"])
def test_neither_dicom_png_nor_jpeg(data: bytes) -> None:
    """Bytes 128-132 that sort before DICM, or a file shorter than that: not read as DICOM at all."""
    assert _rejected(data) == "not a DICOM (Part 10), PNG or JPEG file"


@pytest.mark.parametrize("frame", [120, -1])
def test_a_frame_just_out_of_range(frame: int) -> None:
    assert _rejected(dicom_file("color3d_jpeg_baseline.dcm"), frame=frame) == (
        f"frame {frame} asked for, but the image has 120 frame(s)"
    )


def test_an_rle_frame_of_fewer_pixels_than_the_header_says() -> None:
    ds = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))
    ds.Rows = 128
    assert _rejected(dicom_bytes(ds)) == "compressed frame 0 holds 4,096 pixels, but the header says 64x128"


def _deflated(ds: pydicom.Dataset, zeros_mb: int = 0) -> bytes:
    """`ds` as a Deflated Explicit VR Little Endian file; with `zeros_mb`, its pixel data replaced by that many MB
    of zeros, deflated a chunk at a time (a file of a few hundred KB that the test never holds inflated)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if not zeros_mb:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return dicom_bytes(ds)
    del ds.PixelData
    ds.Rows = ds.Columns = int((zeros_mb * 2**20 / 2) ** 0.5)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel, ds.NumberOfFrames = 16, 16, 15, 1, 1
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = ds.Rows * ds.Columns * 2
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(out, ds.file_meta)
    out.write(deflater.compress(body.getvalue()))
    for _ in range(length // 2**20):
        out.write(deflater.compress(bytes(2**20)))
    out.write(deflater.compress(bytes(length % 2**20)) + deflater.flush())
    return out.getvalue()


def test_a_deflated_data_set_inflating_past_the_budget_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """A Deflated file of about 100 KB whose data set inflates to 64 MB: refused by the header's reader and by the
    decoder at a 16 MB budget, with the reason, neither holding more than a few MB (pydicom alone inflates it
    whole)."""
    import tracemalloc

    from edge_app.imaging.header import read_header

    data = _deflated(pydicom.dcmread(dicom_file("RG1_UNCR.dcm")), zeros_mb=64)
    assert len(data) < 200_000
    (tmp_path / "bomb.dcm").write_bytes(data)
    tracemalloc.start()
    try:
        reason = _rejected(data, max_decode_mb=16, max_pixels=10**9)
        assert reason == "its Deflated data set inflates past 16 MB (imaging.max_decode_mb)"
        with pytest.raises(ImageRejected, match=r"inflates past 16 MB"):
            read_header(tmp_path / "bomb.dcm", "bomb.dcm", max_inflated_mb=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB held"
    assert read_header(tmp_path / "bomb.dcm", "bomb.dcm", max_inflated_mb=65).holds_image


def test_a_deflated_image_reads_as_its_uncompressed_self_and_counts_inflated_against_the_budget(
    tmp_path: Path,
) -> None:
    """Deflated RG1_UNCR: its header (no false 'truncated') and its pixels are the uncompressed file's; a 1024 x
    1024 16-bit image deflated to a few KB still needs its inflated 2 MB in the decoding budget."""
    from edge_app.imaging.header import read_header

    plain = dicom_file("RG1_UNCR.dcm")
    (tmp_path / "deflated.dcm").write_bytes(_deflated(pydicom.dcmread(plain)))
    assert read_header(tmp_path / "deflated.dcm", "d.dcm") == read_header(plain, "d.dcm")
    assert np.array_equal(decode(tmp_path / "deflated.dcm").pixels, decode(plain).pixels)
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(1024 * 1024) % 251).astype("uint16").tobytes()
    deflated = _deflated(ds)
    assert len(deflated) < 2**20
    assert "needs about 16 MB to decode, over the limit of 16 MB" in _rejected(deflated, max_decode_mb=16)


def test_objects_that_hold_no_image_are_read_for_their_identity(tmp_path: Path) -> None:
    """An SR's header: its own UIDs, `holds_image` False (ingest keeps it with its study); an image class without
    pixels, or an object of no class, is refused as no image."""
    from edge_app.imaging.header import read_header

    sr = dicom_file("test-SR.dcm")
    header = read_header(sr, "sr.dcm")
    ds = pydicom.dcmread(sr)
    assert (header.study_uid, header.sop_instance_uid, header.holds_image) == (
        ds.StudyInstanceUID,
        ds.SOPInstanceUID,
        False,
    )
    assert header.sop_class == "Comprehensive SR Storage"
    assert header.from_dict(json.loads(json.dumps(header.as_dict()))) == header, "as the store keeps it"
    cr = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    del cr.PixelData
    for name, data in (("cr.dcm", dicom_bytes(cr)), ("none.dcm", b"\0" * 128 + b"DICM")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            NotAnImage, match=r"holds no image \((Computed Radiography Image Storage|unknown SOP class)\)"
        ):
            read_header(tmp_path / name, name)
