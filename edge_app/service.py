"""The one place that wires the appliance together: store, models, worker, ingest; started and stopped here (or
`with Service(settings) as service:`). What the models in service are and how they change is `ModelLifecycle`'s.

One process runs it all (`edge-app serve`), or two share the data directory (the appliance's units): the front
(`edge-app serve --no-worker`: the web service, the capture sources, ingest) and the worker (`edge-app worker`:
the models, the inference worker, the outputs, retention), so that a model or a GPU driver that crashes takes
neither the DICOM receiver nor the tablets down. They meet in the database: the front queues jobs, the worker
claims them; the worker follows the model an administrator puts in service and says what it runs in worker.json.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import threading
from dataclasses import dataclass
from typing import IO, Literal

from edge_app.capture import Source, open_sources
from edge_app.config import Settings, check_secure, is_loopback
from edge_app.errors import ConfigError, UserError
from edge_app.inference.lifecycle import ModelLifecycle
from edge_app.inference.live import LiveInference
from edge_app.inference.status import InService
from edge_app.inference.views import Views
from edge_app.inference.worker import Worker
from edge_app.ingest import Ingest
from edge_app.ops.retention import Retention
from edge_app.outputs.outbox import Outbox
from edge_app.outputs.performance import Monitor
from edge_app.outputs.sender import Sender
from edge_app.store import Store
from edge_app.store.accounts import Accounts
from edge_app.store.db import SERVICE_LOCKS
from edge_app.store.reviews import Reviews
from edge_app.system.background import Loop
from edge_app.system.clock import utc_now
from edge_app.system.wakeup import Listener, wake

log = logging.getLogger(__name__)
Role = Literal["all", "front", "worker"]
ORPHAN_AGE_S = 3600.0  # with the front and the worker apart, a stray file is one older than this


@dataclass(frozen=True)
class WorkerState:
    running: bool
    queued: int  # images waiting or being read
    waiting_s: float  # how long the oldest of them has waited
    behind_s: float  # from when that is late

    @property
    def problem(self) -> Literal["down", "behind"] | None:
        if not self.running:
            return "down"
        return "behind" if self.queued and self.waiting_s >= self.behind_s else None


class Service:
    """Everything `edge-app serve` (or `edge-app worker`) runs besides the web server."""

    def __init__(self, settings: Settings, role: Role = "all") -> None:
        self.settings = settings
        self.role = role
        data_dir = settings.storage.data_dir
        self.stopping = threading.Event()  # set by `stop` (and before the web server's stop): long answers end
        self._lock_files: list[IO[str]] = []
        if role != "worker":
            check_secure(settings)  # first: a service that may not listen as configured opens nothing
        self._hold_data_dir()  # first: a process that may not run here loads nothing and migrates nothing
        try:
            self.store = Store(settings.storage.data_dir)
        except BaseException:
            self._release_data_dir()
            raise
        self.accounts = Accounts(self.store)
        self.reviews = Reviews(self.store)
        self.worker: Worker | None = None
        self.sender: Sender | None = None
        self.outbox: Outbox | None = None
        self.live: LiveInference | None = None
        self.retention: Retention | None = None
        try:
            self.lifecycle = ModelLifecycle(
                settings, self.store, load=role != "front", worker_running=self.worker_running
            )
        except BaseException:
            self.store.close()
            self._release_data_dir()
            raise
        self.registry = self.lifecycle.registry
        # The tablet's views of images no model decoded: in the worker's decoder processes where this process
        # has them, else (the front) in one of its own, started at the first view asked for.
        self.views = Views(self.store, settings.imaging, self.registry.decoder if self.registry is not None else None)
        if self.registry is not None:
            outputs = settings.outputs
            self.sender = Sender(self.store, outputs) if outputs.destinations else None
            self.outbox = (
                Outbox(self.store, outputs, self.sender.wake, self.lifecycle.manifest_of)
                if self.sender is not None
                else None
            )
            self.worker = Worker(
                self.store,
                self.registry,
                settings.worker,
                on_recorded=self.outbox.queue if self.outbox is not None else None,
                before_job=self.lifecycle.follow if role == "worker" else None,
                change_waiting=self.lifecycle.behind if role == "worker" else None,
                after_job=(lambda: wake(data_dir, "front")) if role == "worker" else None,
                views=self.views,
            )
            days = settings.storage.retention_days
            self.retention = Retention(self.store, days) if days else None
        self.ingest = Ingest(
            self.store,
            on_queued=self.worker.wake if self.worker is not None else (lambda: wake(data_dir, "worker")),
            exposure_window_s=settings.capture.serial.exposure_window_s,
            min_free_mb=settings.storage.min_free_mb,
            max_decode_mb=settings.imaging.max_decode_mb,
        )
        video = settings.capture.video
        self.sources: list[Source] = []
        if role != "worker":
            if video.enabled and video.infer_every and self.registry is not None:
                self.live = LiveInference(self.registry, video.modality)
            elif video.enabled and video.infer_every:
                log.warning("live inference on the video feed needs the models in this process: off (--no-worker)")
            self.sources = open_sources(settings, self.ingest, self.live.submit if self.live is not None else None)
        # Apart, each process listens for the other's wake-ups (an image queued; a result in; a model changed).
        self.waker: Listener | None = None
        if role == "worker" and self.worker is not None:
            self.waker = Listener(data_dir, "worker", self.worker.wake)
        elif role == "front":
            self.waker = Listener(data_dir, "front", self.store.notify_changed)
        if self.worker is not None:
            self.lifecycle.pause_with(self.worker.between_jobs, self.live.between_frames if self.live else None)
        # The model's monitoring counts where the pages are read (one process counts, whichever way it runs).
        self.monitor = (
            Monitor(self.store, settings.monitoring, self.lifecycle.manifest_of) if role != "worker" else None
        )
        parts = (self.worker, self.outbox, self.sender, self.live, self.retention, self.waker, self.monitor)
        self._loops: list[Loop] = [p for p in parts if p is not None]

    def start(self) -> None:
        """Clear what a crash left behind, then start the worker (it first takes the jobs left queued). Refuse
        to serve beyond this machine while no one can log in."""
        host = self.settings.server.host
        if self.role != "worker" and not is_loopback(host) and self.accounts.active_count() == 0:
            raise ConfigError(
                f"refusing to listen on {host}: no user can log in yet; add one first with "
                "`edge-app user add NAME --role admin`"
            )
        # Alone on the data directory, every stray file goes; beside another process, only the old ones.
        removed = self.store.remove_orphans(0.0 if self.role == "all" else ORPHAN_AGE_S) if self.role != "worker" else 0
        queued = 0
        if self.worker is not None:
            self.store.release_leases()  # this process is the only worker on its data directory (its lock)
            queued = self.store.queued()
            self.lifecycle.say_what_runs()
        if self.sender is not None:
            self.store.release_outputs()  # the only sender of this data directory (the worker's lock)
        if removed or queued:
            log.info("at start: %d stray file(s) removed, %d image(s) waiting for a result", removed, queued)
        started: list[Source | Loop] = []
        try:
            for part in [*self._loops, *self.sources]:  # the loops first: a source's first image finds them running
                part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise
        what = self.registry.describe() if self.registry is not None else "front: web service and capture"
        self.store.audit("system", f"service.start.{self.role}", what, f"queued={queued} orphans={removed}")
        self.lifecycle.start()

    def _hold_data_dir(self) -> None:
        """One front and one worker per data directory (a worker re-queues whatever another left running), and
        neither while a restore replaces it: exclusive locks, released when the process ends, however it ends."""
        data_dir = self.settings.storage.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data directory {data_dir} cannot be used (storage.data_dir): {exc}") from exc
        wanted = {"all": SERVICE_LOCKS, "front": SERVICE_LOCKS[:1], "worker": SERVICE_LOCKS[1:]}[self.role]
        for name in wanted:
            lock_file = (data_dir / name).open("a")
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock_file.close()
                self._release_data_dir()
                raise ConfigError(
                    f"another edge-app service is using {self.settings.storage.data_dir} ({name}): stop it first"
                ) from None
            self._lock_files.append(lock_file)

    def _release_data_dir(self) -> None:
        for lock_file in self._lock_files:
            lock_file.close()  # and with it the lock
        self._lock_files = []

    def send_to_model(self, image_id: int, bundle_sha256: str, actor: str) -> InService:
        """Queue a finished image again for one of the models in service (a clinician's choice, audited); wake
        the worker, here or in its own process."""
        model = next((m for m in self.lifecycle.in_service() if m.bundle_sha256 == bundle_sha256), None)
        if model is None:
            raise UserError("that model is not in service on this appliance")
        self.store.send_to_model(image_id, bundle_sha256)
        self.store.audit(actor, "image.send_to_model", str(image_id), f"{model.name} {model.version} {bundle_sha256}")
        if self.ingest.on_queued is not None:
            self.ingest.on_queued()
        return model

    def retry_outputs(self, actor: str, destination: str | None = None) -> int:
        """Queue again the results given up for the configured destinations (or one of them; audited), and the
        documents not made; the sender and the documents loop, here or in the worker's process, take them (at once
        here, within their idle wait there)."""
        destinations = [str(d) for d in self.settings.outputs.destinations]
        count = self.store.retry_outputs(destinations, actor, destination)
        for loop in (self.outbox, self.sender):
            if loop is not None:
                loop.wake()
        return count

    def worker_running(self) -> bool:
        """Whether an inference worker serves this data directory: this process's, or the one holding the
        worker's lock (a worker.json left by one that stopped says nothing)."""
        if self.worker is not None:
            return self.worker.progressing(float("inf"))
        with (self.settings.storage.data_dir / SERVICE_LOCKS[1]).open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True  # held: a worker runs
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False

    def worker_state(self) -> WorkerState:
        """Whether the inference worker runs and how long the oldest image has waited for it (the tablet's
        banner)."""
        oldest = self.store.oldest_queued_at()
        waiting_s = (
            max(0.0, (utc_now() - dt.datetime.fromisoformat(oldest)).total_seconds()) if oldest is not None else 0.0
        )
        return WorkerState(self.worker_running(), self.store.queued(), waiting_s, self.settings.worker.behind_s)

    def stop(self) -> None:
        """Stop taking images, let the worker finish the one at hand, release the models, close the store."""
        self.stopping.set()
        self.lifecycle.stop()
        for part in [*self.sources, *reversed(self._loops)]:
            part.stop()
        self.lifecycle.close()
        self.views.close()
        self.store.close()
        self._release_data_dir()

    def __enter__(self) -> Service:
        """Start; where starting fails, stop what was started and release the data directory."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
