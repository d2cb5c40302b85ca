"""What the decoder process hands back besides the tensor: its stage timings, in milliseconds of its own work,
and the 8-bit view the tablet shows (at most 1024 pixels a side, every pixel of the image counted)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.imaging import DecodeLimits
from edge_app.imaging.prepare import PREVIEW_SIDE, image_kind, intensity_histogram, prepare, preview
from support.dicom import noisy_j2k

pytestmark = pytest.mark.unit


def _timed(data: bytes) -> tuple[dict[str, float], float]:
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    t0 = time.perf_counter()
    prepared = prepare(data, "x", DecodeLimits(), manifest)
    return prepared.timings_ms, (time.perf_counter() - t0) * 1e3


def test_the_timings_of_a_small_image_are_its_own_milliseconds(nih_png: Path) -> None:
    timings, wall_ms = _timed(nih_png.read_bytes())
    assert timings["decode"] > 0 and timings["preprocess"] > 0
    assert timings["decode"] + timings["preprocess"] <= wall_ms


def test_the_timings_of_a_slow_image_are_whole_seconds_not_their_remainder() -> None:
    """A 2500 x 2500 JPEG 2000 of noise: over a second to decode here; the timings account for most of it."""
    timings, wall_ms = _timed(noisy_j2k(2500))
    if wall_ms < 1000:
        pytest.skip("this machine decodes it in under a second: the check needs a longer decode")
    assert timings["decode"] + timings["preprocess"] >= 0.5 * wall_ms
    assert timings["preprocess"] >= 1.0, "6 M pixels resized take a millisecond at least"


def test_a_view_is_1024_pixels_a_side_and_averages_every_pixel() -> None:
    """Noise of 3500 x 3500 shrunk by a box filter over all its pixels: the view is nearly flat grey; a view
    sampled from every third pixel would keep much more of the noise."""
    noise = np.random.default_rng(1).random((3500, 3500), dtype=np.float32)
    view = preview(noise)
    assert view.shape == (PREVIEW_SIDE, PREVIEW_SIDE) and view.dtype == np.uint8
    assert abs(float(view.mean()) - 127.5) < 2 and float(view.std()) < 30, "about 12 pixels averaged each"


def test_a_view_keeps_the_intensities_from_black_to_white_in_every_row() -> None:
    for value, expected in ((0.0, 0), (0.5, 128), (1.0, 255)):
        view = preview(np.full((600, 700), value, np.float32))
        assert view.shape == (600, 700) and (view == expected).all(), value
        tall = preview(np.full((700, 300), value, np.float32))
        assert tall.shape == (700, 300) and (tall == expected).all(), value
    colour = preview(np.full((300, 400, 3), 1.0, np.float32))
    assert colour.shape == (300, 400, 3) and (colour == 255).all()


def test_a_wide_view_is_1024_pixels_across_and_never_holds_the_image_whole() -> None:
    """2048 x 8192: only every fourth pixel is turned to 8 bits (a band at a time) before the box filter, so the
    decoder process, near its memory cap after a large decode, allocates a few MB here rather than 32."""
    import tracemalloc

    pixels = np.zeros((2048, 8192), np.float32)
    tracemalloc.start()
    try:
        view = preview(pixels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert view.shape == (256, 1024)
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB"


@pytest.mark.parametrize("body_part", ["ABDOMEN", "SKULL", "chest wall"])
def test_a_body_part_the_model_is_not_for_is_refused(body_part: str) -> None:
    from edge_app.errors import ImageRejected
    from edge_app.imaging.decode import DecodedImage
    from edge_app.imaging.prepare import check_intended_use

    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    image = DecodedImage(np.zeros((4, 4), np.float32), "x.dcm", "dicom", {"modality": "CR", "body_part": body_part})
    with pytest.raises(ImageRejected, match=f"body part {body_part.upper()} is not what this model reads"):
        check_intended_use(manifest, image)
    check_intended_use(manifest, DecodedImage(image.pixels, "x.dcm", "dicom", {"modality": "CR", "body_part": "chest"}))


def test_a_prepared_image_cannot_be_changed(nih_png: Path) -> None:
    """It crosses from the decoder process to the worker and on to the store: one value, never edited."""
    import dataclasses

    prepared = prepare(nih_png, "x.png", DecodeLimits(), load_bundle(EMBEDDED_BUNDLE).manifest)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepared.source = "other.png"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("said", "refused"),
    [
        (("CR", "CHEST", "AP"), None),
        (("cr", " chest ", "pa"), None),
        (("", "", ""), None),
        (("MR", "CHEST", "PA"), "modality MR is not one this model reads (cr, DX)"),
        (("CR", "KNEE", ""), "body part KNEE is not what this model reads (Chest)"),
        (("DX", "", "LATERAL"), "view LATERAL is not one this model reads (pa, AP)"),
    ],
)
def test_intended_use_is_judged_once_whatever_the_case(said: tuple[str, str, str], refused: str | None) -> None:
    """The worker's routing (by the stored header) and the decoder's check (by the decoded header) give the same
    verdict, whatever case the manifest or the image writes."""
    from edge_app.bundles.manifest import IntendedUse
    from edge_app.errors import ImageRejected
    from edge_app.imaging.decode import DecodedImage
    from edge_app.imaging.header import ImageHeader
    from edge_app.imaging.prepare import check_intended_use
    from edge_app.inference.registry import fits

    use = IntendedUse(modality=("cr", "DX"), body_part="Chest", views=("pa", "AP"))
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest.model_copy(update={"intended_use": use})
    assert use.refuses(*said) == refused
    header = ImageHeader("dicom", "1.2", "1.2.3", "1.2.3.4", modality=said[0], body_part=said[1], view=said[2])
    assert fits(manifest, header) is (refused is None)
    image = DecodedImage(
        np.zeros((4, 4), np.float32), "x.dcm", "dicom", dict(zip(("modality", "body_part", "view"), said, strict=True))
    )
    if refused is None:
        check_intended_use(manifest, image)
    else:
        with pytest.raises(ImageRejected, match=refused.replace("(", r"\(").replace(")", r"\)")):
            check_intended_use(manifest, image)


def test_the_intensity_histogram_is_each_step_s_share_of_the_pixels() -> None:
    """Sixteen steps of [0, 1], white in the last (not a seventeenth), shares to four places, a colour pixel by the
    mean of its channels."""
    grey = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert intensity_histogram(grey) == [0.3333, 0, 0, 0, 0, 0, 0, 0, 0.3333, 0, 0, 0, 0, 0, 0, 0.3333]
    bright = np.full((2, 2), 0.8, np.float32)
    assert intensity_histogram(bright)[12] == 1.0, "0.8 of the way to white: the 13th step"
    colour = np.array([[[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]], np.float32)
    assert intensity_histogram(colour) == [0] * 8 + [0.5] + [0] * 6 + [0.5]


@pytest.mark.parametrize(("side", "white"), [(511, 0.499), (512, 0.0)])
def test_the_intensity_histogram_counts_about_256_pixels_a_side(side: int, white: float) -> None:
    """Odd rows white: under 512 pixels a side every row is counted; from 512 every other one, the even rows."""
    pixels = np.zeros((side, side), np.float32)
    pixels[1::2] = 1.0
    shares = intensity_histogram(pixels)
    assert shares[-1] == white and shares[0] == round(1 - white, 4)


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        ({"mode": "L", "rows": 10, "columns": 20}, ("8", "MONOCHROME2", "20")),
        ({"mode": "LA", "photometric": None}, ("8", "MONOCHROME2", "0")),
        ({"mode": "1", "rows": 7}, ("1", "MONOCHROME2", "7")),
        ({"mode": "I;16"}, ("16", "MONOCHROME2", "0")),
        ({"mode": "I;16B"}, ("16", "MONOCHROME2", "0")),
        ({"mode": "I;16L"}, ("16", "MONOCHROME2", "0")),
        ({"mode": "I"}, ("32", "MONOCHROME2", "0")),
        ({"mode": "RGB", "rows": 5, "columns": 3}, ("8", "RGB", "5")),
        ({"mode": "L", "bits_stored": 12, "photometric": "MONOCHROME1", "rows": 2048}, ("12", "MONOCHROME1", "2048")),
    ],
)
def test_an_image_s_kind_is_its_header_s_or_what_its_mode_means(
    metadata: dict[str, object], kind: tuple[str, str, str]
) -> None:
    assert image_kind(metadata) == kind
