"""Every hostile image found so far, rebuilt from real files: the regression set of the hostile-images issue.

    python tests/hostile.py OUT_DIR [--large]     # write them as files (--large: the full-size bombs, slow)

Each entry is a name, a builder returning the file's bytes, and a fragment of the reason it must be refused with.
The DICOM bases are pydicom-data's and pydicom's own test files; the PNG bases are made here.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from support.dicom import dicom_file


class Hostile(NamedTuple):
    name: str
    build: Callable[[], bytes]
    reason: str  # a fragment of the reason the file must be refused with


def _save(ds: pydicom.Dataset) -> bytes:
    """The data set as a file, labelled a chest radiograph so that the service routes it to the chest model's
    decoder (the regression is in decoding) whatever the base file was, under a SOP Instance UID of its own (the
    same for the same file) so that no two hostile files are one image to the service."""
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.SOPInstanceUID = generate_uid(
        entropy_srcs=[
            str(ds.SOPInstanceUID),
            str(ds.Rows),
            str(ds.file_meta.TransferSyntaxUID),
            str(ds.get("NumberOfFrames", "")),
        ]
    )
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def unknown_vr() -> bytes:
    """Rows (0028,0010) written with the VR 'QQ', which no standard defines (pydicom: NotImplementedError)."""
    data = bytearray(dicom_file("RG1_UNCR.dcm").read_bytes())
    at = data.index(b"\x28\x00\x10\x00US")
    data[at + 4 : at + 6] = b"QQ"
    return bytes(data)


def two_frames_said_one() -> bytes:
    """An RGB secondary capture holding 2 frames whose NumberOfFrames says 1 (a 4-D array reached resizing)."""
    ds = pydicom.dcmread(dicom_file("SC_rgb_2frame.dcm"))
    ds.NumberOfFrames = 1
    return _save(ds)


def frames_not_a_number() -> bytes:
    """NumberOfFrames = 'abcdefg' (ValueError from int())."""
    ds = pydicom.dcmread(dicom_file("SC_rgb_2frame.dcm"))
    ds[0x00280008] = DataElement(0x00280008, "LO", "abcdefg")
    return _save(ds)


def rle_rows_disagree() -> bytes:
    """An RLE image whose Rows disagree with its segments: the Rust RLE plugin panics (a BaseException)."""
    ds = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))
    ds.Rows = 7
    return _save(ds)


def _dicom_over(codestream: bytes, transfer_syntax: str, rows: int, cols: int) -> bytes:
    """A CR image whose header says rows x cols, over a codestream of another size."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _save(ds)


def j2k_bomb(side: int = 4096) -> bytes:
    """A JPEG 2000 DICOM whose header says 512x512 and whose codestream holds side x side (16384^2: 1.4 GB)."""
    from openjpeg.utils import encode_array

    return _dicom_over(encode_array(np.zeros((side, side), np.uint8), use_mct=False), JPEG2000Lossless, 512, 512)


def jpeg_bomb(side: int = 8000) -> bytes:
    """A baseline JPEG DICOM whose header says 512x512 and whose codestream holds side x side (20000^2: 2.1 GB)."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="JPEG", quality=10)
    return _dicom_over(buf.getvalue(), JPEGBaseline8Bit, 512, 512)


def j2k_rgb_7000() -> bytes:
    """A 1.6 KB JPEG 2000 DICOM, honestly 7000^2 RGB (2.3 GB to decode): over the pixel limit."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.Rows = ds.Columns = 7000
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 1600])  # the header refuses it before the codestream
    ds["PixelData"].VR = "OB"
    return _save(ds)


def png_rgb(side: int = 7000, mode: str = "RGB") -> bytes:
    """A flat colour PNG: 7000^2 RGB is 143 KB on disk and took 1.4 GB."""
    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def png_rgba16(side: int = 7000) -> bytes:
    """A 16-bit RGBA PNG (1.8 GB), written by hand: Pillow cannot write 16-bit colour."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = zlib.compress(b"\0" * ((side * 8 + 1) * side), 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def png_over_budget() -> bytes:
    """Under the pixel limit but not the memory budget: 4000^2 RGB needs about 351 MB."""
    return png_rgb(4000)


HOSTILE = [
    Hostile("unknown_vr.dcm", unknown_vr, "damaged DICOM header (NotImplementedError: Unknown Value Representation"),
    Hostile("two_frames_said_one.dcm", two_frames_said_one, "pixel data decodes to shape (2, 100, 100, 3)"),
    Hostile("frames_not_a_number.dcm", frames_not_a_number, "NumberOfFrames 'abcdefg' is not a number"),
    Hostile("rle_rows_disagree.dcm", rle_rows_disagree, "compressed frame 0 holds 4,096 pixels, but the header says"),
    Hostile("j2k_bomb.dcm", j2k_bomb, "compressed frame 0 holds an image of 4096x4096, but the header says 512x512"),
    Hostile("jpeg_bomb.dcm", jpeg_bomb, "compressed frame 0 holds an image of 8000x8000, but the header says 512x512"),
    Hostile("j2k_rgb_7000.dcm", j2k_rgb_7000, "image of 7000x7000 pixels exceeds the limit of 25,000,000 pixels"),
    Hostile("rgb_7000.png", png_rgb, "image of 7000x7000 pixels exceeds the limit"),
    Hostile("rgba16_7000.png", png_rgba16, "image of 7000x7000 pixels exceeds the limit"),
    Hostile("rgb_4000.png", png_over_budget, "needs about 351 MB to decode, over the limit of 320 MB"),
]
LARGE = [
    Hostile("j2k_bomb_16384.dcm", lambda: j2k_bomb(16384), "holds an image of 16384x16384"),
    Hostile("jpeg_bomb_20000.dcm", lambda: jpeg_bomb(20000), "holds an image of 20000x20000"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--large", action="store_true", help="also the full-size bombs of the issue (slow)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for item in HOSTILE + (LARGE if args.large else []):
        (args.out / item.name).write_bytes(item.build())
        print(args.out / item.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
