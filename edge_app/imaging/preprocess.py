"""Turn decoded pixels into a model's input tensor exactly as its manifest declares."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.bundles.manifest import InputSpec, Preprocessing
from edge_app.imaging.decode import Pixels

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocess(pixels: Pixels, spec: InputSpec, prep: Preprocessing) -> NDArray[np.generic]:
    """Return one image as a (1, C, H, W) or (1, H, W, C) array of the input's dtype."""
    x = pixels.astype(np.float32, copy=False)
    if prep.intensity == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    # Colour becomes grey before resizing, grey becomes colour after it: the same values (per-channel resizing
    # commutes with repeating a channel), with the full-size image never held three times.
    x = _to_channels(x, 1) if spec.channels == 1 else _with_axis(x)
    x = _to_channels(_geometry(x, spec.height, spec.width, prep), spec.channels)
    x = np.float32(prep.scale[0]) + x * np.float32(prep.scale[1] - prep.scale[0])
    if prep.mean is not None and prep.std is not None:
        x = ((x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)).astype(np.float32)
    if spec.layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x[np.newaxis], dtype=np.dtype(spec.dtype))


def _with_axis(x: Pixels) -> Pixels:
    """(H, W) to (H, W, 1); (H, W, C) as it is."""
    return x[:, :, np.newaxis] if x.ndim == 2 else x


def _to_channels(x: Pixels, channels: int) -> Pixels:
    """(H, W) or (H, W, 1 or 3) to (H, W, channels)."""
    x = _with_axis(x)
    if x.shape[2] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=2)
    return (x @ _LUMA)[:, :, np.newaxis].astype(np.float32)


def _geometry(x: Pixels, height: int, width: int, prep: Preprocessing) -> Pixels:
    h, w = x.shape[:2]
    resample = _FILTERS[prep.interpolation]
    if prep.geometry == "center_crop":
        side = max(1, round(min(h, w) * prep.crop_fraction))
        top, left = (h - side) // 2, (w - side) // 2
        return _resize(x[top : top + side, left : left + side], height, width, resample)
    if prep.geometry == "letterbox":
        ratio = min(height / h, width / w)
        new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
        out = np.zeros((height, width, x.shape[2]), dtype=np.float32)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[top : top + new_h, left : left + new_w] = _resize(x, new_h, new_w, resample)
        return out
    return _resize(x, height, width, resample)


def _resize(x: Pixels, height: int, width: int, resample: Image.Resampling) -> Pixels:
    if x.shape[:2] == (height, width):
        return x
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c]), mode="F").resize((width, height), resample))
        for c in range(x.shape[2])
    ]
    return np.stack(planes, axis=2).astype(np.float32)
