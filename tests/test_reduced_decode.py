"""Decoding no more pixels than are used: the reduction read from a real codestream's own header, JPEG 2000 values
at a reduced level equal to pydicom's, a JPEG's DCT scaling, and the model's decisions unchanged."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import get_frame

from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.findings import probabilities
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.imaging import DecodeLimits, decode, preprocess
from edge_app.imaging.codestream import j2k_levels
from edge_app.imaging.decode import Wanted, j2k_values, reduction
from edge_app.imaging.prepare import PREVIEW_LEAST_SIDE, prepare, wanted
from edge_app.runtime.onnx import OnnxRuntimeRunner
from support.dicom import dicom_bytes, dicom_file, htj2k_cr

pytestmark = pytest.mark.unit

# Every JPEG 2000 file of pydicom and pydicom-data that pydicom decodes and that is a raw codestream (not JP2).
J2K_FILES = [
    *("RG1_J2KR", "RG1_J2KI", "RG3_J2KR", "RG3_J2KI", "US1_J2KR", "US1_J2KI", "examples_jpeg2k", "MR2_J2KR"),
    *("MR2_J2KI", "693_J2KR", "693_J2KI", "J2K_pixelrep_mismatch", "JPEG2000", "MR_small_jp2klossless"),
    *("emri_small_jpeg_2k_lossless", "explicit_VR-UN", "SC_rgb_gdcm_KY"),
]


def _frame(name: str) -> bytes:
    ds = pydicom.dcmread(dicom_file(name))
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def test_the_chest_cr_codestream_says_its_levels_size_and_sign() -> None:
    levels = j2k_levels(_frame("RG1_J2KR.dcm"))
    assert (levels.rows, levels.columns, levels.origin, levels.subsampled) == (1955, 1841, (0, 0), False)
    assert (levels.precision, levels.signed, levels.levels) == (15, False, 5)
    ct = j2k_levels(_frame("693_J2KR.dcm"))
    assert (ct.precision, ct.signed) == (14, True)


def _with_levels(frame: bytes, main: int, tile: int | None = None, coc: int | None = None) -> bytes:
    """The codestream with its main COD's levels set to `main`, a COC of `coc` levels added to its main header, and
    a COD of `tile` levels added to its tile-part header (the tile-part's length grown to match)."""
    out = bytearray(frame)
    cod = out.index(b"\xff\x52")
    out[cod + 9] = main
    if coc is not None:
        out[cod:cod] = b"\xff\x53\x00\x09\x00\x00" + bytes([coc]) + b"\x04\x04\x00\x01"
    if tile is not None:
        sot = out.index(b"\xff\x90")
        body = bytes(out[cod : cod + 14])
        out[sot + 12 : sot + 12] = body[:9] + bytes([tile]) + body[10:]
        (psot,) = struct.unpack_from(">I", out, sot + 6)
        struct.pack_into(">I", out, sot + 6, psot + len(body))
    return bytes(out)


@pytest.mark.parametrize(
    ("main", "tile", "coc", "levels"), [(5, None, None, 5), (2, None, None, 2), (5, 3, None, 3), (5, None, 1, 1)]
)
def test_the_fewest_levels_of_the_main_and_tile_part_headers_bound_the_reduction(
    main: int, tile: int | None, coc: int | None, levels: int
) -> None:
    frame = _with_levels(_frame("RG3_J2KR.dcm"), main, tile, coc)
    assert j2k_levels(frame).levels == levels
    assert reduction(1760, 1760, levels, Wanted(1, 1)) == levels


def test_a_jp2_file_or_a_header_cut_short_is_no_codestream_to_reduce() -> None:
    frame = _frame("RG1_J2KR.dcm")
    with pytest.raises(ValueError, match="not a raw JPEG 2000 codestream"):
        j2k_levels(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + frame)
    with pytest.raises(ValueError, match="SIZ marker of"):
        j2k_levels(frame[:4] + b"\x00\x10" + frame[6:])
    with pytest.raises(struct.error):
        j2k_levels(frame[:60])


@pytest.mark.parametrize(
    ("rows", "columns", "want", "r"),
    [
        (1955, 1841, Wanted(PREVIEW_LEAST_SIDE, 64), 1),  # 978x921: the chest CR at half
        (1955, 1841, Wanted(1024, 64), 0),  # 978 is under 1024
        (1955, 1841, Wanted(300, 64), 1),  # 1841 / 4 would be 461 to openjpeg, 460 to Pillow: not taken
        (1760, 1760, Wanted(200, 64), 3),  # 220
        (1760, 1760, Wanted(221, 64), 2),
        (4000, 300, Wanted(960, 224), 0),  # the shorter side holds the model's input
        (500, 400, Wanted(960, 224), 0),  # smaller than the preview already
    ],
)
def test_the_reduction_keeps_what_is_wanted(rows: int, columns: int, want: Wanted, r: int) -> None:
    assert reduction(rows, columns, 5, want) == r


@pytest.mark.parametrize("name", J2K_FILES)
def test_pillows_values_are_pydicoms(name: str) -> None:
    """Unreduced, the values brought back from Pillow's JPEG 2000 decode are exactly pydicom's (signed, unsigned,
    a sign the codestream and the header disagree on, 8 to 16 bits, RGB)."""
    ds = pydicom.dcmread(dicom_file(f"{name}.dcm"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    levels = j2k_levels(frame)
    expected = pydicom.pixels.utils.pixel_array(ds, index=0 if frames > 1 else None)
    got = j2k_values(frame, levels, 0, int(ds.PixelRepresentation))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["JPEG2000", "693_J2KR"])
def test_a_signed_codestream_under_an_unsigned_header_is_read_as_pydicom_reads_it(name: str) -> None:
    """The other disagreement (J2K_pixelrep_mismatch is an unsigned codestream under a signed header): the header
    is made to say unsigned, and the codestream's negative samples come back as their unsigned bits."""
    ds = pydicom.dcmread(dicom_file(f"{name}.dcm"))
    ds.PixelRepresentation = 0
    frame = get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    levels = j2k_levels(frame)
    assert levels.signed
    expected = pydicom.pixels.utils.pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None)
    got = j2k_values(frame, levels, 0, 0)
    assert got.min() >= 0
    np.testing.assert_array_equal(got, expected)


def test_a_codestream_pillow_cannot_finish_is_refused_as_the_full_decode_refuses_it() -> None:
    """A JPEG 2000 frame cut after 1000 bytes: its header reads, Pillow's reduced decode fails, and the reason
    given is the full decode's (pydicom's, every decoder it tried), not the reduced one's."""
    from pydicom.encaps import encapsulate

    from edge_app.errors import ImageRejected

    ds = pydicom.dcmread(dicom_file("RG1_J2KR.dcm"))
    ds.PixelData = encapsulate([get_frame(ds.PixelData, 0, number_of_frames=1)[:1000]])
    data = dicom_bytes(ds)
    reasons = []
    for want in (Wanted(PREVIEW_LEAST_SIDE, 64), None):
        with pytest.raises(ImageRejected, match="pixel data cannot be decoded") as refused:
            decode(data, wanted=want)
        reasons.append(str(refused.value))
    assert reasons[0] == reasons[1]


def test_the_chest_cr_is_decoded_at_half_its_size_with_its_own_size_said() -> None:
    image = decode(dicom_file("RG1_J2KR.dcm"), wanted=Wanted(PREVIEW_LEAST_SIDE, 64))
    assert image.pixels.shape == (978, 921)
    assert (image.metadata["rows"], image.metadata["columns"]) == (1955, 1841)
    full = decode(dicom_file("RG1_J2KR.dcm")).pixels
    half = np.asarray(Image.fromarray(full, mode="F").resize((921, 978), Image.Resampling.BOX))
    assert np.abs(half - image.pixels).mean() < 0.01  # the same image: MONOCHROME1 inverted, the same window


def test_a_jpeg_is_decoded_with_its_dct_scaling(nih_png: Path) -> None:
    big = io.BytesIO()
    Image.open(nih_png).convert("L").resize((2048, 2048)).save(big, format="JPEG", quality=95)
    image = decode(big.getvalue(), wanted=Wanted(PREVIEW_LEAST_SIDE, 64))
    assert image.pixels.shape == (1024, 1024)  # 1/2: 1/4 (512) would be under the preview's side
    assert (image.metadata["rows"], image.metadata["columns"]) == (2048, 2048)
    assert decode(big.getvalue(), wanted=Wanted(256, 64)).pixels.shape == (256, 256)  # 1/8 at most
    assert decode(big.getvalue()).pixels.shape == (2048, 2048)


def _jpeg_cr(pixels: np.ndarray) -> bytes:
    """A grey CR whose one frame is a JPEG baseline stream of `pixels` (8 bit)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    frame = io.BytesIO()
    Image.fromarray(pixels).save(frame, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 127.5, 256
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_jpeg_baseline_dicom_frame_is_decoded_with_its_dct_scaling(nih_png: Path) -> None:
    """A 2048-px grey JPEG baseline CR: half its size for the 1024-px preview (the DCT's 1/2), an eighth for a
    small model, its own size said; the same picture as pydicom's full decode; colour and full decodes untouched."""
    pixels = np.asarray(Image.open(nih_png).convert("L").resize((2048, 2048)))
    data = _jpeg_cr(pixels)
    image = decode(data, wanted=Wanted(PREVIEW_LEAST_SIDE, 64))
    assert image.pixels.shape == (1024, 1024)
    assert (image.metadata["rows"], image.metadata["columns"]) == (2048, 2048)
    assert decode(data, wanted=Wanted(256, 64)).pixels.shape == (256, 256)
    full = decode(data).pixels
    assert full.shape == (2048, 2048)
    half = np.asarray(Image.fromarray(full, mode="F").resize((1024, 1024), Image.Resampling.BOX))
    assert np.abs(half - image.pixels).mean() < 0.01
    small = decode(_jpeg_cr(pixels[:1500, :1500]), wanted=Wanted(PREVIEW_LEAST_SIDE, 64)).pixels
    assert small.shape == (1500, 1500), "half of 1500 is under the preview's side: decoded whole"


def test_what_the_model_and_the_preview_want_of_the_reference_bundle() -> None:
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    assert wanted(manifest) == Wanted(PREVIEW_LEAST_SIDE, 64)
    cropped = manifest.model_copy(
        update={
            "preprocessing": manifest.preprocessing.model_copy(update={"geometry": "center_crop", "crop_fraction": 0.5})
        }
    )
    assert wanted(cropped) == Wanted(PREVIEW_LEAST_SIDE, 128)


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm"])
def test_the_models_decisions_from_the_reduced_decode_are_the_full_decodes(name: str) -> None:
    """The chest CR through `prepare` (reduced) and through a full decode: the same findings, probabilities within
    0.01 (tests/benchmarks/reduced_decode.py measures every J2K CR and US file and NIH images)."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    manifest = bundle.manifest
    prepared = prepare(dicom_file(name), name, DecodeLimits(), manifest)
    assert prepared.preview is not None and prepared.preview.shape == (978, 921)
    full = preprocess(decode(dicom_file(name)).pixels, manifest.input, manifest.preprocessing)
    thresholds = np.asarray([manifest.thresholds[label] for label in manifest.labels])
    with OnnxRuntimeRunner(bundle) as runner:
        p_reduced, p_full = (
            probabilities(manifest.output, len(manifest.labels), runner.infer(batch)[manifest.output.name])[0]
            for batch in (prepared.batch, full)
        )
    np.testing.assert_array_equal(p_reduced >= thresholds, p_full >= thresholds)
    assert np.abs(p_reduced - p_full).max() < 0.01


@pytest.mark.parametrize("lossless", [True, False], ids=["htj2k-lossless", "htj2k"])
def test_an_htj2k_cr_of_another_encoder_is_decoded_at_its_half_level(lossless: bool) -> None:
    """The chest CR re-encoded as HTJ2K by OpenJPH: its own header's levels read, its values unreduced exactly
    pydicom's, the model and the preview given its half level (978x921) with its full size said, the same picture
    as the full decode, and the model's decisions those of the full decode."""
    ds = htj2k_cr(lossless)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    levels = j2k_levels(frame)
    assert (levels.rows, levels.columns, levels.levels, levels.signed) == (1955, 1841, 5, False)
    np.testing.assert_array_equal(j2k_values(frame, levels, 0, 0), ds.pixel_array)
    data = dicom_bytes(ds)
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    prepared = prepare(data, "htj2k", DecodeLimits(), manifest)
    assert prepared.preview is not None and prepared.preview.shape == (978, 921)
    assert (prepared.metadata["rows"], prepared.metadata["columns"]) == (1955, 1841)
    full = decode(data).pixels
    assert full.shape == (1955, 1841)
    half = np.asarray(Image.fromarray(full, mode="F").resize((921, 978), Image.Resampling.BOX))
    reduced = decode(data, wanted=wanted(manifest)).pixels
    assert np.abs(half - reduced).mean() < 0.01
    bundle = load_bundle(EMBEDDED_BUNDLE)
    thresholds = np.asarray([manifest.thresholds[label] for label in manifest.labels])
    with OnnxRuntimeRunner(bundle) as runner:
        p_reduced, p_full = (
            probabilities(manifest.output, len(manifest.labels), runner.infer(batch)[manifest.output.name])[0]
            for batch in (prepared.batch, preprocess(full, manifest.input, manifest.preprocessing))
        )
    np.testing.assert_array_equal(p_reduced >= thresholds, p_full >= thresholds)
    assert np.abs(p_reduced - p_full).max() < 0.01
