"""The stop signals (systemd's SIGTERM, Ctrl-C's SIGINT), waited for by the main thread rather than raised in it.

A handler that raises (SystemExit, or Python's own KeyboardInterrupt) does so wherever the main thread is: midway
through a lock's or a queue's bookkeeping, it leaves them broken for the stop that follows. (The web server's
accept loop, interrupted inside `queue.Queue.put`'s notify, left the queue a stale waiter: the next put woke no
one, and the server's stop waited for ever on the thread reading that queue.) Here the handlers do nothing; the
signal's number, written by Python's own C handler to a socket (`signal.set_wakeup_fd`), ends `wait`.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WOKEN = 0  # what `wake` writes: no signal has this number


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: the signal has been written to the wake-up socket already."""


class StopSignals:
    """`with StopSignals() as stop:` from the main thread, entered before the service starts and left after it has
    stopped; `stop.wait()` returns at the first stop signal (or `wake`), one received during the start included
    (the start finishes, then the stop). A second one, during the stop, does nothing: the stop goes on in order
    (systemd kills a stop that outlasts TimeoutStopSec)."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._handlers: dict[int, Any] = {}
        self._wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        self._handlers = {signum: signal.signal(signum, _ignore) for signum in STOP_SIGNALS}
        self._wakeup_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._wakeup_fd)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._read.close()
        self._write.close()

    def wake(self) -> None:
        """End `wait` as a stop signal would (from any thread: the server's when it ends by itself)."""
        self._write.send(bytes([_WOKEN]))

    def wait(self) -> None:
        while self._read.recv(1)[0] not in (_WOKEN, *STOP_SIGNALS):  # another handler's signal: not a stop
            pass
