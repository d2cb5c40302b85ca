"""The sender: takes due items from the outbox and C-STOREs them (pynetdicom SCU). A failed send is tried again
after `retry_s`, doubling up to 32 times that, until `max_attempts`; then the item is kept as failed, with the
reason, for a person to see. Nothing is lost when the destination is away: the queue is in the database."""

from __future__ import annotations

import logging
import time

from edge_app.config import OutputSettings
from edge_app.store import OutboxItem, Store
from edge_app.system.background import Background

log = logging.getLogger(__name__)
_HOLD_S = 300.0  # an item being sent is not taken again for this long


class Sender:
    """One thread sending the outbox while started."""

    name = "outputs"

    def __init__(self, store: Store, settings: OutputSettings, idle_s: float = 5.0) -> None:
        self.store = store
        self.settings = settings
        self.idle_s = idle_s
        self._destinations = {str(d): d for d in settings.destinations}
        self._loop_thread = Background("edge-sender", self._loop)

    def start(self) -> None:
        self._loop_thread.start()

    def wake(self) -> None:
        self._loop_thread.wake()

    def stop(self) -> None:
        self._loop_thread.stop()

    def _loop(self) -> None:
        while not self._loop_thread.stopping.is_set():
            try:
                item = self.store.due_output(_HOLD_S)
                if item is not None:
                    self.send(item)
                    continue
            except Exception:
                log.exception("outbox")
            self._loop_thread.sleep(self.idle_s)

    def send(self, item: OutboxItem) -> None:
        destination = self._destinations.get(item.destination)
        if destination is None:
            self.store.output_done(item, f"{item.destination} is no longer a configured destination", None)
            return
        error = self._c_store(item, destination.ae_title, destination.host, destination.port)
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

    def _c_store(self, item: OutboxItem, ae_title: str, host: str, port: int) -> str | None:
        """None when the destination answered success; else why not."""
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        ds = pydicom.dcmread(self.store.file_path(item.sha256))
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(host, port, ae_title=ae_title)
        except Exception as exc:
            return f"cannot connect: {exc}"
        if not assoc.is_established:
            return "association refused or not answered"
        try:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
        except Exception as exc:
            return f"C-STORE failed: {exc}"
        finally:
            assoc.release()
        if code is None:
            return "no answer to the C-STORE"
        if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or success with a warning
            return f"C-STORE status 0x{code:04X}"
        return None
