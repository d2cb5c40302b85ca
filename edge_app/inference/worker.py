"""The inference worker: claim the jobs queued (a burst, up to `worker.burst`), route each image, diagnose them,
record each outcome; then the next burst.

A burst's images are decoded side by side in the decoder processes and each model's are inferred in one batch
where its runner takes batches (`Diagnoser.finish`): a PACS sending a study of sixty images keeps every decoder
busy, and a lone image waits for no other. The only writer of results, in one transaction per image. A failure on
one image fails that image with the reason and the worker goes on; a job claimed when the service died is claimed
again once its lease runs out (the store's `claim_job`). What follows a recorded result (the outbox) is called
after the record and cannot undo it.
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
from edge_app.errors import ImageRejected
from edge_app.imaging.encode import jpeg
from edge_app.imaging.header import ImageHeader
from edge_app.inference.diagnoser import Diagnoser, Pending
from edge_app.inference.registry import Registry, fits
from edge_app.inference.views import Views
from edge_app.store import ImageStatus, Job, ModelResult, Outcome, Store
from edge_app.system.background import Background

log = logging.getLogger(__name__)
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
    ) -> None:
        self.store = store
        self.views = views  # where an image no model decoded gets its view for the tablet
        self.clock = clock  # what a job's duration is measured by (the watchdog's stuck check)
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.on_recorded = on_recorded  # a job's results recorded (their ids): the outbox queues what they send
        self.before_job = before_job  # between two jobs, before the next claim: follow model changes
        self.after_job = after_job  # a job's result recorded: tell a front in another process
        self._loop_thread = Background("edge-worker", self._loop)
        self._busy_since: float | None = None  # when the burst at hand last moved (claimed, an image prepared)
        self._job = threading.Lock()  # held from a burst's claim to its last record

    def start(self) -> None:
        self._loop_thread.start()

    def wake(self) -> None:
        self._loop_thread.wake()

    def progressing(self, within_s: float) -> bool:
        """Whether the worker is alive and not stuck: waiting for work, or on a burst that moved (a job claimed,
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
        """Process a burst: the jobs queued, up to `worker.burst`; False where none was waiting."""
        done: list[tuple[Job, list[int]]] = []
        with self._job:
            if self.before_job is not None:
                self.before_job()
            jobs = self._claim()
            if not jobs:
                return False
            try:
                for job, outcome in zip(jobs, self._outcomes(jobs), strict=True):
                    try:
                        done.append((job, self.store.finish_job(job, outcome)))
                    except Exception:  # its lease runs out and it is tried again; the others stand
                        log.exception("worker: the outcome of image %d could not be recorded", job.image_id)
                    self._moved()
            finally:
                self._busy_since = None
        for job, recorded in done:
            if self.on_recorded is not None and recorded:
                try:
                    self.on_recorded(job, recorded)
                except Exception:  # the diagnosis stands, recorded; only what it would have sent is missing
                    log.exception("worker: the outputs of image %d could not be queued", job.image_id)
            if self.after_job is not None:
                self.after_job()
        return True

    def _claim(self) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < self.settings.burst:
            try:
                job = self.store.claim_job(self.settings.lease_s, self.settings.max_attempts)
            except Exception:
                if not jobs:
                    raise
                log.exception("worker: cannot claim more jobs; going on with %d", len(jobs))  # not held a lease
                break
            if job is None:
                break
            jobs.append(job)
            self._moved()
        return jobs

    def _moved(self) -> None:
        self._busy_since = self.clock()

    @contextmanager
    def between_jobs(self) -> Iterator[None]:
        """Hold the worker between two jobs (the one at hand finished first): to change the models it uses."""
        with self._job:
            yield

    def _outcomes(self, jobs: list[Job]) -> list[Outcome]:
        """Each job's outcome: every image begun in its models (decoded side by side), then each model's images
        finished together (inferred in one batch)."""
        plans: list[Outcome | list[tuple[Diagnoser, Pending]]] = []
        for job in jobs:
            try:
                plans.append(self._begin(job))
            except Exception as exc:
                plans.append(_internal(job, exc))
        waiting: dict[Diagnoser, list[Pending]] = {}
        for plan in plans:
            for diagnoser, begun in plan if isinstance(plan, list) else []:
                waiting.setdefault(diagnoser, []).append(begun)
        diagnoses: dict[Pending, Diagnosis] = {}
        for diagnoser, pending in waiting.items():
            diagnoses.update(zip(pending, diagnoser.finish(pending, self._moved), strict=True))
        outcomes = []
        for job, plan in zip(jobs, plans, strict=True):
            try:
                outcome = plan if isinstance(plan, Outcome) else _combined([(d, diagnoses[p]) for d, p in plan])
            except Exception as exc:
                outcome = _internal(job, exc)
            if outcome.view is None and self.views is not None:
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
