"""The one shape of every loop the service runs (worker, sender, folder watcher, serial device, video reader, live
inference): a named daemon thread started and stopped by its owner, with an event to stop it and one to wake it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Loop(Protocol):
    """What the service starts and stops: the worker, the sender, retention, live inference, a wake-up listener,
    a capture source."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Background:
    """Runs `target` in a thread between `start` and `stop`; `target` returns once `stopping` is set."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self.target = target
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self.woken.set()

    def sleep(self, seconds: float) -> None:
        """Wait until woken, stopped, or `seconds` have passed."""
        self.woken.wait(seconds)
        self.woken.clear()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.woken.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class Periodic:
    """A loop that runs `run_once` every `every_s` seconds while started; a round that raises is logged and the
    next one tries again (retention, the model's monitoring)."""

    def __init__(self, name: str, every_s: float) -> None:
        self.every_s = every_s
        self._loop_thread = Background(name, self._loop)

    def run_once(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def _loop(self) -> None:
        while not self._loop_thread.stopping.is_set():
            try:
                self.run_once()
            except Exception:  # the disk or the database failed: the next round tries again, the service goes on
                log.exception("%s failed", self._loop_thread.name)
            self._loop_thread.sleep(self.every_s)
