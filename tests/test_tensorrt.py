"""The TensorRT path where no GPU is: refusals in plain words, the engine cache's keys, the engine I/O check.

GPU tests are marked `gpu` and skipped where no NVIDIA GPU with TensorRT is present.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_app.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import BundleError, RuntimeUnavailable
from edge_app.runtime import open_runner
from edge_app.runtime.engine_cache import ENGINE_NAME, META_NAME, EngineCache, Platform, cache_key
from edge_app.runtime.tensorrt import EngineTensor, check_engine_io, current_platform

ORIN = Platform("10.3.0", "Orin (nvgpu)", "8.7")


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
    exe = Path(sys.executable).parent / "edge-convert"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "converters.cli"]
    proc = subprocess.run(
        [*cmd, "engine", str(EMBEDDED_BUNDLE), "--cache", str(tmp_path)], capture_output=True, text=True, timeout=60
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
        cache_key(sha, Platform(ORIN.tensorrt_version, ORIN.gpu_name, ORIN.compute_capability, dla_core=0)),
    }
    assert len(keys) == 6


def test_engine_is_found_only_for_its_own_platform(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path)
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {"max_batch": 8})
    assert cache.lookup(bundle, ORIN) == engine
    meta = json.loads((engine.parent / META_NAME).read_text())
    assert meta["bundle_sha256"] == bundle.sha256 and meta["tensorrt_version"] == "10.3.0"
    assert meta["gpu_name"] == "Orin (nvgpu)" and meta["compute_capability"] == "8.7"
    upgraded = Platform("10.7.0", ORIN.gpu_name, ORIN.compute_capability)
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
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {})
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
        pytest.skip("needs an NVIDIA GPU with TensorRT and pycuda")
    from edge_app.runtime.tensorrt import TensorRTRunner
    from edge_app.runtime.tensorrt_build import BuildOptions, build_engine

    bundle = load_bundle(EMBEDDED_BUNDLE)
    engine = build_engine(bundle, EngineCache(tmp_path), BuildOptions(max_batch=4))
    with TensorRTRunner(bundle, engine, 4) as runner:
        out = runner.infer(np.load(bundle.path / "reference_inputs.npy"))
    assert np.allclose(out["logits"], np.load(bundle.path / "reference_outputs.npy"), atol=1e-2)


def test_no_background_engine_build_without_tensorrt(tmp_path: Path) -> None:
    if _has_tensorrt():
        pytest.skip("this machine has TensorRT")
    from edge_app.runtime.select import build_engine_in_background

    started = build_engine_in_background(load_bundle(EMBEDDED_BUNDLE), tmp_path, 8, lambda runner: None)
    assert started is None
    assert not any(tmp_path.iterdir()), "nothing is written where nothing can be built"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bundle_sha256", "0" * 64),
        ("tensorrt_version", "10.7.0"),
        ("gpu_name", "Orin NX (nvgpu)"),
        ("compute_capability", "8.6"),
        ("dla_core", 0),
    ],
)
def test_an_engine_manifest_that_misreports_any_field_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: object
) -> None:
    """The engine is stored under its key; a manifest edited by hand (or a copied folder) must still not load."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path)
    engine = cache.store(bundle, ORIN, b"serialized engine bytes", {})
    meta = json.loads((engine.parent / META_NAME).read_text())
    meta[field] = value
    (engine.parent / META_NAME).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(bundle, ORIN) is None
    assert f"built for another {field}" in caplog.text


def test_engine_cache_layout_and_rebuilds(tmp_path: Path) -> None:
    """Engines under a 32-character key in a cache made on first use; engine.json indented for a technician, its
    time to the second; a rebuilt engine replaces the old in place; any change to the bytes is a miss."""
    import dataclasses

    bundle = load_bundle(EMBEDDED_BUNDLE)
    cache = EngineCache(tmp_path / "not" / "there" / "yet")
    engine = cache.store(bundle, ORIN, b"first build", {})
    assert len(engine.parent.name) == 32 and engine.parent.name == cache_key(bundle.sha256, ORIN)
    text = (engine.parent / META_NAME).read_text()
    assert text.startswith('{\n  "bundle_sha256": ') and text.endswith("}\n")
    created = json.loads(text)["created_at"]
    assert created.endswith("+00:00") and "." not in created, "to the second"
    engine = cache.store(bundle, ORIN, b"second build", {})
    assert cache.lookup(bundle, ORIN) == engine and engine.read_bytes() == b"second build"
    for damaged in (b"", b"\x00", b"second buil", b"second buildX", b"Second build", b"zzzz"):
        engine.write_bytes(damaged)
        assert cache.lookup(bundle, ORIN) is None, damaged
    with pytest.raises(dataclasses.FrozenInstanceError):
        ORIN.gpu_name = "other"  # type: ignore[misc]


def _stand_in_gpu(monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """A `tensorrt` and a `pycuda` that say a GPU is there, and whose runtime cannot load the cached engine:
    `old-engine` (built by another TensorRT version: deserialize_cuda_engine gives None, as on a Jetson whose
    JetPack was upgraded under its engine cache) or `driver-fault` (it raises). Third-party stand-ins."""
    import types

    class Context:
        def push(self) -> None:
            pass

        def pop(self) -> None:
            pass

        def detach(self) -> None:
            pass

    class Device:
        def __init__(self, index: int) -> None:
            pass

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Orin"

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def retain_primary_context(self) -> Context:
            return Context()

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Error = RuntimeError  # type: ignore[attr-defined]
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> None:
            if failure == "old-engine":
                return None
            raise RuntimeError("CUDA error 999: unknown error")

    trt = types.ModuleType("tensorrt")
    trt.__file__ = "/usr/lib/python3/dist-packages/tensorrt/__init__.py"
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    for name, module in (("tensorrt", trt), ("pycuda", pycuda), ("pycuda.driver", driver)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("failure", ["old-engine", "driver-fault"])
def test_auto_falls_back_to_onnx_runtime_whatever_stops_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    """runner = "auto" never stops the service over TensorRT: an engine it cannot load, a CUDA fault; it says why
    and serves on ONNX Runtime. Asked for TensorRT by name, the same failure is an error."""
    from edge_app.runtime.engine_cache import EngineCache
    from edge_app.runtime.select import open_runner
    from edge_app.runtime.tensorrt import current_platform

    _stand_in_gpu(monkeypatch, failure)
    bundle = load_bundle(EMBEDDED_BUNDLE)
    EngineCache(tmp_path).store(bundle, current_platform(), b"a plan", {})
    caplog.set_level(logging.INFO)
    runner = open_runner(bundle, "auto", 1, tmp_path)
    try:
        assert runner.name == "onnxruntime"
        said = (
            "BundleError: TensorRT cannot load the engine"
            if failure == "old-engine"
            else "RuntimeError: CUDA error 999"
        )
        assert any("TensorRT not used" in r.message and said in r.message for r in caplog.records), caplog.text
    finally:
        runner.deactivate()
    with pytest.raises(Exception, match=r"cannot load the engine|CUDA error 999"):
        open_runner(bundle, "tensorrt", 1, tmp_path)


def test_only_the_service_starts_an_engine_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`edge-app diagnose` and `bench` never start a TensorRT build (minutes, a gigabyte of memory); the service
    does, in the background, where TensorRT is there and no engine is (stand-in modules, as above)."""
    from edge_app.config import Settings
    from edge_app.pipeline import Diagnoser

    _stand_in_gpu(monkeypatch, "old-engine")
    settings = Settings.model_validate(
        {"storage": {"data_dir": str(tmp_path)}, "model": {"threads": 1, "engine_cache": str(tmp_path / "engines")}}
    )
    caplog.set_level(logging.INFO)
    Diagnoser.from_settings(settings).close()  # as diagnose and bench make it
    assert "building it in the background" not in caplog.text
    Diagnoser.from_settings(settings, build_engine=True).close()  # as the service makes it
    assert "building it in the background, serving on ONNX Runtime meanwhile" in caplog.text
