"""The inference worker: claim the jobs queued, route each image, diagnose them, record each outcome.

Up to `worker.burst` images are begun at once, decoded side by side in the decoder processes; each is recorded as
soon as it is diagnosed, with those prepared beside it inferred in one batch where its model's runner takes batches
(`Diagnoser.finish`), and the next queued image begun in its place: a PACS sending a study of sixty images keeps
every decoder busy, and no image waits for the rest of its burst. The only writer of results, in one transaction
per image. A failure on one image fails that image with the reason and the worker goes on; a job claimed when the
service died is claimed again once its lease runs out (the store's `claim_job`). What follows a recorded result
(the outbox) is called after the record and cannot undo it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edge_app.bundles.findings import Diagnosis, ResultStatus, heatmap_png
from edge_app.config import WorkerSettings
from edge_app.errors import ImageRejected, LeaseLost
from edge_app.imaging.encode import jpeg
from edge_app.imaging.header import ImageHeader
from edge_app.inference.diagnoser import Diagnoser, Pending
from edge_app.inference.registry import Registry, fits
from edge_app.inference.views import Views
from edge_app.store import ImageStatus, Job, ModelResult, Outcome, Store
from edge_app.system.background import Background

log = logging.getLogger(__name__)
_Begun = tuple[Job, Outcome | list[tuple[Diagnoser, Pending]]]  # a job claimed: its outcome, or its images begun
_REFILL_S = 0.05  # while the first images of the window are decoded, the queue is looked at this often
_IMAGE_STATUS: dict[ResultStatus, ImageStatus] = {
    "ok": "done",
    "outside": "outside",
    "rejected": "rejected",
    "failed": "failed",
}


class Worker:
    """One thread working through the job queue; `wake` when a job is queued, `stop` to drain and end."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: WorkerSettings | None = None,
        on_recorded: Callable[[Job, list[int]], object] | None = None,
        before_job: Callable[[], None] | None = None,
        after_job: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        views: Views | None = None,
        change_waiting: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.views = views  # where an image no model decoded gets its view for the tablet
        self.clock = clock  # what a job's duration is measured by (the watchdog's stuck check)
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.on_recorded = on_recorded  # a job's results recorded (their ids): the outbox queues what they send
        self.before_job = before_job  # between two jobs, before the next claim: follow model changes
        self.change_waiting = change_waiting  # whether one waits for `before_job`: the window takes no more
        self.after_job = after_job  # a job's result recorded: tell a front in another process
        self._loop_thread = Background("edge-worker", self._loop)
        self._busy_since: float | None = None  # when the window last moved (a job claimed, an image prepared)
        self._job = threading.Lock()  # held from a window's first claim to its last record
        self._held = threading.Event()  # a model change waits: no job begun until it is made
        self._leased = 0.0  # when the leases of the window's jobs were last taken or renewed (the earliest)
        self._store_failed = False  # a claim or a renewal failed: the window takes no more (logged once, not each look)

    def start(self) -> None:
        self._loop_thread.start()

    def wake(self) -> None:
        self._loop_thread.wake()

    def progressing(self, within_s: float) -> bool:
        """Whether the worker is alive and not stuck: waiting for work, or on a window that moved (a job claimed,
        an image prepared, inferred or recorded) less than `within_s` seconds ago (systemd's watchdog asks)."""
        busy_since = self._busy_since
        stuck = busy_since is not None and self.clock() - busy_since >= within_s
        return self._loop_thread.running and not stuck

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the image at hand and stop."""
        self._loop_thread.stop(timeout)

    def _loop(self) -> None:
        while not self._loop_thread.stopping.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the store itself failed (disk full, database locked): wait, then try again
                log.exception("worker: cannot claim or record a job")
                worked = False
            if not worked:
                self._loop_thread.sleep(self.settings.idle_s)  # also catches jobs another process queued

    def run_once(self) -> bool:
        """Work through the jobs queued: up to `worker.burst` images begun at once (decoded side by side), each
        recorded as soon as it is diagnosed, with those prepared beside it (inferred in one batch where the model
        takes batches), and the window refilled from the queue as they are recorded: the decoders never wait for
        a record, nor an image for the rest of its burst. Until the queue is empty, or the worker stops, or a model
        change waits (`between_jobs`, or `change_waiting` from the front): then what was begun is finished. False
        where no job was waiting."""
        with self._job:
            if self.before_job is not None:
                self.before_job()
            self._store_failed = False
            window = self._begin_more([], first=True)
            if not window:
                return False
            try:
                while window:
                    ready = self._ready(window)
                    for (job, plan), outcome in zip(ready, self._outcomes(ready), strict=True):
                        if _unavailable(plan):
                            self._requeue(job)
                        else:
                            self._record(job, outcome)
                    recorded = {job.id for job, _ in ready}
                    window = [(job, plan) for job, plan in window if job.id not in recorded]
                    window += self._begin_more(window)
            finally:
                self._busy_since = None
        return True

    def _begin_more(self, window: list[_Begun], first: bool = False) -> list[_Begun]:
        """Jobs claimed from the queue and begun, as many as the window has room for; a claim that fails
        raises for the `first` (the loop waits and tries again), else ends the window's claiming (it goes on with
        those at hand)."""
        begun: list[_Begun] = []
        if not first and (self._held.is_set() or self._loop_thread.stopping.is_set() or self._store_failed):
            return begun
        while len(window) + len(begun) < self.settings.burst:
            try:
                if not first and self.change_waiting is not None and self.change_waiting():
                    break  # made on the front: `before_job` takes it up once the window is done
                self._renew([job for job, _ in window + begun])
                job = self.store.claim_job(self.settings.lease_s, self.settings.max_attempts)
            except Exception:
                if first and not begun:
                    raise
                log.exception("worker: cannot claim more jobs; going on with those at hand")  # not held a lease
                self._store_failed = True
                break
            if job is None:
                break
            try:
                plan = self._begin(job)
            except Exception as exc:
                plan = _internal(job, exc)
            begun.append((job, plan))
            self._moved()
        return begun

    def _renew(self, held: list[Job]) -> None:
        """Before a claim: the leases of the jobs at hand renewed once half their time has passed, so that the claim
        does not take one of them again (an image waiting for a decoder past its lease: begun, recorded twice)."""
        now = self.clock()
        if not held:
            self._leased = now
        elif now - self._leased >= self.settings.lease_s / 2:
            self.store.renew_jobs(held, self.settings.lease_s)
            self._leased = now

    def _ready(self, window: list[_Begun]) -> list[_Begun]:
        """What is diagnosed next: every image of the window prepared by now, once one is (awaited in the order
        they were begun). While none is, images queued meanwhile are begun (added to `window`): a free decoder takes
        them at once."""
        while True:
            ready = [(job, plan) for job, plan in window if _settled(plan, 0)]
            if ready:
                return ready
            if not _settled(window[0][1], _REFILL_S):  # an Outcome's would be ready above
                window += self._begin_more(window)

    def _record(self, job: Job, outcome: Outcome) -> None:
        """One image's outcome recorded, then what follows it (the outbox, the front told)."""
        try:
            recorded = self.store.finish_job(job, outcome)
        except LeaseLost as exc:  # another claim of the image's job records its outcome
            log.warning("worker: outcome not recorded: %s", exc)
            return
        except Exception:  # its lease runs out and it is tried again; the others stand
            log.exception("worker: the outcome of image %d could not be recorded", job.image_id)
            return
        finally:
            self._moved()
        if self.on_recorded is not None and recorded:
            try:
                self.on_recorded(job, recorded)
            except Exception:  # the diagnosis stands, recorded; only what it would have sent is missing
                log.exception("worker: the outputs of image %d could not be queued", job.image_id)
        if self.after_job is not None:
            self.after_job()

    def _requeue(self, job: Job) -> None:
        """An image not read for want of a decoder process or a model (one that could not start, or was stopped at
        the service's stop): queued again at once (its attempt counted: a decoder that never starts fails it after
        `max_attempts`)."""
        log.warning("worker: image %d not read (no decoder process or model for it): queued again", job.image_id)
        try:
            self.store.requeue_job(job)
        except Exception:  # left to its lease
            log.exception("worker: image %d could not be queued again", job.image_id)
        finally:
            self._moved()

    def _moved(self) -> None:
        self._busy_since = self.clock()

    @contextmanager
    def between_jobs(self) -> Iterator[None]:
        """Hold the worker between two jobs (those begun finished first, none begun meanwhile): to change the
        models it uses."""
        self._held.set()
        try:
            with self._job:
                yield
        finally:
            self._held.clear()

    def _outcomes(self, begun: list[_Begun]) -> list[Outcome]:
        """Each job's outcome: each model's images begun finished together (inferred in one batch)."""
        waiting: dict[Diagnoser, list[Pending]] = {}
        for _, plan in begun:
            for diagnoser, begun_image in plan if isinstance(plan, list) else []:
                waiting.setdefault(diagnoser, []).append(begun_image)
        diagnoses: dict[Pending, Diagnosis] = {}
        for diagnoser, pending in waiting.items():
            diagnoses.update(zip(pending, diagnoser.finish(pending, self._moved), strict=True))
        outcomes = []
        for job, plan in begun:
            try:
                outcome = plan if isinstance(plan, Outcome) else _combined([(d, diagnoses[p]) for d, p in plan])
            except Exception as exc:
                outcome = _internal(job, exc)
            if outcome.view is None and self.views is not None and not _unavailable(plan):
                outcome = dataclasses.replace(outcome, view=self._view(job))
            outcomes.append(outcome)
        return outcomes

    def _view(self, job: Job) -> bytes | None:
        """The view of an image no model decoded (none reads it, or its header was refused): the tablet shows
        every image that decodes, whatever its status."""
        assert self.views is not None
        try:
            return jpeg(self.views.pixels(self.store.file_path(job.sha256), f"image {job.image_id}"))
        except ImageRejected:
            return None  # it does not decode: the page says so
        except Exception:  # the decoder could not start: the diagnosis's outcome stands, without a view
            log.exception("worker: no view of image %d", job.image_id)
            return None

    def _begin(self, job: Job) -> Outcome | list[tuple[Diagnoser, Pending]]:
        """The image begun in each model that reads it, or the outcome where none does."""
        if job.bundle_sha256 is not None:  # sent to this model by a clinician, whatever the header says
            diagnosers = [d for d in self.registry.diagnosers if d.bundle.sha256 == job.bundle_sha256]
            unchecked = [d for d in diagnosers if d.bundle.manifest.guard is None]
            if unchecked and not fits(unchecked[0].bundle.manifest, job.header):
                return Outcome("no_model", _no_check_reason(job.header, unchecked[0]), "no_model")
            if not diagnosers:
                reason = f"the model it was sent to is no longer on this appliance (models: {self.registry.describe()})"
                return Outcome("no_model", reason, "no_model")
        else:
            diagnosers = self.registry.route(job.header)
        if not diagnosers:
            return Outcome("no_model", _no_model_reason(job.header, self.registry), "no_model")
        path = self.store.file_path(job.sha256)
        overruled = job.bundle_sha256 is not None
        # "image N": a file name may name a patient
        return [(d, d.begin(path, f"image {job.image_id}", header_overruled=overruled)) for d in diagnosers]


def _settled(plan: Outcome | list[tuple[Diagnoser, Pending]], timeout_s: float) -> bool:
    """Whether each image begun of a plan is prepared, after waiting at most `timeout_s` for each."""
    return isinstance(plan, Outcome) or all(pending.settle(timeout_s) for _, pending in plan)


def _unavailable(plan: Outcome | list[tuple[Diagnoser, Pending]]) -> bool:
    """Whether an image begun was not read for want of a decoder process or a model (`DecoderUnavailable`)."""
    return isinstance(plan, list) and any(pending.unavailable for _, pending in plan)


def _combined(diagnoses: list[tuple[Diagnoser, Diagnosis]]) -> Outcome:
    """An image's outcome from its models' diagnoses: done where one found it readable, else the first's."""
    results: list[ModelResult] = []
    metadata, preview, first_kind = None, None, None
    for diagnoser, diagnosis in diagnoses:
        metadata = metadata or diagnosis.metadata
        first_kind = first_kind if results else diagnosis.reason_kind
        results.append(_model_result(diagnoser.bundle.sha256, diagnosis))
        preview = preview if preview is not None else diagnosis.preview
    first = results[0]
    status: ImageStatus = "done" if any(r.status == "ok" for r in results) else _IMAGE_STATUS[first.status]
    return Outcome(
        status,
        reason=None if status == "done" else first.reason,
        reason_kind=None if status == "done" else first_kind,
        metadata=metadata,
        results=results,
        view=jpeg(preview) if preview is not None else None,
    )


def _internal(job: Job, exc: Exception) -> Outcome:
    """A bug: this image fails with the reason, the worker goes on."""
    log.error("worker: internal error on image %d", job.image_id, exc_info=exc)
    return Outcome("failed", f"internal error: {type(exc).__name__}: {exc}", "internal")


def _model_result(bundle_sha256: str, diagnosis: Diagnosis) -> ModelResult:
    return ModelResult(
        status=diagnosis.status,
        model=diagnosis.model,
        bundle_sha256=bundle_sha256,
        reason=diagnosis.reason,
        findings=[f.as_dict() for f in diagnosis.findings],
        heatmaps=[(hm.label, heatmap_png(hm)) for hm in diagnosis.heatmaps],
        timings=diagnosis.timings_ms,
        guard=diagnosis.guard.as_dict() if diagnosis.guard is not None else None,
        triage=diagnosis.triage,
    )


def _no_check_reason(header: ImageHeader, diagnoser: Diagnoser) -> str:
    m = diagnoser.bundle.manifest
    return (
        f"{m.name} {m.version} has no input check: it reads only what its header says it reads, and this image's "
        f"does not ({_said(header)})"
    )


def _said(header: ImageHeader) -> str:
    parts = {"modality": header.modality, "body_part": header.body_part, "view": header.view}
    return ", ".join(f"{k} {v}" for k, v in parts.items() if v)


def _no_model_reason(header: ImageHeader, registry: Registry) -> str:
    # An image that says nothing of itself fits every model: one here says something.
    return f"no model on this appliance reads {_said(header)} (models: {registry.describe()})"
