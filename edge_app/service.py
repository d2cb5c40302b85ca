"""The one place that wires the appliance together: store, models, worker, ingest; started and stopped here.

One process runs it all (`edge-app serve`), or two share the data directory (the appliance's units): the front
(`edge-app serve --no-worker`: the web service, the capture sources, ingest) and the worker (`edge-app worker`:
the models, the inference worker, the outputs, retention), so that a model or a GPU driver that crashes takes
neither the DICOM receiver nor the tablets down. They meet in the database: the front queues jobs, the worker
claims them; the worker follows the model an administrator puts in service and says what it runs in worker.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from pathlib import Path
from typing import IO, Literal

from edge_app.bundles.bundle import Bundle, load_as_configured, load_bundle, read_manifest_of
from edge_app.bundles.manifest import Manifest
from edge_app.capture import Source, open_sources
from edge_app.config import Settings, is_loopback, with_overrides
from edge_app.errors import ConfigError, EdgeAppError, NotFound, UserError
from edge_app.inference.diagnoser import Diagnoser
from edge_app.inference.live import LiveInference
from edge_app.inference.model_import import bundles_dir
from edge_app.inference.registry import Registry
from edge_app.inference.status import InService, of_diagnosers, read_status, write_status
from edge_app.inference.worker import Worker
from edge_app.ingest import Ingest
from edge_app.ops.retention import Retention
from edge_app.outputs.outbox import Outbox
from edge_app.outputs.sender import Sender
from edge_app.runtime.select import BackgroundBuild
from edge_app.store import Store
from edge_app.store.accounts import Accounts
from edge_app.store.db import SERVICE_LOCKS
from edge_app.store.models import ModelHistory
from edge_app.store.reviews import Reviews
from edge_app.system.wakeup import Listener, wake

log = logging.getLogger(__name__)
Role = Literal["all", "front", "worker"]
ORPHAN_AGE_S = 3600.0  # with the front and the worker apart, a stray file is one older than this
Loop = Worker | Sender | LiveInference | Retention | Listener


class Service:
    """Everything `edge-app serve` (or `edge-app worker`) runs besides the web server."""

    def __init__(self, settings: Settings, role: Role = "all") -> None:
        self.settings = settings
        self.role = role
        data_dir = settings.storage.data_dir
        self.stopping = threading.Event()  # set by `stop`: long answers (the video preview) end
        self._lock_files: list[IO[str]] = []
        self._hold_data_dir()  # first: a process that may not run here loads nothing and migrates nothing
        try:
            self.store = Store(settings.storage.data_dir)
        except BaseException:
            self._release_data_dir()
            raise
        self.accounts = Accounts(self.store)
        self.reviews = Reviews(self.store)
        self.models = ModelHistory(self.store)
        self._manifests: dict[str, Manifest] = {}  # by bundle sha256: a manifest never changes
        self._activating = threading.Lock()
        self._followed = self.models.latest_change()
        self._problem: str | None = None  # a model put in service on the front that this worker could not load
        self._update: BackgroundBuild | None = None  # a model waiting for its TensorRT engine before it serves
        self._update_sha: str | None = None
        self._pending_at_start: Bundle | None = None  # such a model, found recorded at start
        self._said: str | None = None  # the problem worker.json holds
        self.registry: Registry | None = None
        self.worker: Worker | None = None
        self.sender: Sender | None = None
        self.live: LiveInference | None = None
        self.retention: Retention | None = None
        if role != "front":
            try:
                self.registry = self._load_registry()
            except BaseException:
                self.store.close()
                self._release_data_dir()
                raise
            for diagnoser in self.registry.diagnosers:
                self._apply_thresholds(diagnoser)
            outputs = settings.outputs
            self.sender = Sender(self.store, outputs) if outputs.destinations else None
            self.worker = Worker(
                self.store,
                self.registry,
                settings.worker,
                on_recorded=Outbox(self.store, outputs, self.sender.wake).queue if self.sender is not None else None,
                before_job=self._follow_models if role == "worker" else None,
                after_job=(lambda: wake(data_dir, "front")) if role == "worker" else None,
            )
            days = settings.storage.retention_days
            self.retention = Retention(self.store, days) if days else None
        self.ingest = Ingest(
            self.store,
            on_queued=self.worker.wake if self.worker is not None else (lambda: wake(data_dir, "worker")),
            exposure_window_s=settings.capture.serial.exposure_window_s,
            min_free_mb=settings.storage.min_free_mb,
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
        parts = (self.worker, self.sender, self.live, self.retention, self.waker)
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
            self._say_what_runs()
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
        if self._pending_at_start is not None:  # its engine first, as when it was put in service
            self._build_then_swap(self._pending_at_start)

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

    # -- the models in service ----------------------------------------------------------------------------------

    def send_to_model(self, image_id: int, bundle_sha256: str, actor: str) -> InService:
        """Queue a finished image again for one of the models in service (a clinician's choice, audited); wake
        the worker, here or in its own process."""
        model = next((m for m in self.in_service() if m.bundle_sha256 == bundle_sha256), None)
        if model is None:
            raise UserError("that model is not in service on this appliance")
        self.store.send_to_model(image_id, bundle_sha256)
        self.store.audit(actor, "image.send_to_model", str(image_id), f"{model.name} {model.version} {bundle_sha256}")
        if self.ingest.on_queued is not None:
            self.ingest.on_queued()
        return model

    def manifest_of(self, sha256: str) -> Manifest | None:
        """The manifest of the bundle that made a result (a model in service, configured or kept), to show its card
        beside the result; None where that bundle is no longer on the box."""
        if sha256 not in self._manifests:
            folders = [Path(m.path) for m in self.in_service()]
            folders += [self.settings.model.bundle, *self.settings.model.extra_bundles]
            folders.append(bundles_dir(self.settings) / sha256)
            found = next((m for m in (read_manifest_of(f, sha256) for f in folders) if m is not None), None)
            if found is None:
                return None
            self._manifests[sha256] = found
        return self._manifests[sha256]

    def in_service(self) -> list[InService]:
        """The models deciding now, what each runs on and its thresholds; for the front, as the worker said."""
        if self.registry is not None:
            return of_diagnosers(self.registry.diagnosers)
        said = read_status(self.settings.storage.data_dir) if self.worker_running() else None
        if said is not None:
            return said.models
        out = []
        for path in [self._active_path() or self.settings.model.bundle, *self.settings.model.extra_bundles]:
            try:
                b = load_bundle(path)
            except EdgeAppError as exc:  # the pages must still open: the rollback button is on one of them
                log.error("model bundle %s cannot be read: %s", path, exc)
                continue
            m = b.manifest
            out.append(
                InService(
                    m.name,
                    m.version,
                    m.precision,
                    "(worker not running)",
                    b.sha256,
                    str(b.path),
                    list(m.labels),
                    dict(m.thresholds),
                )
            )
        return out

    def _say_what_runs(self) -> None:
        if self.registry is not None:
            self._said = self.problem()
            write_status(self.settings.storage.data_dir, of_diagnosers(self.registry.diagnosers), self._said)

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

    def problem(self) -> str | None:
        """What is wrong with the models in service, in plain words, or None."""
        if self.registry is not None:  # a model that could not be put in service, else a runner's (a hub away)
            return self._problem or next((d.runner.problem for d in self.registry.diagnosers if d.runner.problem), None)
        if not self.worker_running():
            return "the inference worker is not running (edge-app-worker.service): images wait in the queue"
        said = read_status(self.settings.storage.data_dir)
        return said.problem if said is not None else None

    def _active_path(self) -> Path | None:
        active = self.models.activations()
        if not active:
            return None
        if not (active[0].path / "manifest.json").is_file():
            log.error(
                "the activated model %s is gone from %s: serving the configured one", active[0].name, active[0].path
            )
            return None
        return active[0].path

    def _load_registry(self) -> Registry:
        """The models: the one an administrator put in service last, else the configured one; where the first
        cannot be loaded (recorded on the web service, it never ran here), the configured one, and the reason is
        said on the health check and the pages."""
        path = self._active_path()
        if path is not None:
            try:
                pending = self._engine_to_build(path)
                if pending is not None:  # put in service, never checked on this GPU: the model before it serves
                    self._pending_at_start = pending
                    path = self._previous_path()
                return Registry.from_settings(with_overrides(self.settings, "model", {"bundle": str(path)}))
            except EdgeAppError as exc:
                self._problem = (
                    f"the model put in service ({path}) cannot be loaded here ({exc}): the configured one runs"
                )
                log.error("%s", self._problem)
                self.store.audit("system", "model.fallback", str(path), str(exc))
        return Registry.from_settings(self.settings)

    def _previous_path(self) -> Path:
        """The model served before the last activation (the configured one before any)."""
        active = self.models.activations()
        return active[1].path if len(active) > 1 else self.settings.model.bundle

    def _still_wanted(self, bundle: Bundle) -> bool:
        """Whether `bundle` is still the model an administrator put in service last (else the configured one)."""
        wanted = self._active_path() or self.settings.model.bundle
        return Path(wanted).resolve() == bundle.path.resolve()

    def _apply_thresholds(self, diagnoser: Diagnoser) -> None:
        site = self.models.thresholds(diagnoser.bundle.sha256)
        diagnoser.set_thresholds(site.thresholds if site is not None else None)

    def activate(self, path: Path, actor: str) -> Bundle:
        """Serve the bundle at `path` in place of the first model, from the next image on (the one at hand
        finishes on the old one); recorded, so that it is still the model after a restart (and so that a worker
        in its own process follows)."""
        with self._activating:  # two administrators at once: one after the other, recorded in that order
            if self.registry is None:  # the front: check it, record it; the worker puts it in service
                model = self.settings.model
                bundle = load_as_configured(path, model)
            else:
                bundle = self._swap_first(path)
            m = bundle.manifest
            self.models.record(actor, "activate", bundle.sha256, bundle.path, m.name, m.version)
            self.store.audit(actor, "model.activate", f"{m.name} {m.version}", bundle.sha256)
            self._followed = self.models.latest_change()
            if self.registry is None:
                wake(self.settings.storage.data_dir, "worker")  # it takes the change up between two images
            return bundle

    def _swap_first(self, path: Path, *, held: bool = False) -> Bundle:
        """Put a new diagnoser for `path` first, between two images (`held`: the worker is between two already).
        Where this machine runs TensorRT and the bundle has no engine yet, its engine is built and checked
        against the bundle's reference outputs first, the running model serving meanwhile; a failure leaves the
        running model in service (and recorded so), with the reason."""
        assert self.registry is not None and self.worker is not None
        bundle = self._engine_to_build(path)
        if bundle is not None:
            self._build_then_swap(bundle)
            return bundle
        self._drop_pending()  # another model was chosen meanwhile: the update waiting for its engine is off
        new = Diagnoser.from_settings(self.settings, path, decoder=self.registry.decoder, build_engine=True)
        self._apply_thresholds(new)
        live = self.live.between_frames() if self.live is not None else contextlib.nullcontext()
        with contextlib.nullcontext() if held else self.worker.between_jobs(), live:
            old = self.registry.diagnosers[0]
            self.registry.diagnosers = [new, *self.registry.diagnosers[1:]]
        old.close()
        self._say_what_runs()
        return new.bundle

    def _engine_to_build(self, path: Path) -> Bundle | None:
        """The bundle at `path` where TensorRT may run it here and its engine is not built yet, else None."""
        from edge_app.runtime.engines.cache import EngineCache
        from edge_app.runtime.tensorrt import current_platform

        model = self.settings.model
        if model.runner == "onnxruntime":
            return None
        try:
            platform = current_platform(model.dla_core)
        except EdgeAppError:
            return None
        bundle = load_as_configured(path, model)
        missing = EngineCache(self.settings.engine_cache).lookup(bundle, platform, model.max_batch) is None
        return bundle if missing else None

    def _drop_pending(self) -> None:
        """Cancel the update waiting for its engine, without waiting for it (its thread checks before it swaps)."""
        update, self._update, self._update_sha = self._update, None, None
        if update is not None:
            update.cancel(timeout=0)

    def _build_then_swap(self, bundle: Bundle) -> None:
        """Build and check `bundle`'s engine in the background, the running model serving meanwhile; then put it
        in service, if it is still the one wanted. A failure leaves the running model, recorded as in service."""
        from edge_app.runtime.engines.build_process import BuildCancelled, build_isolated
        from edge_app.runtime.engines.cache import EngineCache
        from edge_app.runtime.engines.ensure import build_limits, build_options

        assert self.registry is not None
        if self._update is not None and self._update_sha == bundle.sha256 and self._update.thread.is_alive():
            return  # already under way: a second look at the model history does not start it again
        self._drop_pending()
        m = bundle.manifest
        log.info(
            "%s %s: building and checking its TensorRT engine; the running model serves meanwhile", m.name, m.version
        )

        def work(cancel: threading.Event) -> None:
            cache = EngineCache(self.settings.engine_cache)
            options, limits = build_options(self.settings), build_limits(self.settings)
            try:
                build_isolated(bundle, cache, options, limits, cancel=cancel, retry=True)
            except BuildCancelled:
                return
            except EdgeAppError as exc:
                with self._activating:
                    if cancel.is_set() or not self._still_wanted(bundle):
                        return
                    self._problem = f"{m.name} {m.version} was not put in service ({exc}): the previous model runs"
                    log.error("%s", self._problem)
                    self.store.audit("system", "model.fallback", str(bundle.path), str(exc))
                    assert self.registry is not None
                    running = self.registry.diagnosers[0].bundle  # recorded: a restart keeps it too
                    r = running.manifest
                    self.models.record("system", "activate", running.sha256, running.path, r.name, r.version)
                    self._followed = self.models.latest_change()
                    self._say_what_runs()
                return
            with self._activating:
                if cancel.is_set() or not self._still_wanted(bundle):
                    return
                self._update = self._update_sha = None
                self._swap_first(bundle.path)  # its engine is cached now: it serves from the next image
                self._problem = None
                self._say_what_runs()

        self._update = BackgroundBuild(work)
        self._update_sha = bundle.sha256

    def _follow_models(self) -> None:
        """Between two jobs of a worker in its own process: take up what an administrator changed on the front."""
        assert self.registry is not None
        latest = self.models.latest_change()
        if latest == self._followed:
            if self.problem() != self._said:  # a runner's state changed (a hub gone or back): the front shows it
                self._say_what_runs()
            return
        self._followed = latest  # tried once: a model that cannot be loaded is reported, not retried each 0.2 s
        wanted = self._active_path() or self.settings.model.bundle
        if Path(wanted).resolve() != self.registry.diagnosers[0].bundle.path.resolve():
            log.info("putting the model at %s in service (changed on the web service)", wanted)
            try:
                self._swap_first(Path(wanted), held=True)
                self._problem = None
            except EdgeAppError as exc:
                self._problem = (
                    f"the model put in service ({wanted}) cannot be loaded here ({exc}): the previous one runs"
                )
                log.error("%s", self._problem)
                self.store.audit("system", "model.fallback", str(wanted), str(exc))
        for diagnoser in self.registry.diagnosers:
            self._apply_thresholds(diagnoser)
        self._say_what_runs()

    def rollback(self, actor: str) -> Bundle:
        """Go back to the model served before the last activation (the configured one before any)."""
        active = self.models.activations()
        if not active:
            raise UserError("no model was activated here: the configured one is in service already")
        previous = active[1].path if len(active) > 1 else self.settings.model.bundle
        return self.activate(previous, actor)

    def set_thresholds(self, sha256: str, thresholds: dict[str, float], actor: str) -> int:
        """A new version of the site's thresholds for a bundle in service, applied from the next image on."""
        model = next((m for m in self.in_service() if m.bundle_sha256 == sha256), None)
        if model is None:
            raise NotFound(f"no model in service has the bundle {sha256[:16]}")
        version = self.models.set_thresholds(sha256, model.labels, thresholds, actor)
        for diagnoser in self.registry.diagnosers if self.registry is not None else []:
            self._apply_thresholds(diagnoser)
        self._say_what_runs()
        self._followed = self.models.latest_change()
        if self.registry is None:
            wake(self.settings.storage.data_dir, "worker")
        detail = ", ".join(f"{k}={v:g}" for k, v in sorted(thresholds.items()))
        self.store.audit(actor, "model.thresholds", sha256, f"version {version}: {detail}")
        return version

    def stop(self) -> None:
        """Stop taking images, let the worker finish the one at hand, release the models, close the store."""
        self.stopping.set()
        if self._update is not None:
            self._update.cancel()
        for part in [*self.sources, *reversed(self._loops)]:
            part.stop()
        if self.registry is not None:
            self.registry.close()
        self.store.close()
        self._release_data_dir()
