"""The one way an engine is built while the service runs: in a process of its own, watched from a thread, the
running model serving meanwhile; then the caller swaps it in (a runner at start, a model put in service)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edge_app.bundles.bundle import Bundle
from edge_app.errors import EdgeAppError, RuntimeUnavailable
from edge_app.runtime.base import Runner
from edge_app.runtime.engines.build import BuildOptions
from edge_app.runtime.engines.build_process import BuildCancelled, BuildLimits, build_isolated
from edge_app.runtime.engines.cache import EngineCache
from edge_app.runtime.tensorrt import TensorRTRunner, current_platform

log = logging.getLogger(__name__)


class BackgroundBuild:
    """Builds `bundle`'s engine once started, then hands it to `on_built` (or the reason to `on_failed`); neither
    is called once `cancel()` is."""

    def __init__(
        self,
        bundle: Bundle,
        cache: EngineCache,
        options: BuildOptions,
        limits: BuildLimits,
        on_built: Callable[[Path], None],
        on_failed: Callable[[EdgeAppError], None],
        *,
        retry: bool = False,
    ) -> None:
        self.bundle = bundle
        self._build = (cache, options, limits, retry)
        self._on_built, self._on_failed = on_built, on_failed
        self._cancel = threading.Event()
        self.thread = threading.Thread(target=self._work, name="engine-build", daemon=True)

    def start(self) -> BackgroundBuild:
        self.thread.start()
        return self

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self, timeout: float = 30.0) -> None:
        """Stop the build; wait up to `timeout` seconds for its thread (0: not at all)."""
        self._cancel.set()
        if timeout:
            self.thread.join(timeout)

    def _work(self) -> None:
        cache, options, limits, retry = self._build
        try:
            engine = build_isolated(self.bundle, cache, options, limits, cancel=self._cancel, retry=retry)
        except BuildCancelled:
            log.info("TensorRT engine build of %s cancelled", self.bundle.manifest.name)
            return
        except EdgeAppError as exc:
            if not self.cancelled:
                self._on_failed(exc)
            return
        if not self.cancelled:
            self._on_built(engine)


def build_missing_engine(
    bundle: Bundle, engine_cache: Path, options: BuildOptions, limits: BuildLimits, on_ready: Callable[[Runner], None]
) -> BackgroundBuild | None:
    """Where this machine has TensorRT but no engine of `bundle` yet, build it in the background and hand the
    activated TensorRT runner to `on_ready`; meanwhile the caller keeps serving on ONNX Runtime. None where there
    is nothing to build (no TensorRT, the engine is cached, or its build failed before)."""
    try:
        platform = current_platform(options.dla_core)
    except RuntimeUnavailable:
        return None
    cache = EngineCache(engine_cache)
    if cache.lookup(bundle, platform, options.max_batch) is not None:
        return None
    failed = cache.failure(bundle, platform)
    if failed is not None:
        log.warning(
            "the TensorRT engine of %s failed to build before (%s): not tried again until edge-app engines --retry",
            bundle.manifest.name,
            failed.get("reason"),
        )
        return None

    def ready(engine: Path) -> None:
        try:
            runner = TensorRTRunner(bundle, engine, options.max_batch, options.dla_core)
            runner.activate()
        except Exception as exc:
            not_built(exc)
            return
        log.info("TensorRT engine ready (%s): switching from ONNX Runtime", engine)
        on_ready(runner)

    def not_built(exc: Exception) -> None:
        log.warning("building the TensorRT engine failed (%s); staying on ONNX Runtime", exc)

    log.info(
        "no TensorRT engine of %s for %s yet: building it in the background, serving on ONNX Runtime meanwhile",
        bundle.manifest.name,
        platform.gpu_name,
    )
    return BackgroundBuild(bundle, cache, options, limits, ready, not_built).start()
