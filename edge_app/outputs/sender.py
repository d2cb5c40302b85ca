"""The sender: C-STOREs the outbox (pynetdicom SCU), each destination from a thread of its own, so that a
destination that is away, refuses or hangs delays no other. What is due for a destination goes in one association
(up to `per_association` objects), on a socket without Nagle's delay. A failed send is tried again after
`retry_s`, doubling up to 32 times that, until `max_attempts`; then the item is kept as failed, with the reason in
words a PACS administrator can act on, until someone re-sends it (`Store.retry_outputs`: the devices page, the
API, `edge-app outbox retry`). Nothing is lost when the destination is away: the queue is in the database."""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_app.config import Destination, OutputSettings
from edge_app.store import Backlog, OutboxItem, Store
from edge_app.system.background import Background

log = logging.getLogger(__name__)
_HOLD_S = 300.0  # an item being sent is not taken again for this long (a restart makes it due at once)
VERIFICATION = "1.2.840.10008.1.1"
_SUCCESS = (0x0000, 0xB000, 0xB007, 0xB006)  # success, or success with a warning
UNCONFIGURED = "no longer a configured destination"


class Sender:
    """One thread per destination, sending its due items while started."""

    name = "outputs"

    def __init__(self, store: Store, settings: OutputSettings, idle_s: float = 5.0) -> None:
        self.store = store
        self.settings = settings
        self.idle_s = idle_s
        self._loops = [
            Background(f"edge-sender-{i}", functools.partial(self._loop, destination, i))
            for i, destination in enumerate(settings.destinations)
        ]

    def start(self) -> None:
        given_up = self.store.give_up_outputs([str(d) for d in self.settings.destinations], UNCONFIGURED)
        if given_up:
            log.warning("%d item(s) queued for destinations no longer configured: kept as failed", given_up)
        for loop in self._loops:
            loop.start()

    def wake(self) -> None:
        for loop in self._loops:
            loop.wake()

    def stop(self) -> None:
        for loop in self._loops:  # all told first: each may be in an association that ends at its next object
            loop.stopping.set()
            loop.wake()
        for loop in self._loops:
            loop.stop()

    def _loop(self, destination: Destination, index: int) -> None:
        loop = self._loops[index]
        while not loop.stopping.is_set():
            try:
                items = self.store.due_outputs(_HOLD_S, str(destination), self.settings.per_association)
                if items:
                    self.send(destination, items, loop.stopping.is_set)
                    continue
            except Exception:
                log.exception("outbox: %s", destination)
            loop.sleep(self.idle_s)

    def send(self, destination: Destination, items: list[OutboxItem], stopping: Callable[[], bool]) -> None:
        """Send `items` to `destination` in one association; record each one's outcome. Items left when
        `stopping` stay held until the hold ends (or the next start)."""
        import pydicom

        datasets = [pydicom.dcmread(self.store.file_path(item.sha256)) for item in items]
        peer = Peer(destination, self.settings)
        error = peer.associate({str(ds.SOPClassUID) for ds in datasets})
        try:
            for item, ds in zip(items, datasets, strict=True):
                if stopping():
                    return
                self._record(item, error or peer.store(ds))
        finally:
            peer.release()

    def _record(self, item: OutboxItem, error: str | None) -> None:
        if error is None:
            self.store.output_done(item, None, None)
            return
        attempts = item.attempts + 1
        if attempts >= self.settings.max_attempts:
            log.error("gave up sending %s to %s after %d attempts: %s", item.kind, item.destination, attempts, error)
            self.store.output_done(item, error, None)
        else:
            wait = self.settings.retry_s * min(2 ** (attempts - 1), 32)
            log.warning("sending %s to %s failed (%s): again in %.0f s", item.kind, item.destination, error, wait)
            self.store.output_done(item, error, time.time() + wait)


def echo(destination: Destination, settings: OutputSettings) -> str | None:
    """C-ECHO `destination`: None when it answered success, else why not (in the sender's words)."""
    peer = Peer(destination, settings)
    error = peer.associate({VERIFICATION})
    try:
        if error is None:
            error = peer.echo()
    finally:
        peer.release()
    return error


def backlog_problem(backlog: list[Backlog], settings: OutputSettings, now: float) -> str | None:
    """Why the outbox needs someone (items given up, too many waiting, or waiting too long), or None. Each
    destination named by its AE title alone: /api/v1/health, which says it, is open to anyone on the network."""
    problems = []
    for b in backlog:
        if b.failed:
            problems.append(f"{b.failed} result(s) for {ae_title(b)} given up ({b.last_error}): re-send them")
    waiting = sum(b.waiting for b in backlog)
    if waiting > settings.backlog_count:
        problems.append(f"{waiting} results waiting to be sent (more than {settings.backlog_count})")
    for b in backlog:
        age = now - b.oldest_at
        if b.waiting and age > settings.backlog_age_s:
            problems.append(f"a result for {ae_title(b)} has waited {age / 60:.0f} min ({b.last_error})")
    return "; ".join(problems) or None


def ae_title(backlog: Backlog) -> str:
    return backlog.destination.split("@", 1)[0]  # str(Destination): AE@host:port


@dataclass
class Peer:
    """One association with a destination, and what went wrong with it, told apart: connection refused, no
    answer in time, called AE title rejected, rejected for another reason, not a DICOM peer, a status that is not
    success. pynetdicom says these only in its log; its events tell them here."""

    destination: Destination
    settings: OutputSettings
    assoc: Any = None
    _connected: bool = False
    _answered: bool = False
    _started: float = field(default_factory=time.monotonic)
    _sent: float = field(default_factory=time.monotonic)  # when the last request went

    def associate(self, sop_classes: set[str]) -> str | None:
        """Open the association proposing `sop_classes`; None when established, else why not."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt

        d, s = self.destination, self.settings
        ae = AE(ae_title=s.calling_ae_title)
        ae.connection_timeout = s.connect_timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.answer_timeout_s
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._started = time.monotonic()
        self.assoc = ae.associate(
            d.host,
            d.port,
            ae_title=d.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_PDU_RECV, self._on_pdu)],
        )
        if self.assoc.is_established:
            return None
        elapsed = time.monotonic() - self._started
        if not self._connected:
            if elapsed >= s.connect_timeout_s * 0.9:
                return f"timed out: no connection within {s.connect_timeout_s:g} s (host down, or a firewall drops it)"
            return "connection refused: nothing listens at that address and port (or a firewall refuses)"
        if self.assoc.is_rejected:
            rejection = self.assoc.acceptor.primitive
            if (rejection.result_source, rejection.diagnostic) == (1, 7):
                return f"called AE title rejected: the peer there is not {d.ae_title} (check the destination)"
            if (rejection.result_source, rejection.diagnostic) == (1, 3):
                return f"association rejected: the peer does not know our AE title {s.calling_ae_title}"
            return f"association rejected: {rejection.reason_str}"
        if elapsed >= s.answer_timeout_s * 0.9:  # an answer after our timeout is one we no longer waited for
            return f"not answered: the connection was taken, no answer came within {s.answer_timeout_s:g} s"
        if self._answered:
            return "association aborted by the peer"
        return "not a DICOM peer: it closed the connection or answered something other than DICOM"

    def _on_open(self, event: Any) -> None:
        # Small PDUs (an SR is a few KB) must not wait for a delayed ACK: ~40 ms each with Nagle's algorithm on.
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connected = True

    def _on_pdu(self, event: Any) -> None:
        self._answered = True

    def store(self, ds: Any) -> str | None:
        """C-STORE one data set on the open association; None when it answered success, else why not."""
        if not self.assoc.is_established:
            return "the association ended before it was sent (see the item before)"
        self._sent = time.monotonic()
        try:
            status = self.assoc.send_c_store(ds)
        except ValueError:  # pynetdicom: no accepted presentation context for it
            return f"the destination does not accept this kind of object ({ds.SOPClassUID.name})"
        return self.status_error(status, "C-STORE")

    def echo(self) -> str | None:
        self._sent = time.monotonic()
        return self.status_error(self.assoc.send_c_echo(), "C-ECHO")

    def status_error(self, status: Any, what: str) -> str | None:
        """None for success (or success with a warning); else the status and its meaning, or why none came."""
        from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

        if "Status" not in status:  # pynetdicom aborted on its DIMSE timeout, or the peer aborted or closed
            if time.monotonic() - self._sent >= self.settings.answer_timeout_s * 0.9:
                return f"not answered: no answer to the {what} within {self.settings.answer_timeout_s:g} s"
            return f"association aborted by the destination during the {what}"
        code = int(status.Status)
        if code in _SUCCESS:
            return None
        meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
        comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
        return f"{what} status 0x{code:04X} ({meaning}){comment}"

    def release(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
