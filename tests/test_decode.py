"""Decoding real DICOM, PNG and JPEG files into display intensities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from edge_app.imaging import DecodeLimits, decode
from support.dicom import cr_and_us_files, dicom_bytes, dicom_file

pytestmark = pytest.mark.unit

CR_US = cr_and_us_files()


def test_pydicom_data_is_installed() -> None:
    names = {p.name for p in CR_US}
    assert {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KI.dcm", "US1_J2KR.dcm", "OBXXXX1A_rle.dcm"} <= names


@pytest.mark.parametrize("path", CR_US, ids=[p.name for p in CR_US])
def test_every_cr_and_us_file_decodes(path: Path) -> None:
    image = decode(path)
    px = image.pixels
    assert image.format == "dicom"
    assert px.dtype == np.float32
    assert px.ndim in (2, 3) and (px.ndim == 2 or px.shape[2] == 3)
    assert px.shape[:2] == (image.metadata["rows"], image.metadata["columns"])
    assert px.min() >= 0.0 and px.max() <= 1.0
    assert px.std() > 0.01, "a real image is not flat"


def test_monochrome1_is_inverted() -> None:
    """In RG1 (MONOCHROME1) high stored values are dark: the output must be brighter where values are low."""
    path = dicom_file("RG1_UNCR.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    px = decode(path).pixels.astype(np.float64)
    assert np.corrcoef(raw.ravel()[::97], px.ravel()[::97])[0, 1] < -0.95


def test_window_from_the_file_is_applied() -> None:
    path = dicom_file("RG3_UNCR.dcm")  # WindowCenter 550, WindowWidth 1024, MONOCHROME1
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    px = decode(path).pixels
    expected = 1.0 - np.clip((raw - 549.5) / 1023.0 + 0.5, 0.0, 1.0)  # PS3.3 C.11.2.1.2.1, then inverted
    assert np.allclose(px, expected, atol=1e-6)
    assert (raw < 550 - 512).any(), "some pixels lie below the window"


def test_percentile_window_when_the_file_has_none() -> None:
    path = dicom_file("CT_small.dcm")
    assert "WindowCenter" not in pydicom.dcmread(path)
    px = decode(path).pixels
    assert px.min() == 0.0 and px.max() == 1.0
    assert 0.003 < float((px == 1.0).mean()) < 0.05
    from pydicom.pixels.processing import apply_modality_lut

    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(values, (0.5, 99.5))
    assert np.allclose(px, np.clip((values - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_palette_colour_becomes_rgb() -> None:
    image = decode(dicom_file("OBXXXX1A.dcm"))
    assert image.metadata["photometric"] == "PALETTE COLOR"
    assert image.pixels.shape == (600, 800, 3)
    assert np.abs(image.pixels[..., 0] - image.pixels[..., 2]).max() > 0.05, "a colour palette gives colour"


def test_ybr_becomes_the_same_rgb() -> None:
    rgb = decode(dicom_file("US1_UNCR.dcm")).pixels
    ybr = decode(dicom_file("US1_J2KR.dcm")).pixels  # YBR_RCT, lossless
    assert np.array_equal(rgb, ybr)
    ybr_422 = decode(dicom_file("examples_ybr_color.dcm")).pixels  # YBR_FULL_422, JPEG baseline
    assert ybr_422.shape[2] == 3 and ybr_422.std() > 0.05


def test_multiframe_takes_the_chosen_frame() -> None:
    path = dicom_file("color3d_jpeg_baseline.dcm")  # 120 frames
    ds = pydicom.dcmread(path)
    middle = decode(path)
    assert middle.metadata["frames"] == 120 and middle.metadata["frame"] == 60
    first = decode(path, limits=DecodeLimits(frame="first"))
    assert first.metadata["frame"] == 0
    assert not np.array_equal(first.pixels, middle.pixels)
    from pydicom.pixels import pixel_array

    assert np.allclose(first.pixels, pixel_array(ds, index=0) / 255.0)


def test_nih_png(nih_png: Path) -> None:
    image = decode(nih_png)
    assert image.format == "png" and image.pixels.shape == (512, 512)
    assert image.metadata == {"rows": 512, "columns": 512, "mode": "L", "frames": 1, "frame": 0}
    assert np.allclose(image.pixels * 255, np.asarray(Image.open(nih_png), dtype=np.float32))


def test_16_bit_png_and_jpeg(nih_png: Path, tmp_path: Path) -> None:
    grey8 = np.asarray(Image.open(nih_png))
    grey16 = grey8.astype(np.uint16) * 257
    path16 = tmp_path / "x16.png"
    Image.fromarray(grey16).save(path16)
    assert np.allclose(decode(path16).pixels, decode(nih_png).pixels, atol=1e-6)

    jpeg = io.BytesIO()
    Image.open(nih_png).convert("RGB").save(jpeg, format="JPEG", quality=95)
    decoded = decode(jpeg.getvalue(), source="x.jpg")
    assert decoded.format == "jpeg" and decoded.pixels.shape == (512, 512, 3)
    assert np.abs(decoded.pixels.mean(axis=2) - decode(nih_png).pixels).mean() < 0.02


def test_voi_lut_sequence_is_applied() -> None:
    from pydicom.pixels.processing import apply_voi_lut

    path = dicom_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (apply_voi_lut(ds.pixel_array, ds).astype(np.float64) - lut.min()) / (lut.max() - lut.min())
    assert np.allclose(decode(path).pixels, expected, atol=1e-6)


def test_modality_lut_sequence_is_applied() -> None:
    from pydicom.pixels.processing import apply_modality_lut

    path = dicom_file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(values, (0.5, 99.5))
    assert np.allclose(decode(path).pixels, np.clip((values - lo) / (hi - lo), 0, 1), atol=1e-5)


@pytest.mark.parametrize(("choice", "index"), [("first", 0), ("middle", 60), ("last", 119), (0, 0), (7, 7), (119, 119)])
def test_the_chosen_frame_is_the_one_decoded(choice: str | int, index: int) -> None:
    """color3d_jpeg_baseline: 120 JPEG frames of a moving ultrasound loop, each different."""
    path = dicom_file("color3d_jpeg_baseline.dcm")
    if isinstance(choice, str):
        choice = "".join(reversed(choice[::-1]))  # an equal string, not the literal itself (as read from a file)
    image = decode(path, limits=DecodeLimits(frame=choice))  # type: ignore[arg-type]
    assert image.metadata["frame"] == index and image.metadata["frames"] == 120
    expected = pydicom.dcmread(path).pixel_array[index].astype(np.float32) / 255.0
    assert np.allclose(image.pixels, expected)


def _ct(**attributes: object) -> bytes:
    """CT_small (signed 16-bit, stored 128..2191) with the given attributes, as a file's bytes."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    ("function", "slope", "intercept", "center", "width"),
    [
        ("LINEAR", 1.0, -1024.0, 40.0, 400.0),  # a CT soft-tissue window in Hounsfield units
        ("LINEAR", 2.0, 1.0, 2000.0, 1200.0),
        ("LINEAR", 2.0, -1.0, 2000.0, 1200.0),
        ("LINEAR", 2.0, -1.0, 2000.5, 1.0),  # a width of 1: a threshold
        ("UNKNOWN", 2.0, -1.0, 2000.0, 1200.0),  # a function the standard does not define: LINEAR, as viewers do
        ("LINEAR", 0.5, 0.0, 500.0, 300.0),
        ("LINEAR_EXACT", 2.0, 1.0, 2000.0, 1201.0),  # an odd width: its half is not a whole number
        ("LINEAR_EXACT", 1.0, -1024.0, 40.0, 400.0),
        ("SIGMOID", 2.0, 1.0, 2000.0, 1200.0),
        ("SIGMOID", 1.0, -1024.0, 40.0, 400.0),
    ],
)
def test_rescale_then_window_as_pydicom_does(
    function: str, slope: float, intercept: float, center: float, width: float
) -> None:
    """The Modality LUT (slope, intercept) then the VOI window of each function, against pydicom's own
    `apply_windowing` mapped from its output range onto [0, 1]."""
    from pydicom.pixels.processing import apply_modality_lut, apply_windowing

    data = _ct(
        RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width, VOILUTFunction=function
    )
    ds = pydicom.dcmread(io.BytesIO(data))
    if function == "UNKNOWN":
        ds.VOILUTFunction = "LINEAR"
    windowed = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)
    with np.errstate(over="ignore"):
        y_min, y_max = apply_windowing(np.array([-1e9, 1e9]), ds)
    expected = (windowed - y_min) / (y_max - y_min)
    px = decode(data).pixels
    assert np.allclose(px, expected, atol=2e-6)
    assert px.min() < 0.05 and px.max() > 0.95 and ((px > 0.1) & (px < 0.9)).any() == (width > 1.0)


def test_a_cmyk_jpeg_becomes_rgb(nih_png: Path) -> None:
    """Print workflows write CMYK JPEGs; the model sees the RGB a viewer shows."""
    out = io.BytesIO()
    Image.open(nih_png).convert("CMYK").save(out, format="JPEG", quality=95)
    decoded = decode(out.getvalue())
    assert decoded.metadata["mode"] == "CMYK" and decoded.pixels.shape == (512, 512, 3)
    expected = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    assert np.allclose(decoded.pixels, expected)


@pytest.mark.parametrize("blank", [False, True])
def test_a_bilevel_png_is_black_and_white(blank: bool) -> None:
    """Mode "1" (one bit a pixel): white is 1.0 and black 0.0, also on a blank page."""
    img = Image.new("1", (40, 30), 1)
    if not blank:
        img.paste(0, (0, 0, 20, 30))
    out = io.BytesIO()
    img.save(out, format="PNG")
    px = decode(out.getvalue()).pixels
    assert px.shape == (30, 40)
    assert (px[:, 20:] == 1.0).all() and (px[:, :20] == (1.0 if blank else 0.0)).all()


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_a_linear_window_of_width_one_or_less_is_a_threshold(width: float) -> None:
    """LINEAR asks for a width of at least 1 (files hold less); 1 or less is a threshold at center - 0.5: a value
    equal to the center is above it."""
    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    center = float(np.median(raw))
    data = _ct(RescaleSlope=1.0, RescaleIntercept=0.0, WindowCenter=center, WindowWidth=width)
    expected = (raw >= center).astype(np.float32)
    assert (raw == center).any() and 0.1 < expected.mean() < 0.9
    assert np.array_equal(decode(data).pixels, expected)


def test_the_first_of_several_windows_is_applied() -> None:
    """WindowCenter/WindowWidth may hold several windows (presets); the first is the default."""
    from pydicom.pixels.processing import apply_modality_lut, apply_windowing

    data = _ct(WindowCenter=[40.0, 400.0], WindowWidth=[400.0, 2000.0])
    ds = pydicom.dcmread(io.BytesIO(data))
    windowed = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    y_min, y_max = apply_windowing(np.array([-1e9, 1e9]), ds, index=0)
    assert np.allclose(decode(data).pixels, (windowed - y_min) / (y_max - y_min), atol=2e-6)


def test_the_first_of_several_voi_luts_is_applied() -> None:
    """A file may carry several VOI LUTs (presets); the first is the default, as pydicom and viewers take it."""
    from pydicom.pixels.processing import apply_voi_lut

    ds = pydicom.dcmread(dicom_file("vlut_04.dcm"))
    second = pydicom.Dataset()
    second.add_new(0x00283002, "US", list(ds.VOILUTSequence[0].LUTDescriptor))  # LUT Descriptor
    second.add_new(0x00283006, "US", [v // 4 for v in ds.VOILUTSequence[0].LUTData][::-1])  # LUT Data
    ds.VOILUTSequence.append(second)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (apply_voi_lut(ds.pixel_array, ds, index=0).astype(np.float64) - lut.min()) / (lut.max() - lut.min())
    assert np.allclose(decode(dicom_bytes(ds)).pixels, expected, atol=1e-6)


def test_what_decoding_gives_and_takes_cannot_be_changed(nih_png: Path) -> None:
    """Limits are shared by every thread of the service, and a decoded image by the steps after it."""
    import dataclasses

    image = decode(nih_png)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.source = "other.png"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecodeLimits().max_pixels = 1  # type: ignore[misc]


def test_a_sigmoid_window_of_width_zero_is_a_step() -> None:
    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    center = float(np.median(raw))
    data = _ct(RescaleSlope=1.0, RescaleIntercept=0.0, WindowCenter=center, WindowWidth=0.0, VOILUTFunction="SIGMOID")
    with np.errstate(over="ignore"):
        px = decode(data).pixels
    assert np.array_equal(px, np.where(raw > center, 1.0, np.where(raw < center, 0.0, 0.5)).astype(np.float32))


@pytest.mark.parametrize(("rows", "columns"), [(1, 64), (64, 1), (1, 1)])
def test_an_image_of_one_row_or_one_column(rows: int, columns: int) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = np.arange(rows * columns, dtype=np.int16).tobytes()
    assert decode(dicom_bytes(ds)).pixels.shape == (rows, columns)


@pytest.mark.parametrize(
    ("mode", "target"), [("1", "L"), ("L", "L"), ("LA", "L"), ("P", "RGB"), ("RGB", "RGB"), ("RGBA", "RGB")]
)
def test_each_png_mode_becomes_grey_or_rgb(nih_png: Path, mode: str, target: str) -> None:
    """Whatever a PNG holds (bilevel, grey with alpha, palette, colour with alpha), the model gets grey or RGB as
    Pillow converts it: alpha dropped, a palette looked up."""
    out = io.BytesIO()
    Image.open(nih_png).convert("RGB").convert(mode).save(out, format="PNG")
    opened = Image.open(io.BytesIO(out.getvalue()))
    assert opened.mode == mode
    expected = np.asarray(opened.convert(target), dtype=np.float32) / 255.0
    decoded = decode(out.getvalue()).pixels
    assert decoded.shape == expected.shape and np.allclose(decoded, expected, rtol=0, atol=1e-6)


def test_a_palette_of_16_bit_entries() -> None:
    """OBXXXX1A's palette has 16-bit entries spanning the full range: each colour is its entry / 65535."""
    from pydicom.pixels.processing import apply_color_lut

    ds = pydicom.dcmread(dicom_file("OBXXXX1A.dcm"))
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / 65535.0
    assert expected.max() > 255 / 65535.0
    assert np.allclose(decode(dicom_file("OBXXXX1A.dcm")).pixels, expected, rtol=0, atol=1e-7)


def _palette(entries: list[int], first_mapped: int) -> bytes:
    """OBXXXX1A (8-bit stored values) with the same 16-bit palette for red, green and blue."""
    ds = pydicom.dcmread(dicom_file("OBXXXX1A.dcm"))
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(entries), first_mapped, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(entries, "<u2").tobytes())
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    ("entries", "first_mapped", "top"),
    [
        (list(range(256)), 0, 255.0),  # 16-bit entries holding 8-bit values: scaled by 255
        (list(range(200)), 0, 255.0),  # none of them even 255
        (list(range(1, 257)), 0, 65535.0),  # one entry over 255: 16-bit values
        ([10, 300], 65534, 65535.0),  # only the stored value 65535 looks up the entry over 255
    ],
)
def test_a_palettes_depth_is_judged_by_every_entry(entries: list[int], first_mapped: int, top: float) -> None:
    from pydicom.pixels.processing import apply_color_lut

    data = _palette(entries, first_mapped)
    ds = pydicom.dcmread(io.BytesIO(data))
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / top
    assert np.allclose(decode(data).pixels, expected, rtol=0, atol=1e-7)


def test_a_linear_exact_window_narrower_than_one_is_still_a_line() -> None:
    """LINEAR_EXACT takes any width above 0 (LINEAR's below 1 are a threshold): a pixel at its center is mid-grey."""
    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.float64)
    center = float(np.median(raw))
    data = _ct(
        RescaleSlope=1.0, RescaleIntercept=0.0, WindowCenter=center, WindowWidth=0.5, VOILUTFunction="LINEAR_EXACT"
    )
    px = decode(data).pixels
    assert (raw == center).any() and np.all(px[raw == center] == 0.5)
    assert np.allclose(px, np.clip((raw - center) / 0.5 + 0.5, 0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("width", [0.0, -5.0])
def test_a_linear_exact_window_of_no_width_is_a_threshold_at_its_center(width: float) -> None:
    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    center = float(np.median(raw))
    data = _ct(
        RescaleSlope=1.0, RescaleIntercept=0.0, WindowCenter=center, WindowWidth=width, VOILUTFunction="LINEAR_EXACT"
    )
    assert np.array_equal(decode(data).pixels, (raw > center).astype(np.float32))


def test_a_window_center_without_a_width_is_no_window() -> None:
    """Half a window is none: the percentile window applies, as for a file without any."""
    ds = pydicom.dcmread(io.BytesIO(_ct(WindowCenter=40.0)))
    assert "WindowWidth" not in ds
    assert np.array_equal(decode(dicom_bytes(ds)).pixels, decode(dicom_file("CT_small.dcm")).pixels)


def test_a_one_bit_image_is_black_and_white() -> None:
    """BitsAllocated 1 (bilevel images, segmentations): eight pixels a byte, the first in the lowest bit."""
    from pydicom.pixels import pack_bits

    bits = (np.arange(16 * 16).reshape(16, 16) % 3 == 0).astype(np.uint8)
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pack_bits(bits)
    assert np.array_equal(decode(dicom_bytes(ds)).pixels, bits.astype(np.float32))


def test_a_voi_lut_wins_over_a_window() -> None:
    """A file with both: the LUT is the more exact of the two, as pydicom and viewers prefer it."""
    from pydicom.pixels.processing import apply_voi_lut

    ds = pydicom.dcmread(dicom_file("vlut_04.dcm"))
    ds.WindowCenter, ds.WindowWidth = 100.0, 20.0
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (apply_voi_lut(ds.pixel_array, ds, prefer_lut=True).astype(np.float64) - lut.min()) / (
        lut.max() - lut.min()
    )
    assert np.allclose(decode(dicom_bytes(ds)).pixels, expected, atol=1e-6)


def test_a_file_without_its_sop_class_names_none() -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    del ds.SOPClassUID
    assert decode(dicom_bytes(ds)).metadata["sop_class"] == ""
    assert decode(dicom_file("CT_small.dcm")).metadata["sop_class"] == "CT Image Storage"


def test_a_linear_window_of_width_two_is_a_ramp_not_a_threshold() -> None:
    """Width 2 spans one unit: a value half-way (half-units come from a slope of 0.5) maps to 0.5."""
    from pydicom.pixels.processing import apply_modality_lut, apply_windowing

    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    odd = int(raw[raw % 2 == 1][0])
    center = odd * 0.5 + 0.5
    data = _ct(RescaleSlope=0.5, RescaleIntercept=0.0, WindowCenter=center, WindowWidth=2.0)
    ds = pydicom.dcmread(io.BytesIO(data))
    windowed = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)
    y_min, y_max = apply_windowing(np.array([-1e9, 1e9]), ds)
    px = decode(data).pixels
    assert np.allclose(px, (windowed - y_min) / (y_max - y_min), atol=2e-6)
    assert (px == 0.5).any()


def test_a_threshold_keeps_a_value_at_it_below() -> None:
    """LINEAR of width 1 at center c: a value of exactly c - 0.5 is below the threshold (black)."""
    raw = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    value = float(np.median(raw))
    data = _ct(RescaleSlope=1.0, RescaleIntercept=0.5, WindowCenter=value + 1.0, WindowWidth=1.0)
    px = decode(data).pixels
    assert np.array_equal(px, (raw + 0.5 > value + 0.5).astype(np.float32))
    assert (raw == value).any()


def test_a_rescale_slope_of_zero_is_read_as_none() -> None:
    """A slope of 0 (which the standard does not allow) would make every image flat: read as absent, 1."""
    assert np.array_equal(
        decode(_ct(RescaleSlope=0.0, RescaleIntercept=0.0)).pixels,
        decode(_ct(RescaleSlope=1.0, RescaleIntercept=0.0)).pixels,
    )


def test_the_full_depth_values_are_the_modality_lut_s_and_the_header_s_window(tmp_path: Path) -> None:
    """The diagnostic view's values: pydicom's Modality LUT of every pixel (offset and step undone), the header's
    first window, MONOCHROME1 said; a rescale that makes values negative shifts them, exactly."""
    from pydicom.pixels.processing import apply_modality_lut

    from edge_app.imaging.decode import decode_full_depth, full_depth_bytes

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    path = tmp_path / "cr.dcm"
    path.write_bytes(dicom_bytes(ds))
    full = decode_full_depth(path, source="cr", limits=DecodeLimits())
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert full.values.dtype == np.uint16 and full.values.shape == expected.shape == (1955, 1841)
    assert np.array_equal(full.values * full.step + full.offset, expected)
    assert full.offset == expected.min() < 0 and full.step == 1.0
    assert (full.center, full.width) == (float(ds.WindowCenter), float(ds.WindowWidth))
    assert full.inverted, "MONOCHROME1"
    assert full_depth_bytes(decode(path, limits=DecodeLimits()).metadata) == full.values.nbytes
    del ds.WindowCenter, ds.WindowWidth
    path.write_bytes(dicom_bytes(ds))
    lo, hi = np.percentile(expected.astype(np.float32), (0.5, 99.5))
    unwindowed = decode_full_depth(path, source="cr", limits=DecodeLimits())
    assert (unwindowed.center, unwindowed.width) == pytest.approx(((lo + hi) / 2, hi - lo)), "without one: 0.5-99.5 %"
    ds.PixelData = np.where(np.arange(ds.Columns) % 2, 101, 100).astype(np.uint16)[None].repeat(ds.Rows, 0).tobytes()
    path.write_bytes(dicom_bytes(ds))
    assert decode_full_depth(path, source="cr", limits=DecodeLimits()).width == 1.0, "two values a step apart: 1"


def test_a_full_depth_view_of_a_large_image_takes_every_n_th_pixel() -> None:
    """Over 4096 pixels a side, every n-th pixel of each row and column (n the smallest that fits), 2 bytes each:
    what a stride of the image would hold."""
    from edge_app.imaging.decode import full_depth_bytes

    for rows, cols in [(5000, 3001), (4096, 4096), (4097, 9000), (300, 200)]:
        every = -(-max(rows, cols) // 4096)
        expected = np.zeros((rows, cols), np.uint16)[::every, ::every].nbytes
        assert full_depth_bytes({"rows": rows, "columns": cols}) == expected, (rows, cols)
    assert full_depth_bytes({"rows": 5000, "columns": 3001}) == 2500 * 1501 * 2


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "png"])
def test_an_image_of_8_bits_or_colour_has_no_full_depth_view(name: str, tmp_path: Path) -> None:
    from edge_app.errors import ImageRejected
    from edge_app.imaging.decode import decode_full_depth, has_full_depth

    path = tmp_path / "image"
    if name == "png":
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(path, "PNG")
    else:
        path.write_bytes(dicom_file(name).read_bytes())
    assert not has_full_depth(decode(path).metadata)
    with pytest.raises(ImageRejected):
        decode_full_depth(path, source=name, limits=DecodeLimits())
