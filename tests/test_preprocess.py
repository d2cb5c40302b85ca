"""The four preprocessing styles the manifest must express, checked value by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_app.bundles.manifest import InputSpec, Preprocessing
from edge_app.imaging import decode, preprocess

pytestmark = pytest.mark.unit

RAMP = np.tile(np.linspace(0.0, 1.0, 300, dtype=np.float32), (200, 1))  # 200 x 300, dark left, bright right


def test_torchxrayvision_style() -> None:
    spec = InputSpec(name="img", layout="NCHW", height=224, width=224, channels=1)
    prep = Preprocessing(geometry="center_crop", interpolation="bilinear", scale=(-1024.0, 1024.0))
    x = preprocess(RAMP, spec, prep)
    assert x.shape == (1, 1, 224, 224) and x.dtype == np.float32
    # The central 200x200 square of the ramp spans columns 50..249: values about 1/6 .. 5/6 of the range.
    assert x[0, 0, :, 0].mean() == pytest.approx(-1024 + 2048 * 50 / 299, abs=12)
    assert x[0, 0, :, -1].mean() == pytest.approx(-1024 + 2048 * 249 / 299, abs=12)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_keras_style(interpolation: str) -> None:
    spec = InputSpec(name="input_1", layout="NHWC", height=150, width=150, channels=3)
    prep = Preprocessing(geometry="stretch", interpolation=interpolation, scale=(-1.0, 1.0))  # x/127.5 - 1
    x = preprocess(RAMP, spec, prep)
    assert x.shape == (1, 150, 150, 3)
    assert np.array_equal(x[..., 0], x[..., 2]), "grey repeated to 3 channels"
    assert -1.0 <= x.min() < -0.98 and 0.98 < x.max() <= 1.0


def test_imagenet_style() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = InputSpec(name="input", layout="NCHW", height=224, width=224, channels=3)
    prep = Preprocessing(geometry="center_crop", crop_fraction=0.875, mean=mean, std=std)
    for value in (0.5, 0.2):  # above and below every channel's mean
        x = preprocess(np.full((256, 256, 3), value, dtype=np.float32), spec, prep)
        assert x.shape == (1, 3, 224, 224)
        for c in range(3):
            assert np.allclose(x[0, c], (value - mean[c]) / std[c], atol=1e-5)


def test_monai_style() -> None:
    spec = InputSpec(name="x", layout="NCHW", height=200, width=300, channels=1)
    prep = Preprocessing(intensity="minmax", scale=(0.0, 1.0))
    dim = 0.2 + RAMP * 0.3  # uses only 0.2..0.5 of the range
    x = preprocess(dim, spec, prep)
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(x[0, 0], RAMP, atol=1e-5), "stretched linearly: the ramp again"


def test_letterbox_keeps_aspect() -> None:
    spec = InputSpec(name="x", height=100, width=100, channels=1)
    x = preprocess(np.ones((50, 100), np.float32), spec, Preprocessing(geometry="letterbox"))
    assert np.all(x[0, 0, :25] == 0) and np.all(x[0, 0, 75:] == 0) and np.allclose(x[0, 0, 25:75], 1.0)
    tall = preprocess(np.ones((200, 80), np.float32), spec, Preprocessing(geometry="letterbox"))  # halved
    assert np.all(tall[0, 0, :, :30] == 0) and np.all(tall[0, 0, :, 70:] == 0), "padded left and right alike"
    assert np.allclose(tall[0, 0, :, 30:70], 1.0)
    wide = preprocess(np.ones((60, 150), np.float32), spec, Preprocessing(geometry="letterbox"))  # times 2/3
    assert np.all(wide[0, 0, :30] == 0) and np.all(wide[0, 0, 70:] == 0) and np.allclose(wide[0, 0, 30:70], 1.0)


@pytest.mark.parametrize(("channel", "luma"), [(0, 0.299), (1, 0.587), (2, 0.114)])
def test_colour_to_grey_uses_luma(channel: int, luma: float) -> None:
    colour = np.zeros((10, 10, 3), np.float32)
    colour[..., channel] = 1.0
    x = preprocess(colour, InputSpec(name="x", height=10, width=10, channels=1), Preprocessing())
    assert np.allclose(x, luma)


def test_colour_stays_colour_for_a_three_channel_model() -> None:
    red = np.zeros((20, 20, 3), np.float32)
    red[..., 0] = 1.0
    x = preprocess(red, InputSpec(name="x", height=10, width=10, channels=3), Preprocessing())
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1:], 0.0)


def test_float16_input() -> None:
    x = preprocess(RAMP, InputSpec(name="x", height=8, width=8, dtype="float16"), Preprocessing())
    assert x.dtype == np.float16


def test_on_a_real_xray(nih_png: Path) -> None:
    spec = InputSpec(name="x", height=224, width=224, channels=1)
    x = preprocess(decode(nih_png).pixels, spec, Preprocessing(geometry="center_crop", scale=(-1024, 1024)))
    assert -1024 <= x.min() < -900 and 900 < x.max() <= 1024


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mean": (0.5,)}, "mean and std must be given together"),
        ({"mean": (0.5,), "std": (0.0,)}, "std values must be positive"),
        ({"scale": (1.0, 1.0)}, "non-zero width"),
        ({"geometry": "fisheye"}, "geometry"),
        ({"crop_fraction": 0.0}, "crop_fraction"),
    ],
)
def test_invalid_preprocessing_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Preprocessing.model_validate(fields)


def test_centre_crop_keeps_the_central_square_of_a_real_image() -> None:
    """On a gradient (not flat), centre crop 0.5 of a 100x200 image is rows 25-75, columns 75-125, resized."""
    ys, xs = np.mgrid[0:100, 0:200].astype(np.float32)
    image = (ys * 200 + xs) / (100 * 200)
    spec = InputSpec(name="x", layout="NCHW", height=50, width=50, channels=1)
    x = preprocess(image, spec, Preprocessing(geometry="center_crop", crop_fraction=0.5, interpolation="nearest"))
    assert np.array_equal(x[0, 0], image[25:75, 75:125])
    x = preprocess(image, spec, Preprocessing(geometry="center_crop", crop_fraction=1.0, interpolation="nearest"))
    assert np.array_equal(x[0, 0], image[0:100, 50:150][1::2, 1::2]), "Pillow samples pixel centres"
