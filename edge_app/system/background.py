"""The one shape of every loop the service runs (worker, sender, folder watcher, serial device, video reader, live
inference): a named daemon thread started and stopped by its owner, with an event to stop it and one to wake it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


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
