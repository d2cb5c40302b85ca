"""Real DICOM files by name or kind, and DICOM files made from them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from support.data import dicom_dirs


def cr_and_us_files() -> list[Path]:
    """Every CR and US image (with pixel data and a SOP Instance UID) among the real DICOM files."""
    import pydicom

    found = []
    for folder in dicom_dirs():
        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if ds.get("Modality") in ("CR", "US") and ds.get("SOPInstanceUID") and "PixelData" in pydicom.dcmread(path):
                found.append(path)
    return found


def dicom_file(name: str) -> Path:
    """A real DICOM file by name, found without pydicom's network download; skips if not installed."""
    for folder in dicom_dirs():
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"DICOM test file {name} not installed (pip install pydicom-data)")


def dicom_bytes(ds: Any) -> bytes:
    """A data set, as edited by a test, written as a DICOM file's bytes."""
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def noisy_j2k(side: int, whole: bool = False) -> bytes:
    """A side x side 12-bit JPEG 2000 CR of noise: seconds to decode at 2500 and more, a slow model's stand-in.
    Its codestream has openjpeg's 5 resolution levels, so the box decodes a level that holds what its uses need
    (a half, a quarter: a large one may be the faster); `whole`: one level only (encoded by imagecodecs), decoded
    whole, its time growing with its side."""
    import imagecodecs
    import numpy as np
    import pydicom
    from openjpeg.utils import encode_array
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    pixels = np.random.default_rng(0).integers(0, 4096, (side, side)).astype(np.uint16)
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if whole:
        codec = imagecodecs.JPEG2K.CODEC.J2K
        frame = imagecodecs.jpeg2k_encode(
            pixels, 0, codecformat=codec, resolutions=1, reversible=True, bitspersample=12
        )
    else:
        frame = encode_array(pixels, use_mct=False)
    ds.PixelData = encapsulate([frame])
    return dicom_bytes(ds)


def htj2k_cr(lossless: bool = True) -> Any:
    """pydicom-data's chest CR (RG1_UNCR, 1955x1841, 15 bits) re-encoded as HTJ2K by another encoder than the
    ones the box decodes with (OpenJPH, through imagecodecs), new UIDs: the data set, its transfer syntax HTJ2K
    Lossless Only or HTJ2K."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2K, HTJ2KLossless, generate_uid

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    codestream = imagecodecs.htj2k_encode(ds.pixel_array, reversible=lossless, level=None if lossless else 0.002)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless if lossless else HTJ2K
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # encapsulated: as pynetdicom sends it too
    if not lossless:
        ds.LossyImageCompression = "01"
    return ds
