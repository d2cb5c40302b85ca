"""Pixels to the bytes of a picture file, for the tablet and the reports."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray


def jpeg(pixels: NDArray[np.uint8], quality: int = 90) -> bytes:
    """8-bit grey (H, W) or RGB (H, W, 3) pixels as a JPEG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def heatmap_overlay(base: NDArray[np.uint8], heatmap: NDArray[np.float32], opacity: float = 0.5) -> NDArray[np.uint8]:
    """The image (grey or RGB) as RGB with the heatmap (values in [0, 1], any size) laid over it in red."""
    from PIL import Image

    rgb = base if base.ndim == 3 else np.repeat(base[:, :, np.newaxis], 3, axis=2)
    height, width = rgb.shape[:2]
    heat = np.asarray(
        Image.fromarray(heatmap.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )
    alpha = opacity * np.clip(heat, 0.0, 1.0)[:, :, np.newaxis]
    red = np.array([255.0, 0.0, 0.0])
    out: NDArray[np.uint8] = np.round(rgb * (1.0 - alpha) + red * alpha).astype(np.uint8)
    return out
