"""What a recorded result sends, and to whom: the SR and the Secondary Capture of each diagnosed result, made
from what the store holds (the source image's header, findings, the most probable finding's heatmap, the image's
view) and the codes of the bundle that made it, stored as files and queued in the outbox for each destination.

The worker only notes a recorded diagnosis as due, in the store (a restart makes what a stop left). The documents
are made apart, in a process of their own (started and warmed up with the outbox): highdicom builds them in pure
Python (about 50 ms an image), which in the worker's process would hold the interpreter between two images and
beside the DICOM receiver. Documents that cannot be made are kept, for each destination, as failed items that say
so (the backlog: health, the devices page); re-sending them (`Store.retry_outputs`) makes them again."""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
from collections.abc import Callable

from pebble import ProcessPool

from edge_app.bundles.manifest import Manifest
from edge_app.config import OutputSettings
from edge_app.errors import NotFound
from edge_app.outputs import documents
from edge_app.store import Job, Store
from edge_app.store.db import DocumentsDue
from edge_app.system.background import Background

log = logging.getLogger(__name__)

IDLE_S = 30.0  # how long the loop sleeps when nothing is due and no one wakes it
MAKE_TIMEOUT_S = 120.0  # one image's documents: a process that takes longer is replaced, they are kept as not made


class Outbox:
    """Makes and queues the documents of recorded results for the configured destinations; `on_queued` wakes the
    `Sender`; `manifest_of` finds the manifest of the bundle that made a result (its findings' codes)."""

    name = "documents"

    def __init__(
        self,
        store: Store,
        settings: OutputSettings,
        on_queued: Callable[[], None] | None = None,
        manifest_of: Callable[[str], Manifest | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_queued = on_queued
        self.manifest_of = manifest_of
        self._loop_thread = Background("edge-documents", self._loop)
        self._pool: ProcessPool | None = None  # the documents process: started by `start`, or the first `run_once`

    def queue(self, job: Job, result_ids: list[int]) -> None:
        """Note the documents of an image's recorded results (those diagnosed) as due; the loop makes them."""
        if self.store.documents_due(job.image_id, result_ids):
            self._loop_thread.wake()

    def start(self) -> None:
        # The documents process started, and warmed up, now: the first image's documents do not wait for it. A
        # warm-up that fails is not reported here: the first documents then fail the same way, and are logged.
        self._documents().schedule(documents.warm, timeout=MAKE_TIMEOUT_S)
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()
        if self._pool is not None:
            # The loop waited for the documents at hand: all that may still run is the warm-up, not waited for.
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join()
            self._pool = None

    def wake(self) -> None:
        """Documents are due again (a re-send of those not made): make them now, not after the idle wait."""
        self._loop_thread.wake()

    def run_once(self) -> int | None:
        """Make and queue the documents of the image noted first; how many items were queued (None: none due).
        Documents that cannot be made are logged, and kept for each destination as failed items that say so: the
        diagnosis stands, recorded, and a re-send (`Store.retry_outputs`) makes them again."""
        due = self.store.next_documents()
        if due is None:
            return None
        items: list[tuple[str, str, str]] = []
        try:
            made = self._make(due)
        except Exception as exc:
            if self._loop_thread.stopping.is_set():  # the documents process stopped under it: left due, for a restart
                return None
            log.exception("outbox: the documents of image %d could not be made", due.image_id)
            destinations = [str(d) for d in self.settings.destinations if d.send]
            self.store.documents_failed(due, destinations, not_made(exc))
            return 0
        for files in made:
            stored = {kind: self.store.put_file(data) for kind, data in files.items()}
            for destination in self.settings.destinations:
                items += [(str(destination), kind, stored[kind]) for kind in destination.send if kind in stored]
        self.store.documents_made(due, items)
        if items and self.on_queued is not None:
            self.on_queued()
        return len(items)

    def _make(self, due: DocumentsDue) -> list[dict[str, bytes]]:
        future = self._documents().schedule(documents.make, args=(self._drafts(due),), timeout=MAKE_TIMEOUT_S)
        return list(future.result())

    def _documents(self) -> ProcessPool:
        if self._pool is None:
            self._pool = ProcessPool(max_workers=1, context=multiprocessing.get_context("spawn"))
        return self._pool

    def _drafts(self, due: DocumentsDue) -> list[documents.Draft]:
        path = self.store.file_path(due.sha256) if due.header.format == "dicom" else None
        view = self.store.image_view(due.image_id)
        drafts = []
        for result_id in due.result_ids:
            result = self.store.get_result(result_id)
            manifest = self.manifest_of(result.bundle_sha256) if self.manifest_of is not None else None
            top = result.heatmap()  # the PACS gets the most probable finding's heatmap
            drafts.append(
                documents.Draft(
                    source_path=path,
                    header=due.header,
                    patient_id=due.patient_id,
                    made_at=dt.datetime.fromisoformat(result.created_at),
                    ordinal=self.store.result_ordinal(result_id),
                    model=dict(result.model),
                    bundle_sha256=result.bundle_sha256,
                    findings=tuple(result.findings),
                    codes=dict(manifest.codes) if manifest is not None else {},
                    view=view,
                    heatmap=(top.label, self.store.read_file(top.sha256)) if top is not None else None,
                )
            )
        return drafts

    def _loop(self) -> None:
        while not self._loop_thread.stopping.is_set():
            try:
                if self.run_once() is not None:
                    continue
            except Exception:
                log.exception("outbox: the documents loop")
            self._loop_thread.sleep(IDLE_S)


def not_made(exc: BaseException) -> str:
    """Why documents were not made, in words /api/v1/health may say: it is open to anyone, and an exception's
    text may hold the patient's data (the log has it all)."""
    if isinstance(exc, TimeoutError):
        why = f"not made within {MAKE_TIMEOUT_S:g} s"
    elif isinstance(exc, (NotFound, FileNotFoundError)):
        why = "a stored file they need is gone"
    else:
        why = type(exc).__name__
    return f"documents not made: {why}, see the log"
