"""Choose a runner from configuration and what this machine has, and say why."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edge_app.bundles.bundle import Bundle
from edge_app.config import RUNNER_NAMES
from edge_app.errors import RuntimeUnavailable
from edge_app.runtime.base import Runner
from edge_app.runtime.onnx import OnnxRuntimeRunner

if TYPE_CHECKING:
    from edge_app.config import TritonSettings

log = logging.getLogger(__name__)

# auto: TensorRT where this machine has it and an engine for this bundle is cached, else ONNX Runtime.
# triton: a Triton hub (model.triton), with what auto gives as the fallback while the hub cannot.


def open_runner(
    bundle: Bundle,
    preference: str = "auto",
    threads: int = 0,
    engine_cache: Path | None = None,
    max_batch: int = 8,
    dla_core: int | None = None,
    triton: TritonSettings | None = None,
) -> Runner:
    """Return an activated runner for `bundle`; raise `RuntimeUnavailable` if the one asked for cannot run."""
    if preference not in RUNNER_NAMES:
        raise RuntimeUnavailable(f"unknown runner {preference!r}; choose one of {', '.join(RUNNER_NAMES)}")
    runner: Runner
    if preference == "triton":
        from edge_app.runtime.triton import TritonRunner

        if triton is None or not triton.url:
            raise RuntimeUnavailable('runner = "triton" needs model.triton.url')
        local = open_runner(bundle, "auto", threads, engine_cache, max_batch, dla_core)
        try:
            runner = TritonRunner(bundle, triton, local)
            runner.activate()
        except BaseException:
            local.deactivate()
            raise
        return runner
    if preference in ("auto", "tensorrt"):
        try:
            runner = _tensorrt(bundle, engine_cache, max_batch, dla_core)
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


def _tensorrt(bundle: Bundle, engine_cache: Path | None, max_batch: int, dla_core: int | None) -> Runner:
    from edge_app.runtime.engines.cache import EngineCache
    from edge_app.runtime.tensorrt import TensorRTRunner, current_platform

    platform = current_platform(dla_core)
    engine = EngineCache(engine_cache).lookup(bundle, platform, max_batch) if engine_cache is not None else None
    if engine is None:
        where = f"DLA core {dla_core} of " if dla_core is not None else ""
        raise RuntimeUnavailable(
            f"no engine of this bundle for {where}{platform.gpu_name} with TensorRT {platform.tensorrt_version} "
            f"and batches up to {max_batch} yet; build it with: edge-convert engine {bundle.path}"
        )
    runner = TensorRTRunner(bundle, engine, max_batch, dla_core)
    runner.activate()
    return runner
