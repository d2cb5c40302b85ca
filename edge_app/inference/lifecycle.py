"""The models in service: which one an administrator put in service (and rolled back), the site's thresholds, what
a worker in its own process follows from the front, and the one way a TensorRT engine is built while the service
runs: in the background, the running models serving meanwhile, then swapped in between two images (a new model's
before it serves; at start, that of a model serving on ONNX Runtime for want of its engine).

With the models in this process (`load`), a change takes effect between two images; on the front alone (the
worker runs apart), a change is checked and recorded, and the worker takes it up between two of its jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from edge_app.bundles.bundle import Bundle, load_as_configured, load_bundle, read_manifest_of
from edge_app.bundles.manifest import Manifest
from edge_app.config import Settings, with_overrides
from edge_app.errors import EdgeAppError, NotFound, UserError
from edge_app.inference.diagnoser import Diagnoser
from edge_app.inference.model_import import bundles_dir
from edge_app.inference.registry import Registry
from edge_app.inference.status import InService, of_diagnosers, read_status, write_status
from edge_app.runtime.engines.background import BackgroundBuild
from edge_app.store import Store
from edge_app.store.models import ModelHistory
from edge_app.system.wakeup import wake

log = logging.getLogger(__name__)
Pause = Callable[[], AbstractContextManager[None]]


class ModelLifecycle:
    """Activation, rollback, site thresholds and following changes for the models of one data directory."""

    def __init__(self, settings: Settings, store: Store, *, load: bool, worker_running: Callable[[], bool]) -> None:
        """`load`: the models run in this process (else the front's view, as the worker says it);
        `worker_running`: whether an inference worker serves this data directory."""
        self.settings = settings
        self.store = store
        self.history = ModelHistory(store)
        self._worker_running = worker_running
        self._manifests: dict[str, Manifest] = {}  # by bundle sha256: a manifest never changes
        self._activating = threading.Lock()
        self._followed = self.history.latest_change()
        self._problem: str | None = None  # a model put in service on the front that this worker could not load
        self._update: BackgroundBuild | None = None  # a model waiting for its TensorRT engine before it serves
        self._engines: list[BackgroundBuild] = []  # engines of models serving on ONNX Runtime meanwhile
        self._pending_at_start: Bundle | None = None  # such a model, found recorded at start
        self._said: str | None = None  # the problem worker.json holds
        self._between_jobs: Pause = contextlib.nullcontext
        self._between_frames: Pause = contextlib.nullcontext
        self.registry = self._load_registry() if load else None
        for diagnoser in self.registry.diagnosers if self.registry is not None else []:
            self._apply_thresholds(diagnoser)

    def pause_with(self, between_jobs: Pause, between_frames: Pause | None = None) -> None:
        """Swap models while the worker (and the live inference) is between two images."""
        self._between_jobs = between_jobs
        self._between_frames = between_frames or contextlib.nullcontext

    def start(self) -> None:
        """A model put in service but never checked on this GPU: its engine is built now, as when it was. With
        `build_engine_at_start`, each other model serving on ONNX Runtime for want of its engine gets it built."""
        if self._pending_at_start is not None:
            self._build_then_swap(self._pending_at_start)
        model = self.settings.model
        if self.registry is None or model.runner != "auto" or not model.build_engine_at_start:
            return
        pending = self._pending_at_start.sha256 if self._pending_at_start is not None else None
        for diagnoser in self.registry.diagnosers[1 if pending else 0 :]:  # the first is replaced when pending is
            bundle = self._engine_to_build(diagnoser.bundle.path) if diagnoser.runner.name == "onnxruntime" else None
            if bundle is not None:
                self._build_then_swap(bundle, serving=True)

    def stop(self) -> None:
        """Cancel the engine builds under way (the models still serve until `close`)."""
        for build in [self._update, *self._engines]:
            if build is not None:
                build.cancel()

    def close(self) -> None:
        """Release the models."""
        if self.registry is not None:
            self.registry.close()

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
        said = read_status(self.settings.storage.data_dir) if self._worker_running() else None
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

    def say_what_runs(self) -> None:
        """Write worker.json: the models this process runs and what is wrong with them (the front reads it)."""
        if self.registry is not None:
            self._said = self.problem()
            write_status(self.settings.storage.data_dir, of_diagnosers(self.registry.diagnosers), self._said)

    def problem(self) -> str | None:
        """What is wrong with the models in service, in plain words, or None."""
        if self.registry is not None:  # a model that could not be put in service, else a runner's (a hub away)
            return self._problem or next((d.runner.problem for d in self.registry.diagnosers if d.runner.problem), None)
        if not self._worker_running():
            return "the inference worker is not running (edge-app-worker.service): images wait in the queue"
        said = read_status(self.settings.storage.data_dir)
        return said.problem if said is not None else None

    def _active_path(self) -> Path | None:
        active = self.history.activations()
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
        active = self.history.activations()
        return active[1].path if len(active) > 1 else self.settings.model.bundle

    def _still_wanted(self, bundle: Bundle) -> bool:
        """Whether `bundle` is still the model an administrator put in service last (else the configured one)."""
        wanted = self._active_path() or self.settings.model.bundle
        return Path(wanted).resolve() == bundle.path.resolve()

    def _apply_thresholds(self, diagnoser: Diagnoser) -> None:
        site = self.history.thresholds(diagnoser.bundle.sha256)
        diagnoser.set_thresholds(site.thresholds if site is not None else None)

    def _load(self, path: Path) -> Bundle:
        return load_as_configured(path, self.settings.model)

    def activate(self, path: Path, actor: str) -> Bundle:
        """Serve the bundle at `path` in place of the first model, from the next image on (the one at hand
        finishes on the old one); recorded, so that it is still the model after a restart (and so that a worker
        in its own process follows)."""
        with self._activating:  # two administrators at once: one after the other, recorded in that order
            # the front: check it, record it; the worker puts it in service
            bundle = self._load(path) if self.registry is None else self._swap(path)
            m = bundle.manifest
            self.history.record(actor, "activate", bundle.sha256, bundle.path, m.name, m.version)
            self.store.audit(actor, "model.activate", f"{m.name} {m.version}", bundle.sha256)
            self._followed = self.history.latest_change()
            if self.registry is None:
                wake(self.settings.storage.data_dir, "worker")  # it takes the change up between two images
            return bundle

    def rollback(self, actor: str) -> Bundle:
        """Go back to the model served before the last activation (the configured one before any)."""
        if not self.history.activations():
            raise UserError("no model was activated here: the configured one is in service already")
        return self.activate(self._previous_path(), actor)

    def set_thresholds(self, sha256: str, thresholds: dict[str, float], actor: str) -> int:
        """A new version of the site's thresholds for a bundle in service, applied from the next image on."""
        model = next((m for m in self.in_service() if m.bundle_sha256 == sha256), None)
        if model is None:
            raise NotFound(f"no model in service has the bundle {sha256[:16]}")
        version = self.history.set_thresholds(sha256, model.labels, thresholds, actor)
        for diagnoser in self.registry.diagnosers if self.registry is not None else []:
            self._apply_thresholds(diagnoser)
        self.say_what_runs()
        self._followed = self.history.latest_change()
        if self.registry is None:
            wake(self.settings.storage.data_dir, "worker")
        detail = ", ".join(f"{k}={v:g}" for k, v in sorted(thresholds.items()))
        self.store.audit(actor, "model.thresholds", sha256, f"version {version}: {detail}")
        return version

    def behind(self) -> bool:
        """Whether an administrator changed a model or its thresholds on the front since `follow` took them up."""
        return self.history.latest_change() != self._followed

    def follow(self) -> None:
        """Between two jobs of a worker in its own process: take up what an administrator changed on the front."""
        assert self.registry is not None
        latest = self.history.latest_change()
        if latest == self._followed:
            if self.problem() != self._said:  # a runner's state changed (a hub gone or back): the front shows it
                self.say_what_runs()
            return
        self._followed = latest  # tried once: a model that cannot be loaded is reported, not retried each 0.2 s
        wanted = self._active_path() or self.settings.model.bundle
        if Path(wanted).resolve() != self.registry.diagnosers[0].bundle.path.resolve():
            log.info("putting the model at %s in service (changed on the web service)", wanted)
            try:
                self._swap(Path(wanted), held=True)
                self._problem = None
            except EdgeAppError as exc:
                self._problem = (
                    f"the model put in service ({wanted}) cannot be loaded here ({exc}): the previous one runs"
                )
                log.error("%s", self._problem)
                self.store.audit("system", "model.fallback", str(wanted), str(exc))
        for diagnoser in self.registry.diagnosers:
            self._apply_thresholds(diagnoser)
        self.say_what_runs()

    def _swap(self, path: Path, *, held: bool = False, replacing: str | None = None) -> Bundle:
        """Put a new diagnoser for `path` in place of the first (or of the one whose bundle is `replacing`), between
        two images (`held`: the worker is between two already). Where this machine runs TensorRT and a new model
        has no engine yet, its engine is built and checked against the bundle's reference outputs first, the
        running model serving meanwhile; a failure leaves the running model in service (and recorded so)."""
        assert self.registry is not None
        bundle = self._engine_to_build(path) if replacing is None else None
        if bundle is not None:
            self._build_then_swap(bundle)
            return bundle
        if replacing is None:
            self._drop_pending()  # another model was chosen meanwhile: the update waiting for its engine is off
        new = Diagnoser.from_settings(self.settings, path, decoder=self.registry.decoder)
        self._apply_thresholds(new)
        with contextlib.nullcontext() if held else self._between_jobs(), self._between_frames():
            diagnosers = self.registry.diagnosers
            shas = [d.bundle.sha256 for d in diagnosers]
            index = 0 if replacing is None else shas.index(replacing) if replacing in shas else None
            if index is not None:
                self.registry.diagnosers = [*diagnosers[:index], new, *diagnosers[index + 1 :]]
        old = new if index is None else diagnosers[index]  # None: the model it was built for left service meanwhile
        old.close()
        self.say_what_runs()
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
        bundle = self._load(path)
        missing = EngineCache(self.settings.engine_cache).lookup(bundle, platform, model.max_batch) is None
        return bundle if missing else None

    def _drop_pending(self) -> None:
        """Cancel the update waiting for its engine, without waiting for it (its thread checks before it swaps)."""
        update, self._update = self._update, None
        if update is not None:
            update.cancel(timeout=0)

    def _build_then_swap(self, bundle: Bundle, *, serving: bool = False) -> None:
        """Build and check `bundle`'s engine in the background, the running models serving meanwhile; then swap it
        in between two images. A new model (`serving` False) is put in service if it is still the one wanted; its
        failure leaves the running model, recorded as in service. A model `serving` on ONNX Runtime moves to its
        engine; its failure (remembered in the cache, not tried again until `edge-app engines --retry`) leaves it
        on ONNX Runtime."""
        from edge_app.runtime.engines.cache import EngineCache
        from edge_app.runtime.engines.ensure import build_limits, build_options

        assert self.registry is not None
        m = bundle.manifest
        if serving:
            log.info("%s %s: building its TensorRT engine; ONNX Runtime serves meanwhile", m.name, m.version)
        else:
            update = self._update
            if update is not None and update.bundle.sha256 == bundle.sha256 and update.thread.is_alive():
                return  # already under way: a second look at the model history does not start it again
            self._drop_pending()
            log.info(
                "%s %s: building and checking its TensorRT engine; the running model serves meanwhile",
                m.name,
                m.version,
            )

        def built(engine: Path) -> None:
            with self._activating:
                if build.cancelled:
                    return
                if serving:
                    log.info("TensorRT engine ready (%s): %s moves from ONNX Runtime", engine, m.name)
                    self._swap(bundle.path, replacing=bundle.sha256)
                    return
                if not self._still_wanted(bundle):
                    return
                self._update = None
                self._swap(bundle.path)  # its engine is cached now: it serves from the next image
                self._problem = None
                self.say_what_runs()

        def failed(exc: EdgeAppError) -> None:
            with self._activating:
                if serving and not build.cancelled:
                    log.warning("the TensorRT engine of %s was not built (%s): staying on ONNX Runtime", m.name, exc)
                if serving or build.cancelled or not self._still_wanted(bundle):
                    return
                self._problem = f"{m.name} {m.version} was not put in service ({exc}): the previous model runs"
                log.error("%s", self._problem)
                self.store.audit("system", "model.fallback", str(bundle.path), str(exc))
                assert self.registry is not None
                running = self.registry.diagnosers[0].bundle  # recorded: a restart keeps it too
                r = running.manifest
                self.history.record("system", "activate", running.sha256, running.path, r.name, r.version)
                self._followed = self.history.latest_change()
                self.say_what_runs()

        cache = EngineCache(self.settings.engine_cache)
        options, limits = build_options(self.settings), build_limits(self.settings)
        build = BackgroundBuild(bundle, cache, options, limits, built, failed, retry=not serving)
        if serving:
            self._engines.append(build)
        else:
            self._update = build
        build.start()
