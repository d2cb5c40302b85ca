"""systemd's service notification protocol (sd_notify): READY once the service is up, WATCHDOG while it works.

Written here rather than taken from a library: the protocol is one datagram to the socket named by
$NOTIFY_SOCKET (an abstract one where it starts with "@"); systemd-python and cysystemd build against libsystemd's
headers (not on a bare JetPack), and sdnotify, the pure-Python one, has had no release since 2017. Without
$NOTIFY_SOCKET (not started by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from edge_app.system.background import Background

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "WATCHDOG=1", "STATUS=...") to systemd; False where there is no one to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", message, exc)
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set (WatchdogSec=), in seconds; None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings systemd's watchdog every `interval` seconds while `alive()` says the service makes progress; a
    service that stops making progress stops pinging, and systemd restarts it."""

    def __init__(self, interval: float, alive: Callable[[], bool]) -> None:
        self.interval = interval
        self.alive = alive
        self._loop_thread = Background("edge-watchdog", self._loop)

    def start(self) -> None:
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def _loop(self) -> None:
        while not self._loop_thread.stopping.wait(self.interval):
            if self.alive():
                notify("WATCHDOG=1")
            else:
                log.error("the worker has made no progress: the watchdog is not fed, systemd will restart us")
