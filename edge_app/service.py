"""The one place that wires the appliance together: store, models, worker, ingest; started and stopped here."""

from __future__ import annotations

import logging
import threading

from edge_app.capture import Source, open_sources
from edge_app.config import Settings, is_loopback
from edge_app.errors import ConfigError
from edge_app.ingest import Ingest
from edge_app.live import LiveInference
from edge_app.outputs.outbox import Outbox
from edge_app.outputs.sender import Sender
from edge_app.registry import Registry
from edge_app.store import Store
from edge_app.store.accounts import Accounts
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
        try:
            self.registry = Registry.from_settings(settings)
        except BaseException:
            self.store.close()
            raise
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
            self.store, on_queued=self.worker.wake, exposure_window_s=settings.capture.serial.exposure_window_s
        )
        video = settings.capture.video
        self.live = LiveInference(self.registry, video.modality) if video.enabled and video.infer_every else None
        self.sources = open_sources(settings, self.ingest, self.live.submit if self.live is not None else None)
        self._loops = [loop for loop in (self.worker, self.sender, self.live) if loop is not None]

    def start(self) -> None:
        """Clear what a crash left behind, then start the worker (it first takes the jobs left queued). Refuse
        to serve beyond this machine while no one can log in."""
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
        started: list[Source | Worker | Sender | LiveInference] = []
        try:
            for part in [*self._loops, *self.sources]:  # the loops first: a source's first image finds them running
                part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise
        self.store.audit("system", "service.start", self.registry.describe(), f"queued={queued} orphans={removed}")

    def stop(self) -> None:
        """Stop taking images, let the worker finish the one at hand, release the models, close the store."""
        self.stopping.set()
        for part in [*self.sources, *reversed(self._loops)]:
            part.stop()
        self.registry.close()
        self.store.close()
