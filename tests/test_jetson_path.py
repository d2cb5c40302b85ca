"""The Jetson path in CI: runner, engine builds, cache, DLA and fallbacks against tests/fake_gpu, a `tensorrt` and
`cuda-python` that compute with ONNX Runtime (real memory at real addresses; builds in a real child process)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.bundles.bundle import Bundle, load_bundle, write_manifest
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.errors import BundleError, RuntimeUnavailable
from edge_app.runtime import open_runner
from edge_app.runtime.cuda import l4t_release
from edge_app.runtime.engines.build import BuildOptions, EngineBuildError
from edge_app.runtime.engines.build_process import BuildCancelled, BuildLimits, build_isolated
from edge_app.runtime.engines.cache import ENGINE_NAME, FAILED_NAME, META_NAME, EngineCache
from edge_app.runtime.engines.ensure import ensure_engines
from edge_app.runtime.onnx import OnnxRuntimeRunner
from edge_app.runtime.tensorrt import TensorRTRunner, current_platform
from edge_app.service import Service
from edge_app.web import create_app
from support.bundles import bundle_variant
from support.tools import EDGE_APP, EDGE_CONVERT

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("fake_gpu")]


@pytest.fixture
def bundle() -> Bundle:
    return load_bundle(EMBEDDED_BUNDLE)


def _batch(bundle: Bundle, n: int, seed: int = 0) -> np.ndarray:
    m = bundle.manifest.input
    return np.random.default_rng(seed).random((n, m.channels, m.height, m.width), dtype=np.float32)


def _settings(tmp_path: Path, **model: object) -> Settings:
    return Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1, **model}})


def test_an_engine_built_in_its_own_process_runs_like_onnx_runtime(tmp_path: Path, bundle: Bundle) -> None:
    """Built by a child process, checked against the bundle's reference outputs, cached readable by every user,
    and run with buffers from the profile: a batch of max_batch, and one larger than it in parts."""
    cache = EngineCache(tmp_path / "engines")
    lines: list[str] = []
    engine = build_isolated(bundle, cache, BuildOptions(max_batch=4), progress=lines.append)
    assert any(line.startswith("building the FP32 TensorRT 10.3.0 engine of cxr-reference 1.1.1") for line in lines)
    assert lines[-1].startswith("engine built in ") and "peak host memory" in lines[-1]
    meta = json.loads((engine.parent / META_NAME).read_text())
    assert meta["build"]["max_batch"] == 4 and meta["build"]["reference_max_abs_diff"] < 1e-6
    assert (meta["gpu_name"], meta["sm_count"], meta["memory_mb"]) == ("Orin", 8, 7620)
    for path in (engine, engine.parent / META_NAME):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(engine.parent.stat().st_mode) == 0o755
    with TensorRTRunner(bundle, engine, 4) as trt, OnnxRuntimeRunner(bundle, threads=1) as ort:
        for n in (1, 4, 9):
            got, want = trt.infer(_batch(bundle, n, n)), ort.infer(_batch(bundle, n, n))
            assert set(got) == set(want)
            for name in want:
                assert got[name].shape == want[name].shape and got[name].dtype == np.float32
                assert np.allclose(got[name], want[name], atol=1e-6), (name, n)


def test_inference_from_eight_threads_gives_each_its_own_answer(tmp_path: Path, bundle: Bundle) -> None:
    """The runner's lock covers the copy-in, the run and the copy-out: no thread gets another's outputs."""
    engine = build_isolated(bundle, EngineCache(tmp_path), BuildOptions(max_batch=2))
    with OnnxRuntimeRunner(bundle, threads=1) as ort:
        expected = [ort.infer(_batch(bundle, 1 + i % 2, i))["logits"] for i in range(8)]
    errors: list[str] = []
    with TensorRTRunner(bundle, engine, 2) as trt:

        def work(i: int) -> None:
            for _ in range(15):
                got = trt.infer(_batch(bundle, 1 + i % 2, i))["logits"]
                if got.shape != expected[i].shape or not np.allclose(got, expected[i], atol=1e-6):
                    errors.append(f"thread {i} got another batch's outputs")
                    return

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors


def test_an_engine_whose_profile_is_smaller_than_max_batch_is_rebuilt_never_used(
    tmp_path: Path, bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path)
    small = build_isolated(bundle, cache, BuildOptions(max_batch=2))
    platform = current_platform()
    assert cache.lookup(bundle, platform, 2) == small
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(bundle, platform, 3) is None
    assert "takes batches up to 2, not 3: rebuilding" in caplog.text
    with pytest.raises(BundleError, match=r"takes batches up to 2, model\.max_batch is 3: it must be rebuilt"):
        TensorRTRunner(bundle, small, 3).activate()
    runner = open_runner(bundle, "auto", 1, tmp_path, max_batch=3)
    assert runner.name == "onnxruntime", "never the small engine"
    runner.deactivate()
    larger = build_isolated(bundle, cache, BuildOptions(max_batch=3))
    assert larger == small, "the same cache folder, rebuilt in place"
    assert json.loads((larger.parent / META_NAME).read_text())["build"]["max_batch"] == 3
    runner = open_runner(bundle, "auto", 1, tmp_path, max_batch=3)
    assert runner.name == "tensorrt"
    runner.deactivate()


def _fp16(tmp_path: Path) -> Bundle:
    folder = bundle_variant(tmp_path, "1.1.1-fp16")
    manifest = load_bundle(folder).manifest
    write_manifest(folder, manifest.model_copy(update={"precision": "fp16"}))
    return load_bundle(folder)


def test_dla_engines_have_one_batch_size_need_fp16_or_int8_and_are_looked_up_by_core(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    fake_gpu.setenv("FAKE_TRT_DLA_CORES", "2")
    cache = EngineCache(tmp_path / "engines")
    with pytest.raises(EngineBuildError, match="the DLA runs FP16 or INT8 only and this bundle is fp32"):
        build_isolated(bundle, cache, BuildOptions(max_batch=2, dla_core=1))
    with pytest.raises(EngineBuildError, match="DLA core 2 asked for; this device has 2"):
        build_isolated(_fp16(tmp_path / "a"), cache, BuildOptions(max_batch=2, dla_core=2))
    half = _fp16(tmp_path / "b")
    engine = build_isolated(half, cache, BuildOptions(max_batch=2, dla_core=1))
    assert cache.lookup(half, current_platform(1), 2) == engine
    assert cache.lookup(half, current_platform(None), 2) is None, "a GPU lookup never finds a DLA engine"
    assert cache.lookup(half, current_platform(0), 2) is None, "nor another core's"
    with pytest.raises(BundleError, match="cannot load the engine"):
        TensorRTRunner(half, engine, 2).activate()  # without IRuntime.DLA_core TensorRT refuses a DLA engine
    with TensorRTRunner(half, engine, 2, dla_core=1) as runner, OnnxRuntimeRunner(half, threads=1) as ort:
        for n in (1, 2, 3):  # one image padded to the engine's fixed batch; three in two runs
            got, want = runner.infer(_batch(half, n, n))["logits"], ort.infer(_batch(half, n, n))["logits"]
            assert got.shape == want.shape and np.allclose(got, want, atol=2e-3), n
    runner = open_runner(half, "tensorrt", 1, tmp_path / "engines", max_batch=2, dla_core=1)
    assert runner.name == "tensorrt"
    runner.deactivate()
    with pytest.raises(RuntimeUnavailable, match="no engine of this bundle for DLA core 0 of Orin"):
        open_runner(half, "tensorrt", 1, tmp_path / "engines", max_batch=2, dla_core=0)


def test_orin_modules_and_jetpack_releases_get_their_own_engines(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    nano = current_platform()
    fake_gpu.setenv("FAKE_GPU_SMS", "16")
    fake_gpu.setenv("FAKE_GPU_MEMORY_MB", "62800")
    agx = current_platform()
    assert (nano.gpu_name, nano.compute_capability) == (agx.gpu_name, agx.compute_capability) == ("Orin", "8.7")
    assert (nano.sm_count, nano.memory_mb, agx.sm_count, agx.memory_mb) == (8, 7620, 16, 62800)
    cache = EngineCache(tmp_path)
    cache.store(bundle, nano, b"plan", {"max_batch": 8})
    assert cache.lookup(bundle, agx, 8) is None
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
        "DATE: Fri Jul 19 23:24:25 UTC 2024\n"
    )
    assert l4t_release(release) == "R36.3.0"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    assert l4t_release(release) == "R35.4.1"
    assert l4t_release(tmp_path / "absent") == ""


@pytest.mark.parametrize("fault", ["old-engine", "cuda"])
def test_auto_falls_back_to_onnx_runtime_whatever_stops_tensorrt(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """runner = "auto" never stops over TensorRT: an engine of another TensorRT version (JetPack upgraded under
    the cache), CUDA failing; it says why and serves on ONNX Runtime. Asked for by name, it is an error."""
    if fault == "old-engine":  # a plan of TensorRT 10.2 filed under 10.3 (a folder copied from another box)
        fake_gpu.setenv("FAKE_TRT_VERSION", "10.2.0")
        old = build_isolated(bundle, EngineCache(tmp_path / "old"), BuildOptions(max_batch=8))
        fake_gpu.setenv("FAKE_TRT_VERSION", "10.3.0")
        fake_gpu.delitem(sys.modules, "tensorrt")
        EngineCache(tmp_path).store(bundle, current_platform(), old.read_bytes(), {"max_batch": 8})
        said = "BundleError: TensorRT cannot load the engine"
    else:
        build_isolated(bundle, EngineCache(tmp_path), BuildOptions(max_batch=8))
        fake_gpu.setenv("FAKE_TRT_FAULT", "cuda")
        said = "no usable CUDA GPU on this machine (CUDA error cudaErrorUnknown)"
    caplog.set_level(logging.INFO)
    runner = open_runner(bundle, "auto", 1, tmp_path)
    try:
        assert runner.name == "onnxruntime"
        assert any("TensorRT not used" in r.message and said in r.message for r in caplog.records), caplog.text
    finally:
        runner.deactivate()
    with pytest.raises(Exception, match=r"cannot load the engine|cudaErrorUnknown"):
        open_runner(bundle, "tensorrt", 1, tmp_path)


def test_a_failed_build_is_remembered_and_not_retried_at_every_start(
    tmp_path: Path, fake_gpu: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    fake_gpu.setenv("FAKE_TRT_FAULT", "build")
    (entry,) = ensure_engines(settings).values()
    assert entry["status"] == "failed"
    assert entry["detail"].startswith("TensorRT could not build the engine (see its log above)")
    assert entry["detail"].endswith(": the service runs it on ONNX Runtime")
    (record,) = settings.engine_cache.glob(f"*/{FAILED_NAME}")
    assert json.loads(record.read_text())["tensorrt_version"] == "10.3.0"

    fake_gpu.delenv("FAKE_TRT_FAULT")  # would now succeed, but is not tried at the next start
    started = time.monotonic()
    (entry,) = ensure_engines(settings).values()
    assert entry["status"] == "failed" and "failed before (TensorRT could not build" in entry["detail"]
    assert "edge-app engines --retry" in entry["detail"] and time.monotonic() - started < 2

    (entry,) = ensure_engines(settings, retry=True).values()
    assert entry["status"] == "built" and not record.exists()
    (entry,) = ensure_engines(settings).values()
    assert entry["status"] == "cached"


def test_an_engine_that_drifts_from_the_reference_outputs_is_refused(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    fake_gpu.setenv("FAKE_TRT_FAULT", "drift")
    cache = EngineCache(tmp_path)
    with pytest.raises(EngineBuildError, match=r"drifts from the bundle's reference outputs: max probability"):
        build_isolated(bundle, cache, BuildOptions(max_batch=2))
    assert not list(tmp_path.glob("*/engine.plan")), "a refused engine is never cached"
    assert cache.failure(bundle, current_platform()) is not None


def _plan_header(engine: Path) -> dict[str, Any]:
    plan = engine.read_bytes()
    size = int.from_bytes(plan[8:12], "little")
    return dict(json.loads(plan[12 : 12 + size]))


def test_an_fp16_engine_keeps_the_input_guard_in_fp32(tmp_path: Path, bundle: Bundle) -> None:
    """Every layer of the guard's nodes is constrained to FP32, and the builder told to obey; the model's own
    layers are left to TensorRT. An FP32 bundle needs no constraint."""
    import onnx

    guard = {n.name for n in onnx.load(str(bundle.model_path)).graph.node if n.name.startswith("guard_")}
    assert len(guard) > 5
    cache = EngineCache(tmp_path / "engines")
    assert set(_plan_header(build_isolated(_fp16(tmp_path), cache, BuildOptions(max_batch=2)))["fp32_layers"]) == guard
    assert _plan_header(build_isolated(bundle, cache, BuildOptions(max_batch=2)))["fp32_layers"] == []


def test_an_engine_whose_input_guard_judges_otherwise_is_refused(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    """Scores within tolerance but the guard's output NaN (an FP16 overflow): the reference inputs ONNX Runtime
    lets in would all be refused by this engine, so it is refused, with the verdicts."""
    fake_gpu.setenv("FAKE_TRT_FAULT", "nan:input_guard")
    cache = EngineCache(tmp_path)
    with pytest.raises(
        EngineBuildError,
        match=r"input guard does not judge .*input 0: outside \(density not a number\), expected inside",
    ):
        build_isolated(_fp16(tmp_path / "b"), cache, BuildOptions(max_batch=2))
    assert not list(tmp_path.glob("*/engine.plan")), "a refused engine is never cached"


def test_a_build_past_its_memory_or_time_is_stopped(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    cache = EngineCache(tmp_path)
    fake_gpu.setenv("FAKE_TRT_BUILD_MB", "700")
    fake_gpu.setenv("FAKE_TRT_BUILD_S", "20")
    with pytest.raises(EngineBuildError, match="took more than 512 MB of memory and was stopped"):
        build_isolated(bundle, cache, BuildOptions(), BuildLimits(memory_mb=512, timeout_s=60))
    fake_gpu.setenv("FAKE_TRT_BUILD_MB", "0")
    started = time.monotonic()
    with pytest.raises(EngineBuildError, match="took longer than 2 s and was stopped"):
        build_isolated(bundle, cache, BuildOptions(), BuildLimits(memory_mb=2048, timeout_s=2), retry=True)
    assert time.monotonic() - started < 10
    assert "took longer than 2 s" in str(cache.failure(bundle, current_platform()))


def test_the_service_builds_in_the_background_swaps_and_cancels_at_stop(
    tmp_path: Path, fake_gpu: pytest.MonkeyPatch, nih_png: Path
) -> None:
    """At start, a model serving on ONNX Runtime for want of its engine gets it built in the background and moves
    to it between two images (same findings); a stopping service cancels a build under way without waiting."""
    from edge_app.inference.lifecycle import ModelLifecycle
    from edge_app.store import Store

    def lifecycle(settings: Settings) -> ModelLifecycle:
        return ModelLifecycle(settings, Store(settings.storage.data_dir), load=True, worker_running=lambda: True)

    settings = _settings(tmp_path, max_batch=2)
    models = lifecycle(settings)
    try:
        assert models.registry is not None
        first_model = models.registry.diagnosers[0]
        assert first_model.runner.name == "onnxruntime"
        models.start()
        first = first_model.diagnose(nih_png)
        _wait(lambda: models.registry.diagnosers[0].runner.name == "tensorrt", "the engine built at start")  # type: ignore[union-attr]
        second = models.registry.diagnosers[0].diagnose(nih_png)
        assert second.model["runner"] == "tensorrt"
        assert [f.probability for f in first.findings] == pytest.approx([f.probability for f in second.findings])
    finally:
        models.stop()
        models.close()

    fake_gpu.setenv("FAKE_TRT_BUILD_S", "60")
    other = _settings(tmp_path / "other", max_batch=2)
    models = lifecycle(other)
    models.start()
    time.sleep(1.5)  # the build process is running
    started = time.monotonic()
    models.stop()
    assert time.monotonic() - started < 15, "a stopping service does not wait for a build"
    models.close()
    assert not list(other.engine_cache.glob("*/engine.plan"))
    assert not list(other.engine_cache.glob(f"*/{FAILED_NAME}")), "a cancelled build is not a failed one"


def test_a_cancelled_build_raises_and_leaves_nothing(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    fake_gpu.setenv("FAKE_TRT_BUILD_S", "60")
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(BuildCancelled, match="cancelled"):
        build_isolated(bundle, EngineCache(tmp_path), BuildOptions(), cancel=cancel)
    assert time.monotonic() - started < 15
    assert not list(tmp_path.glob("*/*"))


def test_one_tensorrt_logger_per_process(tmp_path: Path, bundle: Bundle) -> None:
    import tensorrt

    engine = build_isolated(bundle, EngineCache(tmp_path), BuildOptions(max_batch=1))
    made = tensorrt.LOGGERS_MADE
    for _ in range(3):
        TensorRTRunner(bundle, engine, 1).activate()
    assert tensorrt.LOGGERS_MADE - made <= 1


def test_edge_app_engines_on_a_jetson(tmp_path: Path) -> None:
    """What the appliance's edge-app-engine.service runs: built, then cached; the engine readable by every user
    though `edge-app` keeps its data to its owner (the service's user reads what a technician built)."""
    config = tmp_path / "edge-app.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[model]\nmax_batch = 2\n')
    run = [*EDGE_APP, "--config", str(config), "engines"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o022))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("cxr-reference 1.1.1: built: ")
    (engine,) = (tmp_path / "data" / "engines").glob(f"*/{ENGINE_NAME}")
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (engine, engine.parent / META_NAME, engine.parent)]
    assert modes == [0o644, 0o644, 0o755]
    second = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert second.stdout.startswith("cxr-reference 1.1.1: cached: ")


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def jetson_service(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> tuple[Service, Callable[[], dict[str, Any]], FlaskClient]:
    """The service on the fake Jetson, once the configured model runs on its engine: (service, health, client)."""
    svc = service(_settings(tmp_path, max_batch=2))
    client = api_client(create_app(svc))
    health = lambda: client.get("/api/v1/health").get_json()  # noqa: E731
    _wait(lambda: health()["runner"] == "tensorrt", "the configured model's engine")
    return svc, health, client


def test_a_model_update_is_put_in_service_only_with_an_engine_that_passes_its_check(
    tmp_path: Path,
    fake_gpu: pytest.MonkeyPatch,
    jetson_service: tuple[Service, Callable[[], dict[str, Any]], FlaskClient],
    nih_png: Path,
) -> None:
    """On a Jetson a new model serves once its engine is built and reproduces the bundle's reference outputs;
    the running model serves meanwhile. An engine that fails its check leaves the running model in service (and
    recorded so: a restart keeps it), with the reason on /api/v1/health."""
    svc, health, client = jetson_service
    fake_gpu.setenv("FAKE_TRT_FAULT", "drift")  # engines built from now on compute wrong
    svc.lifecycle.activate(bundle_variant(tmp_path, "1.2.0"), "boss")
    _wait(lambda: health()["problem"] is not None, "the update's engine check")
    now = health()
    assert (now["status"], now["version"], now["runner"]) == ("degraded", "1.1.1", "tensorrt")
    assert now["problem"].startswith("cxr-reference 1.2.0 was not put in service (the engine drifts from the ")
    assert now["problem"].endswith("engine refused): the previous model runs")
    result = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json()
    assert result["images"][0]["results"][0]["model"]["version"] == "1.1.1"
    assert svc.lifecycle.history.activations()[0].version == "1.1.1", "recorded: a restart keeps the running model"

    fake_gpu.delenv("FAKE_TRT_FAULT")
    svc.lifecycle.activate(bundle_variant(tmp_path, "1.3.0"), "boss")
    _wait(lambda: health()["version"] == "1.3.0", "the good update")
    now = health()
    assert (now["status"], now["runner"], now["problem"]) == ("ok", "tensorrt", None)


def test_a_model_chosen_while_another_waits_for_its_engine_wins(
    tmp_path: Path,
    fake_gpu: pytest.MonkeyPatch,
    jetson_service: tuple[Service, Callable[[], dict[str, Any]], FlaskClient],
) -> None:
    """An administrator puts 1.2.0 in service (its engine takes a while), then changes their mind for 1.1.1
    (engine ready): 1.1.1 serves, and 1.2.0's build finishing later changes nothing."""
    svc, health, _ = jetson_service
    fake_gpu.setenv("FAKE_TRT_BUILD_S", "3")
    svc.lifecycle.activate(bundle_variant(tmp_path, "1.2.0"), "boss")
    svc.lifecycle.activate(EMBEDDED_BUNDLE, "boss")
    time.sleep(6)  # 1.2.0's build is over (or cancelled)
    assert (health()["version"], health()["problem"]) == ("1.1.1", None)
    assert svc.lifecycle.history.activations()[0].version == "1.1.1"


def test_a_restart_while_an_update_waits_for_its_engine_serves_the_previous_model_first(
    tmp_path: Path,
    fake_gpu: pytest.MonkeyPatch,
    api_client: Callable[[Flask], FlaskClient],
    service: Callable[..., Service],
) -> None:
    """Never an unchecked model after a restart: the one before it serves until its engine passes."""
    settings = _settings(tmp_path, max_batch=2)
    with Service(settings) as svc:  # stopped at the end of the block: a power cut, the build never finished
        client = api_client(create_app(svc))
        health = lambda: client.get("/api/v1/health").get_json()  # noqa: E731
        _wait(lambda: health()["runner"] == "tensorrt", "the configured model's engine")
        fake_gpu.setenv("FAKE_TRT_BUILD_S", "60")
        svc.lifecycle.activate(bundle_variant(tmp_path, "1.2.0"), "boss")
        time.sleep(1)
    fake_gpu.setenv("FAKE_TRT_BUILD_S", "2")
    client = api_client(create_app(service(settings)))
    assert health()["version"] == "1.1.1", "the model before it, with its checked engine"
    _wait(lambda: health()["version"] == "1.2.0", "1.2.0 once its engine passed")
    assert health()["runner"] == "tensorrt"


def test_builds_take_turns_and_a_stale_timing_cache_is_replaced(
    tmp_path: Path, bundle: Bundle, fake_gpu: pytest.MonkeyPatch
) -> None:
    """Two builds of the same engine at once (the first-boot unit and the service): the second waits, then finds
    the first's engine; a timing cache left by another TensorRT is replaced, not a reason to fail."""
    cache = EngineCache(tmp_path / "engines")
    timing = tmp_path / "engines" / "timing.cache"
    timing.parent.mkdir(parents=True)
    timing.write_bytes(b"fake timing cache 10.2.0")
    fake_gpu.setenv("FAKE_TRT_BUILD_S", "2")
    said: list[list[str]] = [[], []]
    results: list[Path] = []

    def build(i: int) -> None:
        options = BuildOptions(max_batch=2, timing_cache=timing)
        results.append(build_isolated(bundle, cache, options, progress=said[i].append))

    threads = [threading.Thread(target=build, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1]
    assert sum(any(line.startswith("building the FP32") for line in lines) for lines in said) == 1, said
    assert "another engine build is under way: this one waits for it" in said[1]
    assert any("the timing cache is of another TensorRT or GPU: starting a new one" in line for line in said[0])
    assert timing.read_bytes() == b"fake timing cache 10.3.0"


def _int8_bundle(tmp_path: Path) -> Path:
    """The reference bundle quantized (TensorRT's symmetric QDQ form, calibrated on its own reference inputs)."""
    from converters.quantize import to_int8
    from converters.spec import Calibration

    def quantize(folder: Path) -> None:
        calibration = np.load(folder / "reference_inputs.npy")
        qdq = tmp_path / "qdq.onnx"
        to_int8(folder / "model.onnx", qdq, "image", calibration, Calibration(), [])
        (folder / "model.onnx").write_bytes(qdq.read_bytes())

    folder = bundle_variant(tmp_path, "1.1.1-int8", quantize)
    manifest = load_bundle(folder).manifest
    fidelity = {"tolerance": {"max_abs_diff": 0.1, "min_speedup": 1.2}}
    write_manifest(folder, manifest.model_copy(update={"precision": "int8", "fidelity": fidelity}))
    return folder


@pytest.mark.parametrize(("timings", "passes"), [("fp16=12,int8=3", True), ("fp16=1,int8=3", False)])
def test_edge_convert_engine_gates_an_int8_engine_on_its_speed_against_fp16(
    tmp_path: Path, fake_gpu: pytest.MonkeyPatch, timings: str, passes: bool
) -> None:
    """The INT8 form's speed is measured where it runs: against an FP16 engine of the same network (its float
    graph under the QDQ nodes), at batch 1; below the bundle's min_speedup it is refused and not cached."""
    folder = _int8_bundle(tmp_path)
    fake_gpu.setenv("FAKE_TRT_MS", timings)
    cache = tmp_path / "engines"
    proc = subprocess.run(
        [*EDGE_CONVERT, "engine", str(folder), "--cache", str(cache), "--max-batch", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")},
    )
    assert "building an FP16 engine of the same network" in proc.stderr, proc.stderr
    bundle = load_bundle(folder)
    engines = EngineCache(cache)
    if passes:
        assert proc.returncode == 0, proc.stderr
        said = re.search(r"at batch 1: speed-up (\d+\.\d+)x", proc.stderr)
        assert said is not None and 1.5 < float(said.group(1)) < 5.0, proc.stderr
        meta = json.loads(next(cache.glob(f"*/{META_NAME}")).read_text())
        assert meta["precision"] == "int8" and meta["measured"]["speedup_vs_fp16"] == pytest.approx(
            float(said.group(1)), abs=0.01
        )
        assert engines.lookup(bundle, current_platform(), 2) is not None
    else:
        assert proc.returncode == 1, proc.stderr
        assert "the INT8 engine is not faster than FP16 on this GPU" in proc.stderr and "< 1.2x" in proc.stderr
        assert engines.lookup(bundle, current_platform(), 2) is None, "a refused engine is never used"
        assert "not faster than FP16" in str(engines.failure(bundle, current_platform()))
