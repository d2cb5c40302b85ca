"""Choose a runner from configuration and what this machine has, and say why."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edge_app.bundle import Bundle
from edge_app.errors import RuntimeUnavailable
from edge_app.runtime.base import Runner
from edge_app.runtime.onnx import OnnxRuntimeRunner

log = logging.getLogger(__name__)

# auto: TensorRT where this machine has it and an engine for this bundle is cached, else ONNX Runtime.
RUNNER_NAMES = ("auto", "onnxruntime", "tensorrt")


def open_runner(
    bundle: Bundle, preference: str = "auto", threads: int = 0, engine_cache: Path | None = None, max_batch: int = 8
) -> Runner:
    """Return an activated runner for `bundle`; raise `RuntimeUnavailable` if the one asked for cannot run."""
    if preference not in RUNNER_NAMES:
        raise RuntimeUnavailable(f"unknown runner {preference!r}; choose one of {', '.join(RUNNER_NAMES)}")
    runner: Runner
    if preference in ("auto", "tensorrt"):
        try:
            runner = _tensorrt(bundle, engine_cache, max_batch)
            log.info(
                "runner tensorrt for %s %s (engine %s)",
                bundle.manifest.name,
                bundle.manifest.version,
                getattr(runner, "engine_path", ""),
            )
            return runner
        except RuntimeUnavailable as exc:
            if preference == "tensorrt":
                raise
            reason = f"TensorRT not used: {exc}"
        except Exception as exc:  # an engine it cannot load, a CUDA fault: under auto the service goes on
            if preference == "tensorrt":
                raise
            reason = f"TensorRT not used: it failed to start ({type(exc).__name__}: {exc})"
            log.warning("%s %s: %s; ONNX Runtime instead", bundle.manifest.name, bundle.manifest.version, reason)
    else:
        reason = "asked for"
    runner = OnnxRuntimeRunner(bundle, threads=threads)
    runner.activate()
    log.info("runner onnxruntime for %s %s (%s)", bundle.manifest.name, bundle.manifest.version, reason)
    return runner


def _tensorrt(bundle: Bundle, engine_cache: Path | None, max_batch: int) -> Runner:
    from edge_app.runtime.engine_cache import EngineCache
    from edge_app.runtime.tensorrt import TensorRTRunner, current_platform

    platform = current_platform()
    engine = EngineCache(engine_cache).lookup(bundle, platform) if engine_cache is not None else None
    if engine is None:
        raise RuntimeUnavailable(
            f"no engine of this bundle for {platform.gpu_name} with TensorRT {platform.tensorrt_version} yet; "
            f"build it with: edge-convert engine {bundle.path}"
        )
    runner = TensorRTRunner(bundle, engine, max_batch)
    runner.activate()
    return runner


def build_engine_in_background(
    bundle: Bundle, engine_cache: Path, max_batch: int, on_ready: Callable[[Runner], None]
) -> threading.Thread | None:
    """Where this machine has TensorRT but no engine of `bundle` yet, build it in a background thread and hand the
    activated TensorRT runner to `on_ready`; meanwhile the caller keeps serving on ONNX Runtime. None where there
    is nothing to build (no TensorRT, or the engine is cached)."""
    from edge_app.runtime.engine_cache import EngineCache
    from edge_app.runtime.tensorrt import TensorRTRunner, current_platform
    from edge_app.runtime.tensorrt_build import BuildOptions, build_engine

    try:
        platform = current_platform()
    except RuntimeUnavailable:
        return None
    cache = EngineCache(engine_cache)
    if cache.lookup(bundle, platform) is not None:
        return None

    def work() -> None:
        try:
            options = BuildOptions(max_batch=max_batch, timing_cache=engine_cache / "timing.cache")
            engine = build_engine(bundle, cache, options)
            runner = TensorRTRunner(bundle, engine, max_batch)
            runner.activate()
        except Exception:
            log.exception("building the TensorRT engine failed; staying on ONNX Runtime")
            return
        log.info("TensorRT engine ready (%s): switching from ONNX Runtime", engine)
        on_ready(runner)

    log.info(
        "no TensorRT engine of %s for %s yet: building it in the background, serving on ONNX Runtime meanwhile",
        bundle.manifest.name,
        platform.gpu_name,
    )
    thread = threading.Thread(target=work, name="engine-build", daemon=True)
    thread.start()
    return thread
