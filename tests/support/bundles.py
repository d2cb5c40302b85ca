"""Model bundles made from the reference one, and a converter spec."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.bundles.bundle import load_bundle, sha256_file, write_manifest
from edge_app.bundles.manifest import IntendedUse, Manifest
from edge_app.config import EMBEDDED_BUNDLE


def bundle_variant(tmp_path: Path, version: str, change: Callable[[Path], None] | None = None) -> Path:
    """The reference bundle as another version (so another sha256), optionally with a file changed and
    re-listed (a bundle whose hashes hold but whose content is wrong)."""
    folder = tmp_path / f"bundle-{version}"
    shutil.copytree(EMBEDDED_BUNDLE, folder)
    manifest = load_bundle(folder).manifest
    files = dict(manifest.files)
    if change is not None:
        change(folder)
        files = {name: sha256_file(folder / name) for name in files}
    write_manifest(folder, manifest.model_copy(update={"version": version, "files": files}))
    load_bundle(folder)
    return folder


def bundle_named(tmp_path: Path, name: str, update: Callable[[Manifest], dict[str, Any]]) -> Path:
    """The reference bundle as a model `name`, the manifest's fields `update` gives (from the reference's) replaced."""
    folder = tmp_path / f"bundle-{name}"
    shutil.copytree(EMBEDDED_BUNDLE, folder)
    manifest = load_bundle(folder).manifest
    write_manifest(folder, manifest.model_copy(update={"name": name, **update(manifest)}))
    load_bundle(folder)
    return folder


def bundle_for(tmp_path: Path, name: str, modality: tuple[str, ...]) -> Path:
    """The reference bundle as a model `name` made for other modalities (any body part, any view): its input guard,
    fitted on chest X-rays, left off, so that what it is given is read."""
    use = IntendedUse(modality=modality, description=f"{name}: a demonstration on {', '.join(modality)} images")
    return bundle_named(tmp_path, name, lambda _: {"intended_use": use, "guard": None})


# A Keras export's spec (an Xception-style CXR classifier: NHWC 150x150x3, x/127.5 - 1, softmax of two classes).
KERAS_SPEC = """
name = "keras-style"
version = "0.1"
task = "multiclass"
labels = ["normal", "abnormal"]
thresholds = 0.5
input = { name = "input_1", layout = "NHWC", height = 150, width = 150, channels = 3 }
preprocessing = { geometry = "stretch", interpolation = "nearest", scale = [-1.0, 1.0] }
output = { name = "probs", activation = "none" }
"""
