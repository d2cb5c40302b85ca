"""Model bundles: the embedded one loads; tampered, incomplete or malformed ones are refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from edge_app.bundles.bundle import MANIFEST_NAME, load_bundle, read_manifest_of
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import BundleError

pytestmark = pytest.mark.unit


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "bundle"))


def _edit_manifest(bundle_dir: Path, change: dict[str, object]) -> None:
    path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest.update(change)
    path.write_text(json.dumps(manifest))


def test_embedded_reference_bundle_loads() -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    m = bundle.manifest
    assert m.name == "cxr-reference" and m.task == "multilabel" and m.not_for_clinical_use
    assert "NIH Clinical Center" in m.attribution and "nihcc.app.box.com" in m.attribution
    assert m.output.heatmap == "cam"
    assert set(m.files) == {"model.onnx", "MODEL_CARD.md", "reference_inputs.npy", "reference_outputs.npy"}
    assert bundle.model_path.stat().st_size < 5_000_000
    for label in m.labels:
        figures = m.metrics["test_split"][label]
        assert figures["test_auc_95ci"][0] <= figures["test_auc"] <= figures["test_auc_95ci"][1]


def test_changed_byte_is_refused(bundle_dir: Path) -> None:
    model = bundle_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"has been altered: model.onnx has sha256 [0-9a-f]{64}, the manifest says"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("name", sorted(load_bundle(EMBEDDED_BUNDLE).manifest.files))
def test_every_listed_file_is_checked(bundle_dir: Path, name: str) -> None:
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte: a check that stops early does not see it
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"has been altered: {re.escape(name)} has sha256"):
        load_bundle(bundle_dir)


def test_a_file_smuggled_into_a_sub_folder_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "extra").mkdir()
    (bundle_dir / "extra" / "model.onnx").write_bytes(b"smuggled")
    with pytest.raises(BundleError, match=r"does not list: extra/model.onnx"):
        load_bundle(bundle_dir)


def test_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "MODEL_CARD.md").unlink()
    with pytest.raises(BundleError, match=r"incomplete: MODEL_CARD.md is missing"):
        load_bundle(bundle_dir)


def test_wrong_hash_in_manifest_is_refused(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    _edit_manifest(bundle_dir, {"files": {**manifest["files"], "MODEL_CARD.md": "0" * 64}})
    with pytest.raises(BundleError, match=r"altered: MODEL_CARD.md"):
        load_bundle(bundle_dir)


def test_unlisted_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "extra.onnx").write_bytes(b"smuggled")
    with pytest.raises(BundleError, match=r"does not list: extra.onnx"):
        load_bundle(bundle_dir)


def test_missing_manifest_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"has no manifest.json"):
        load_bundle(bundle_dir)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "nothing")


def test_malformed_json_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"thresholds": {"Abnormal": 0.5}}, "one value per label"),
        ({"task": "binary"}, "exactly one label"),
        ({"files": {"../etc/passwd": "0" * 64, "model.onnx": "0" * 64}}, "leaves the bundle"),
        ({"precision": "int4"}, "precision"),
        ({"codes": {"Nodule": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}}}, "codes name labels"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_manifest_is_refused_in_plain_words(bundle_dir: Path, change: dict[str, object], message: str) -> None:
    _edit_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_a_written_manifest_reads_back_the_same(tmp_path: Path) -> None:
    """The converters' and the training script's writer: indented JSON in the schema's order, a final newline."""
    import dataclasses

    from edge_app.bundles.bundle import write_manifest

    bundle = load_bundle(EMBEDDED_BUNDLE)
    write_manifest(tmp_path, bundle.manifest)
    text = (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8")
    assert text == (EMBEDDED_BUNDLE / MANIFEST_NAME).read_text(encoding="utf-8"), "the embedded one was written so"
    assert text.startswith('{\n  "schema_version": 1,\n  "name": "cxr-reference",\n') and text.endswith("}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.sha256 = "0" * 64  # type: ignore[misc]


def test_a_results_manifest_is_read_only_where_its_bytes_are_the_bundles(tmp_path: Path) -> None:
    """A result's card: the manifest whose sha256 is the bundle's; another, a missing folder, one that does not
    parse (its own sha256 given) or a folder in its place: none."""
    import hashlib

    sha = hashlib.sha256((EMBEDDED_BUNDLE / MANIFEST_NAME).read_bytes()).hexdigest()
    found = read_manifest_of(EMBEDDED_BUNDLE, sha)
    assert found is not None and found.name == "cxr-reference"
    assert read_manifest_of(EMBEDDED_BUNDLE, "0" * 64) is None and read_manifest_of(EMBEDDED_BUNDLE, "f" * 64) is None
    assert read_manifest_of(tmp_path / "gone", sha) is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_bytes(b'{"name": ')
    assert read_manifest_of(broken, hashlib.sha256(b'{"name": ').hexdigest()) is None
    (tmp_path / "folder" / MANIFEST_NAME).mkdir(parents=True)
    assert read_manifest_of(tmp_path / "folder", sha) is None
