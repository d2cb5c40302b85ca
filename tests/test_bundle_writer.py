"""The one bundle writer (`edge-convert build` and the reference-model training): all or nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from converters.bundle_writer import listed_files, staged_bundle
from converters.errors import ConversionError
from edge_app.bundles.bundle import load_bundle, write_manifest
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import BundleError

pytestmark = pytest.mark.unit


def _write(staging: Path, version: str) -> None:
    for name in load_bundle(EMBEDDED_BUNDLE).manifest.files:
        shutil.copy(EMBEDDED_BUNDLE / name, staging / name)
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    write_manifest(staging, manifest.model_copy(update={"version": version, "files": listed_files(staging)}))


def test_a_bundle_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with staged_bundle(out) as staging:
        _write(staging, "1.0")
        assert not out.exists(), "nothing at the destination while it is being written"
    assert load_bundle(out).manifest.version == "1.0"
    with pytest.raises(ConversionError, match="exists and is not empty"), staged_bundle(out):
        pass

    with pytest.raises(RuntimeError, match="crash"), staged_bundle(out, replace=True) as staging:
        _write(staging, "2.0")
        raise RuntimeError("crash halfway")
    assert load_bundle(out).manifest.version == "1.0", "the previous bundle stays"

    with pytest.raises(BundleError), staged_bundle(out, replace=True) as staging:
        _write(staging, "2.0")
        (staging / "model.onnx").write_bytes(b"changed after its hash was taken")
    assert load_bundle(out).manifest.version == "1.0", "one that does not load is never put in place"

    with staged_bundle(out, replace=True) as staging:
        _write(staging, "2.0")
    assert load_bundle(out).manifest.version == "2.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "no staging or previous folder left"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="is a file"), staged_bundle(tmp_path / "file"):
        pass


def test_replace_never_swaps_out_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("not a bundle")
    with pytest.raises(ConversionError, match="is not a bundle"), staged_bundle(out, replace=True):
        pass
    assert (out / "notes.txt").read_text() == "not a bundle"
