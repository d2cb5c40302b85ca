"""From a file to a model's input tensor: decode, check the image is one the model is for, preprocess.

`prepare` runs in whatever process calls it; `edge_app.imaging.sandbox` runs it in a contained child process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.manifest import Manifest
from edge_app.errors import ImageRejected
from edge_app.imaging.decode import DecodedImage, DecodeLimits, Wanted, decode
from edge_app.imaging.preprocess import preprocess


@dataclass(frozen=True)
class Prepared:
    """One image, ready for inference: its metadata, its input batch and what each step cost."""

    source: str
    metadata: dict[str, Any]
    batch: NDArray[np.generic]
    timings_ms: dict[str, float]
    preview: NDArray[np.uint8] | None = None  # the image as shown, at most PREVIEW_SIDE pixels a side


PREVIEW_SIDE = 1024  # the tablet shows it, zoomable; the heatmap capture is made on it
# A reduced decode gives the preview at least this much: resolution levels halve, and a 1955-px CR's half (978 px)
# would otherwise be refused (and decoded in four times the time) for 46 pixels a side of a zoomable preview.
PREVIEW_LEAST_SIDE = 15 * PREVIEW_SIDE // 16
_BAND = 256


def prepare(data: bytes | Path | str, source: str, limits: DecodeLimits, manifest: Manifest) -> Prepared:
    """Decode, check intended use and preprocess one image; raise `ImageRejected` for an unusable one."""
    t0 = time.perf_counter()
    image = decode(data, source=source, limits=limits, wanted=wanted(manifest))
    check_intended_use(manifest, image)
    t1 = time.perf_counter()
    batch = preprocess(image.pixels, manifest.input, manifest.preprocessing)
    t2 = time.perf_counter()
    timings = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
    metadata = {**image.metadata, "intensity": intensity_histogram(image.pixels)}
    return Prepared(source, metadata, batch, timings, preview(image.pixels))


def wanted(manifest: Manifest) -> Wanted:
    """What the model's input and the preview (and the heatmap capture, made on it) need of a decoded image: the
    model's larger side on both of the image's (its crop's, for a centre crop), the preview's on the longer."""
    side = max(manifest.input.height, manifest.input.width)
    if manifest.preprocessing.geometry == "center_crop":
        side = math.ceil(side / manifest.preprocessing.crop_fraction)
    return Wanted(longer=max(side, PREVIEW_LEAST_SIDE), shorter=side)


INTENSITY_BINS = 16
_GREY_MODES = {"1": 1, "L": 8, "LA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32}  # Pillow's, and their bits


def intensity_histogram(pixels: NDArray[np.float32]) -> list[float]:
    """The share of the image's pixels in each of INTENSITY_BINS equal steps of display intensity [0, 1] (a colour
    image's: the mean of its channels), counted on about 256 x 256 of them: what the model's drift monitoring
    compares with its bundle's calibration images (`Fingerprint`)."""
    step = max(1, max(pixels.shape[:2]) // 256)
    sample = pixels[::step, ::step]
    if sample.ndim == 3:
        sample = sample.mean(axis=2)
    bins = np.minimum((sample * INTENSITY_BINS).astype(np.int64), INTENSITY_BINS - 1)
    counts = np.bincount(bins.ravel(), minlength=INTENSITY_BINS)
    return [round(float(c) / max(1, int(counts.sum())), 4) for c in counts]


def image_kind(metadata: dict[str, Any]) -> tuple[str, str, str]:
    """A decoded image's bit depth, photometric interpretation and longer side, as text ("15", "MONOCHROME1",
    "1955"): DICOM's own, else what the PNG's or JPEG's mode means."""
    mode = str(metadata.get("mode", ""))
    bits = metadata.get("bits_stored") or _GREY_MODES.get(mode, 8)
    photometric = metadata.get("photometric") or ("MONOCHROME2" if mode in _GREY_MODES else "RGB")
    side = max(int(metadata.get("rows") or 0), int(metadata.get("columns") or 0))
    return str(bits), str(photometric), str(side)


def view(data: bytes | Path | str, source: str, limits: DecodeLimits) -> NDArray[np.uint8]:
    """Decode an image for the tablet alone: its preview, whatever model reads it or none (`ImageRejected` for an
    image that does not decode)."""
    return preview(decode(data, source=source, limits=limits, wanted=Wanted(PREVIEW_LEAST_SIDE, 1)).pixels)


def preview(pixels: NDArray[np.float32]) -> NDArray[np.uint8]:
    """The decoded image (values in [0, 1]) as 8-bit grey or RGB, shrunk to at most PREVIEW_SIDE a side."""
    from PIL import Image

    # Every step-th pixel first (a view, no copy), then to 8 bits a band of rows at a time: no full-size float
    # temporary, which for a large RGB image would cost more than the decoder's whole budget.
    step = max(1, max(pixels.shape[:2]) // (2 * PREVIEW_SIDE))
    view = pixels[::step, ::step]
    eight = np.empty(view.shape, np.uint8)
    for top in range(0, view.shape[0], _BAND):
        eight[top : top + _BAND] = np.round(view[top : top + _BAND] * 255)
    img = Image.fromarray(eight)
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def check_intended_use(manifest: Manifest, image: DecodedImage) -> None:
    """Refuse a DICOM image whose modality, body part or view the model was not made for (PNG/JPEG carry none)."""
    said = (str(image.metadata.get(key, "")) for key in ("modality", "body_part", "view"))
    reason = manifest.intended_use.refuses(*said)
    if reason is not None:
        raise ImageRejected(image.source, reason, "not_intended")
