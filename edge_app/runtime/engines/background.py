"""The one way an engine is built while the service runs: in a process of its own, watched from a thread, the
running models serving meanwhile; then the caller (the model lifecycle) swaps it in."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edge_app.bundles.bundle import Bundle
from edge_app.errors import EdgeAppError
from edge_app.runtime.engines.build import BuildOptions
from edge_app.runtime.engines.build_process import BuildCancelled, BuildLimits, build_isolated
from edge_app.runtime.engines.cache import EngineCache

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
