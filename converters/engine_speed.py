"""`edge-convert engine` on an INT8 bundle: the INT8 engine measured against an FP16 engine of the same network,
on the GPU that will run it, and refused where it is not faster (the manifest's `min_speedup`).

A CPU cannot tell whether TensorRT's symmetric INT8 form pays on a Jetson, so the conversion stage reports its
CPU speed without gating it; this is where it is gated. The FP16 engine is built from the float graph under the
bundle's QDQ nodes (`fold.strip_qdq`), through the same child-process build and reference check, in a scratch
cache; the two are timed at batch 1 (median of 200 runs after 20 warm-up runs)."""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters.errors import Refused
from edge_app.bundles.bundle import Bundle, load_bundle, sha256_file, write_manifest
from edge_app.runtime.engines.build import BuildOptions
from edge_app.runtime.engines.build_process import BuildLimits, build_isolated
from edge_app.runtime.engines.cache import EngineCache
from edge_app.runtime.tensorrt import TensorRTRunner, current_platform

DEFAULT_MIN_SPEEDUP = 1.1
RUNS, WARM_UP = 200, 20


def fp16_twin(bundle: Bundle, folder: Path) -> Bundle:
    """A copy of an INT8 bundle whose model is the float graph under its QDQ nodes, labelled fp16."""
    import onnx

    from converters.fold import strip_qdq

    shutil.copytree(bundle.path, folder)
    onnx.save(strip_qdq(onnx.load(str(folder / "model.onnx"))), str(folder / "model.onnx"))
    m = bundle.manifest
    files = {name: sha256_file(folder / name) for name in m.files}
    write_manifest(folder, m.model_copy(update={"precision": "fp16", "files": files, "version": f"{m.version}-fp16"}))
    return load_bundle(folder)


def batch1_ms(bundle: Bundle, engine: Path, options: BuildOptions) -> float:
    x = np.load(bundle.path / "reference_inputs.npy")[:1]
    with TensorRTRunner(bundle, engine, options.max_batch, options.dla_core) as runner:
        for _ in range(WARM_UP):
            runner.infer(x)
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            runner.infer(x)
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def gate_int8_engine(
    bundle: Bundle,
    cache: EngineCache,
    engine: Path,
    options: BuildOptions,
    limits: BuildLimits,
    progress: Callable[[str], None],
) -> float:
    """The INT8 engine's speed-up over FP16, recorded in its engine.json; `Refused` (the engine removed from the
    cache, the refusal remembered) where it is below the bundle's `min_speedup`."""
    with tempfile.TemporaryDirectory() as tmp:
        twin = fp16_twin(bundle, Path(tmp) / "fp16")
        progress("building an FP16 engine of the same network to measure the INT8 one against")
        baseline = build_isolated(
            twin,
            EngineCache(Path(tmp) / "engines"),
            dataclasses.replace(options, timing_cache=None),
            limits,
            progress,
            retry=True,
        )
        int8_ms, fp16_ms = batch1_ms(bundle, engine, options), batch1_ms(twin, baseline, options)
    speedup = fp16_ms / int8_ms
    tolerance = (bundle.manifest.fidelity or {}).get("tolerance", {})
    least = float(tolerance.get("min_speedup", DEFAULT_MIN_SPEEDUP))
    platform = current_platform(options.dla_core)
    measured = {"int8_ms": round(int8_ms, 4), "fp16_ms": round(fp16_ms, 4), "speedup_vs_fp16": round(speedup, 3)}
    said = f"INT8 engine {int8_ms:.3f} ms, FP16 engine {fp16_ms:.3f} ms at batch 1: speed-up {speedup:.2f}x"
    progress(said)
    if speedup < least:
        reason = f"the INT8 engine is not faster than FP16 on this GPU ({said} < {least}x): use an fp16 bundle"
        cache.discard(bundle, platform, reason)
        raise Refused(reason)
    cache.annotate(bundle, platform, measured)
    return speedup
