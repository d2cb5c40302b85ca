"""The one place that wires the appliance together: store, models, worker, ingest; started and stopped here."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from pathlib import Path
from typing import IO

from edge_app.bundle import Bundle
from edge_app.capture import Source, open_sources
from edge_app.config import Settings, is_loopback, with_overrides
from edge_app.errors import ConfigError, NotFound, UserError
from edge_app.ingest import Ingest
from edge_app.live import LiveInference
from edge_app.outputs.outbox import Outbox
from edge_app.outputs.sender import Sender
from edge_app.pipeline import Diagnoser
from edge_app.registry import Registry
from edge_app.retention import Retention
from edge_app.store import Store
from edge_app.store.accounts import Accounts
from edge_app.store.db import SERVICE_LOCK
from edge_app.store.models import ModelHistory
from edge_app.store.reviews import Reviews
from edge_app.worker import Worker

log = logging.getLogger(__name__)


class Service:
    """Everything `edge-app serve` runs besides the web server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()  # set by `stop`: long answers (the video preview) end
        self.store = Store(settings.storage.data_dir)
        self.accounts = Accounts(self.store)
        self.reviews = Reviews(self.store)
        self.models = ModelHistory(self.store)
        self._activating = threading.Lock()
        self._lock_file: IO[str] | None = None
        try:
            self.registry = Registry.from_settings(self._with_active_model(settings))
        except BaseException:
            self.store.close()
            raise
        for diagnoser in self.registry.diagnosers:
            self._apply_thresholds(diagnoser)
        outputs = settings.outputs
        self.sender = Sender(self.store, outputs) if outputs.destinations else None
        self.worker = Worker(
            self.store,
            self.registry,
            settings.worker,
            outbox=Outbox(self.store, outputs) if outputs.destinations else None,
            on_output=self.sender.wake if self.sender is not None else None,
        )
        self.ingest = Ingest(
            self.store,
            on_queued=self.worker.wake,
            exposure_window_s=settings.capture.serial.exposure_window_s,
            min_free_mb=settings.storage.min_free_mb,
        )
        video = settings.capture.video
        self.live = LiveInference(self.registry, video.modality) if video.enabled and video.infer_every else None
        self.sources = open_sources(settings, self.ingest, self.live.submit if self.live is not None else None)
        days = settings.storage.retention_days
        self.retention = Retention(self.store, days) if days else None
        self._loops = [loop for loop in (self.worker, self.sender, self.live, self.retention) if loop is not None]

    def start(self) -> None:
        """Clear what a crash left behind, then start the worker (it first takes the jobs left queued). Refuse
        to serve beyond this machine while no one can log in."""
        self._hold_data_dir()
        host = self.settings.server.host
        if not is_loopback(host) and self.accounts.active_count() == 0:
            raise ConfigError(
                f"refusing to listen on {host}: no user can log in yet; add one first with "
                "`edge-app user add NAME --role admin`"
            )
        removed = self.store.remove_orphans()
        self.store.release_leases()  # this service is the only worker on its data directory
        queued = self.store.queued()
        if removed or queued:
            log.info("at start: %d stray file(s) removed, %d image(s) waiting for a result", removed, queued)
        started: list[Source | Worker | Sender | LiveInference | Retention] = []
        try:
            for part in [*self._loops, *self.sources]:  # the loops first: a source's first image finds them running
                part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise
        self.store.audit("system", "service.start", self.registry.describe(), f"queued={queued} orphans={removed}")

    def _hold_data_dir(self) -> None:
        """One service per data directory (its worker re-queues whatever another left running), and none while a
        restore replaces it: an exclusive lock, released when the process ends, however it ends."""
        self._lock_file = (self.settings.storage.data_dir / SERVICE_LOCK).open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise ConfigError(
                f"another edge-app service is using {self.settings.storage.data_dir}: stop it first"
            ) from None

    def _with_active_model(self, settings: Settings) -> Settings:
        """The settings with the model an administrator activated last in place of the configured one."""
        active = self.models.activations()
        if not active:
            return settings
        if not (active[0].path / "manifest.json").is_file():
            log.error(
                "the activated model %s is gone from %s: serving the configured one", active[0].name, active[0].path
            )
            return settings
        return with_overrides(settings, "model", {"bundle": str(active[0].path)})

    def _apply_thresholds(self, diagnoser: Diagnoser) -> None:
        site = self.models.thresholds(diagnoser.bundle.sha256)
        diagnoser.set_thresholds(site.thresholds if site is not None else None)

    def activate(self, path: Path, actor: str) -> Bundle:
        """Serve the bundle at `path` in place of the first model, from the next image on (the one at hand
        finishes on the old one); recorded, so that it is still the model after a restart."""
        with self._activating:  # two administrators at once: one after the other, recorded in that order
            return self._activate(path, actor)

    def _activate(self, path: Path, actor: str) -> Bundle:
        new = Diagnoser.from_settings(self.settings, path, decoder=self.registry.decoder)
        self._apply_thresholds(new)
        live = self.live.between_frames() if self.live is not None else contextlib.nullcontext()
        with self.worker.between_jobs(), live:
            old = self.registry.diagnosers[0]
            self.registry.diagnosers = [new, *self.registry.diagnosers[1:]]
        old.close()
        m = new.bundle.manifest
        self.models.record(actor, "activate", new.bundle.sha256, new.bundle.path, m.name, m.version)
        self.store.audit(actor, "model.activate", f"{m.name} {m.version}", new.bundle.sha256)
        return new.bundle

    def rollback(self, actor: str) -> Bundle:
        """Go back to the model served before the last activation (the configured one before any)."""
        active = self.models.activations()
        if not active:
            raise UserError("no model was activated here: the configured one is in service already")
        previous = active[1].path if len(active) > 1 else self.settings.model.bundle
        return self.activate(previous, actor)

    def set_thresholds(self, sha256: str, thresholds: dict[str, float], actor: str) -> int:
        """A new version of the site's thresholds for a bundle in service, applied from the next image on."""
        diagnoser = next((d for d in self.registry.diagnosers if d.bundle.sha256 == sha256), None)
        if diagnoser is None:
            raise NotFound(f"no model in service has the bundle {sha256[:16]}")
        version = self.models.set_thresholds(sha256, diagnoser.bundle.manifest.labels, thresholds, actor)
        self._apply_thresholds(diagnoser)
        detail = ", ".join(f"{k}={v:g}" for k, v in sorted(thresholds.items()))
        self.store.audit(actor, "model.thresholds", sha256, f"version {version}: {detail}")
        return version

    def stop(self) -> None:
        """Stop taking images, let the worker finish the one at hand, release the models, close the store."""
        self.stopping.set()
        for part in [*self.sources, *reversed(self._loops)]:
            part.stop()
        self.registry.close()
        self.store.close()
        if self._lock_file is not None:
            self._lock_file.close()  # and with it the lock
