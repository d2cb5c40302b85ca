"""What the web app needs at hand: the store and the diagnoser, attached with `init_app`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app

from edge_app.config import Settings
from edge_app.pipeline import Diagnoser
from edge_app.store import Store

_KEY = "edge_app"
_INTERRUPTED = "the service stopped before this image was diagnosed; send it again"
log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    diagnoser: Diagnoser

    def close(self) -> None:
        self.diagnoser.close()
        self.store.close()


def init_app(app: Flask, settings: Settings) -> None:
    """Open the store, finish what a crash left behind in it, load the model and start the decoders."""
    store = Store(settings.storage.data_dir)
    try:
        diagnoser = Diagnoser.from_settings(settings)
    except BaseException:
        store.close()
        raise
    app.extensions[_KEY] = Services(settings, store, diagnoser)
    bundle = diagnoser.bundle
    failed = store.fail_unfinished(_INTERRUPTED, diagnoser.model_info, bundle.sha256)
    removed = store.remove_orphans()
    if failed or removed:
        log.warning("recovered after a crash: %d image(s) marked failed, %d stray file(s) removed", failed, removed)
    store.audit(
        "system",
        "service.start",
        bundle.manifest.name,
        f"runner={diagnoser.runner.name} bundle={bundle.sha256} unfinished={failed} orphans={removed}",
    )


def get() -> Services:
    return get_from(current_app)


def get_from(app: Flask) -> Services:
    services: Services = app.extensions[_KEY]
    return services
