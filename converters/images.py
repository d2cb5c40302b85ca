"""Image folders for calibration and validation, read through the service's own decode and preprocessing."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from converters.errors import ConversionError
from edge_app.bundles.manifest import InputSpec, Preprocessing
from edge_app.errors import ImageRejected
from edge_app.imaging import decode, preprocess
from edge_app.imaging.prepare import image_kind, intensity_histogram

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Preprocessed images of a folder, with the names of those used and of those refused."""

    names: list[str]
    tensors: NDArray[np.generic]
    rejected: dict[str, str]
    intensity: list[list[float]]  # each image's intensity histogram, as the box records it (`intensity_histogram`)
    kinds: list[tuple[str, str, str]]  # each image's bits, photometric interpretation and longer side


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def load_images(folder: Path, spec: InputSpec, prep: Preprocessing) -> ImageSet:
    """Decode and preprocess every DICOM/PNG/JPEG in `folder` (recursively); refused files are listed, not fatal."""
    return load_files(image_files(folder), folder, spec, prep)


def load_files(files: list[Path], root: Path, spec: InputSpec, prep: Preprocessing) -> ImageSet:
    """Decode and preprocess `files` (named relative to `root`) through the service's own imaging code."""
    names: list[str] = []
    tensors: list[NDArray[np.generic]] = []
    rejected: dict[str, str] = {}
    intensity: list[list[float]] = []
    kinds: list[tuple[str, str, str]] = []
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            image = decode(path)
            tensors.append(preprocess(image.pixels, spec, prep))
        except ImageRejected as exc:
            rejected[name] = exc.reason
            continue
        names.append(name)
        intensity.append(intensity_histogram(image.pixels))
        kinds.append(image_kind(image.metadata))
    if not names:
        raise ConversionError(f"no usable image in {root} ({len(rejected)} refused)")
    if rejected:
        log.warning("%d file(s) in %s refused, e.g. %s", len(rejected), root, next(iter(rejected.items())))
    return ImageSet(names, np.concatenate(tensors, axis=0), rejected, intensity, kinds)


def batches(x: NDArray[np.generic], size: int) -> Iterator[NDArray[np.generic]]:
    for i in range(0, len(x), size):
        yield x[i : i + size]


def read_labels(path: Path, names: list[str], labels: tuple[str, ...], file_column: str) -> dict[str, NDArray[np.int8]]:
    """0/1 ground truth per label from a CSV with a file column and one column per label (those present)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConversionError(f"labels {path}: cannot be read ({exc})") from None
    if not rows or file_column not in rows[0]:
        raise ConversionError(f"labels {path}: no column {file_column!r} naming the image files")
    by_name = {Path(r[file_column]).name: r for r in rows}
    present = [label for label in labels if label in rows[0]]
    if not present:
        raise ConversionError(f"labels {path}: no column for any label ({', '.join(labels)})")
    missing = [n for n in names if Path(n).name not in by_name]
    if missing:
        raise ConversionError(f"labels {path}: no row for {len(missing)} image(s), e.g. {missing[0]}")
    out = {}
    for label in present:
        try:
            out[label] = np.array([int(by_name[Path(n).name][label]) for n in names], dtype=np.int8)
        except ValueError as exc:
            raise ConversionError(f"labels {path}: column {label!r} must hold 0 or 1 ({exc})") from None
    return out
