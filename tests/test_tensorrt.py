"""The TensorRT path where no GPU is: refusals in plain words, the engine cache's keys, the engine I/O check.

GPU tests are marked `gpu` and skipped where no NVIDIA GPU with TensorRT is present.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.errors import BundleError, RuntimeUnavailable
from edge_app.runtime import open_runner
from edge_app.runtime.engines.cache import ENGINE_NAME, FAILED_NAME, META_NAME, EngineCache, Platform, cache_key
from edge_app.runtime.tensorrt import EngineTensor, check_engine_io, current_platform
from support.tools import EDGE_CONVERT

pytestmark = pytest.mark.system

ORIN = Platform("10.3.0", "Orin (nvgpu)", "8.7", sm_count=8, memory_mb=7620, l4t_release="R36.3.0")


def _has_tensorrt() -> bool:
    try:
        current_platform()
    except RuntimeUnavailable:
        return False
    return True


def test_without_tensorrt_the_service_runs_on_onnx_runtime_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    if _has_tensorrt():
        pytest.skip("this machine has TensorRT")
    with caplog.at_level(logging.INFO):
        runner = open_runner(load_bundle(EMBEDDED_BUNDLE), "auto", threads=1)
    assert runner.name == "onnxruntime"
    assert "TensorRT not used: TensorRT is not available on this machine" in caplog.text
    with pytest.raises(RuntimeUnavailable, match="TensorRT is not available on this machine"):
        open_runner(load_bundle(EMBEDDED_BUNDLE), "tensorrt")


def test_edge_convert_engine_says_plainly_there_is_no_tensorrt(tmp_path: Path) -> None:
    if _has_tensorrt():
        pytest.skip("this machine has TensorRT")
    proc = subprocess.run(
        [*EDGE_CONVERT, "engine", str(EMBEDDED_BUNDLE), "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("edge-convert: TensorRT is not available on this machine")
    assert "Traceback" not in proc.stderr


def test_cache_key_changes_with_every_field() -> None:
    sha = "a" * 64
    keys = {
        cache_key(sha, ORIN),
        cache_key("b" * 64, ORIN),
        cache_key(sha, Platform("10.4.0", ORIN.gpu_name, ORIN.compute_capability)),
        cache_key(sha, Platform(ORIN.tensorrt_version, "Xavier", ORIN.compute_capability)),
        cache_key(sha, Platform(ORIN.tensorrt_version, ORIN.gpu_name, "7.2")),
        cache_key(sha, dataclasses.replace(ORIN, dla_core=0)),
        cache_key(sha, dataclasses.replace(ORIN, sm_count=16)),  # an AGX Orin beside a Nano: both "Orin", 8.7
        cache_key(sha, dataclasses.replace(ORIN, memory_mb=15_600)),  # an Orin NX 16 GB beside an 8 GB
        cache_key(sha, dataclasses.replace(ORIN, l4t_release="R36.4.0")),  # a JetPack update
    }
    assert len(keys) == 9


def test_engine_is_found_only_for_its_own_platform(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path)
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {"max_batch": 8})
    assert cache.lookup(bundle, ORIN) == engine
    meta = json.loads((engine.parent / META_NAME).read_text())
    assert meta["bundle_sha256"] == bundle.sha256 and meta["tensorrt_version"] == "10.3.0"
    assert meta["gpu_name"] == "Orin (nvgpu)" and meta["compute_capability"] == "8.7"
    upgraded = dataclasses.replace(ORIN, tensorrt_version="10.7.0")
    assert cache.lookup(bundle, upgraded) is None, "a JetPack upgrade means a rebuild"

    # A manifest that lies about its platform (copied by hand) is refused field by field.
    meta["tensorrt_version"] = "10.7.0"
    (engine.parent / META_NAME).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(bundle, ORIN) is None
    assert "built for another tensorrt_version" in caplog.text


def test_damaged_engine_is_rebuilt(tmp_path: Path) -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path)
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {"max_batch": 8})
    engine.write_bytes(b"serialized engine byteZ")
    assert cache.lookup(bundle, ORIN) is None
    (engine.parent / META_NAME).write_text("{ not json")
    assert cache.lookup(bundle, ORIN) is None
    assert engine.name == ENGINE_NAME


def _io(**change: object) -> list[EngineTensor]:
    image = {"name": "image", "is_input": True, "dtype": "float32", "shape": (-1, 1, 64, 64), **change}
    return [
        EngineTensor(**image),  # type: ignore[arg-type]
        EngineTensor("logits", False, "float32", (-1, 5)),
        EngineTensor("cam", False, "float32", (-1, 5, 4, 4)),
        EngineTensor("input_guard", False, "float32", (-1, 2)),
    ]


def test_engine_io_is_checked_against_the_manifest() -> None:
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    check_engine_io(_io(), manifest)
    with pytest.raises(BundleError, match=r"inputs are \['pixels'\]"):
        check_engine_io(_io(name="pixels"), manifest)
    with pytest.raises(BundleError, match="is float16, the manifest says float32"):
        check_engine_io(_io(dtype="float16"), manifest)
    with pytest.raises(BundleError, match=r"has shape \(-1, 1, 224, 224\)"):
        check_engine_io(_io(shape=(-1, 1, 224, 224)), manifest)
    with pytest.raises(BundleError, match="no output 'cam'"):
        check_engine_io(_io()[:2], manifest)


@pytest.mark.gpu
def test_engine_build_and_run_on_a_gpu(tmp_path: Path) -> None:
    if not _has_tensorrt():
        pytest.skip("needs an NVIDIA GPU with TensorRT and cuda-python")
    from edge_app.runtime.engines.build import BuildOptions, build_engine
    from edge_app.runtime.tensorrt import TensorRTRunner

    bundle = load_bundle(EMBEDDED_BUNDLE)
    engine = build_engine(bundle, EngineCache(tmp_path), BuildOptions(max_batch=4))
    with TensorRTRunner(bundle, engine, 4) as runner:
        out = runner.infer(np.load(bundle.path / "reference_inputs.npy"))
    assert np.allclose(out["logits"], np.load(bundle.path / "reference_outputs.npy"), atol=1e-2)


def test_no_background_engine_build_without_tensorrt(tmp_path: Path) -> None:
    if _has_tensorrt():
        pytest.skip("this machine has TensorRT")
    from edge_app.inference.lifecycle import ModelLifecycle
    from edge_app.store import Store

    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}})
    models = ModelLifecycle(settings, Store(settings.storage.data_dir), load=True, worker_running=lambda: True)
    models.start()
    try:
        assert "engine-build" not in {t.name for t in threading.enumerate()}, "nothing to build"
        assert not settings.engine_cache.exists() or not any(settings.engine_cache.iterdir()), "nothing written"
    finally:
        models.stop()
        models.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bundle_sha256", "0" * 64),
        ("tensorrt_version", "10.7.0"),
        ("gpu_name", "Orin NX (nvgpu)"),
        ("compute_capability", "8.6"),
        ("sm_count", 16),
        ("memory_mb", 15_600),
        ("l4t_release", "R36.4.0"),
        ("dla_core", 0),
    ],
)
def test_an_engine_manifest_that_misreports_any_field_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: object
) -> None:
    """The engine is stored under its key; a manifest edited by hand (or a copied folder) must still not load."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path)
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {"max_batch": 8})
    meta = json.loads((engine.parent / META_NAME).read_text())
    meta[field] = value
    (engine.parent / META_NAME).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(bundle, ORIN) is None
    assert f"built for another {field}" in caplog.text


def test_engine_cache_layout_and_rebuilds(tmp_path: Path) -> None:
    """Engines under a 32-character key in a cache made on first use; engine.json indented for a technician, its
    time to the second; a rebuilt engine replaces the old in place; any change to the bytes is a miss."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path / "not" / "there" / "yet")
    engine = cache.store(bundle, ORIN, b"first build", {"max_batch": 8})
    assert len(engine.parent.name) == 32 and engine.parent.name == cache_key(bundle.sha256, ORIN)
    text = (engine.parent / META_NAME).read_text()
    assert text.startswith('{\n  "bundle_sha256": ') and text.endswith("}\n")
    created = json.loads(text)["created_at"]
    assert created.endswith("+00:00") and "." not in created, "to the second"
    engine = cache.store(bundle, ORIN, b"second build", {"max_batch": 8})
    assert cache.lookup(bundle, ORIN) == engine and engine.read_bytes() == b"second build"
    for damaged in (b"", b"\x00", b"second buil", b"second buildX", b"Second build", b"zzzz"):
        engine.write_bytes(damaged)
        assert cache.lookup(bundle, ORIN) is None, damaged
    with pytest.raises(dataclasses.FrozenInstanceError):
        ORIN.gpu_name = "other"  # type: ignore[misc]


def test_an_engine_without_its_batch_record_is_stale_and_failures_are_stamped_to_the_second(tmp_path: Path) -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    fresh = EngineCache(tmp_path / "not" / "made" / "yet")
    fresh.remember_failure(bundle, ORIN, "the first build on a new box failed")
    assert fresh.failure(bundle, ORIN) is not None, "the cache folder is made for it"
    cache = EngineCache(tmp_path)
    cache.store(bundle, ORIN, b"plan of an older edge-app", {})
    assert cache.lookup(bundle, ORIN) is None, "no max_batch recorded: its profile is unknown, so it is rebuilt"
    single = cache.store(bundle, ORIN, b"plan for one image at a time", {"max_batch": 1})
    assert cache.lookup(bundle, ORIN) == single, "a lookup without a batch asks for one image"
    cache.remember_failure(bundle, ORIN, "it did not build")
    record = cache.failure(bundle, ORIN)
    assert record is not None and record["reason"] == "it did not build"
    assert record["at"].endswith("+00:00") and "." not in record["at"], "to the second"
    assert cache.failure(bundle, dataclasses.replace(ORIN, tensorrt_version="10.4.0")) is None
    failed = cache.folder(bundle, ORIN) / FAILED_NAME
    record = json.loads(failed.read_text())
    failed.write_text(json.dumps({**record, "bundle_sha256": "0" * 64}))  # another bundle's, copied here
    assert cache.failure(bundle, ORIN) is None
    failed.write_text(json.dumps([record]))
    assert cache.failure(bundle, ORIN) is None, "not a record at all"
    failed.write_text(json.dumps(record))
    cache.store(bundle, ORIN, b"plan", {"max_batch": 8})
    assert cache.failure(bundle, ORIN) is None, "a successful build forgets the failure"
