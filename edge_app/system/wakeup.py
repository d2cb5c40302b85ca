"""Wake-ups between the two processes of one data directory: the front tells the worker that an image is queued
or a model changed, the worker tells the front that a result is in. One datagram on an abstract Unix socket
(Linux) named after the data directory; a lost one costs only the poll's delay, so sending never fails loudly."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from edge_app.system.background import Background

log = logging.getLogger(__name__)


def _address(data_dir: Path, listener: str) -> str:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return f"\0edge-app-{digest}-{listener}"  # abstract: no file to leave behind, no path-length limit


def wake(data_dir: Path, listener: str) -> None:
    """Tell `listener` ("worker" or "front") of this data directory to look now, if it listens."""
    # Nobody listening (not started, or gone) is no error: it looks at its next poll.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(b"!", _address(data_dir, listener))


class Listener:
    """Calls `on_wake` for each datagram sent to `listener` of this data directory, while started."""

    def __init__(self, data_dir: Path, listener: str, on_wake: Callable[[], None]) -> None:
        self.address, self.on_wake = _address(data_dir, listener), on_wake
        self._loop_thread = Background(f"edge-wake-{listener}", self._loop)
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.address)
        except OSError as exc:  # another process listens already: its lock would have refused this one
            sock.close()
            log.warning("cannot listen for wake-ups (%s): polling only", exc)
            return
        sock.settimeout(1.0)
        self._sock = sock
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def _loop(self) -> None:
        assert self._sock is not None
        with self._sock:
            while not self._loop_thread.stopping.is_set():
                try:
                    self._sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.on_wake()
