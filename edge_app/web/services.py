"""What the web app needs at hand: the store and the diagnoser, attached with `init_app`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from edge_app.config import Settings
from edge_app.pipeline import Diagnoser
from edge_app.store import Store

_KEY = "edge_app"


@dataclass
class Services:
    settings: Settings
    store: Store
    diagnoser: Diagnoser


def init_app(app: Flask, settings: Settings) -> None:
    diagnoser = Diagnoser.from_settings(settings)
    store = Store(settings.storage.data_dir)
    app.extensions[_KEY] = Services(settings, store, diagnoser)
    bundle = diagnoser.bundle
    store.audit(
        "system", "service.start", bundle.manifest.name, f"runner={diagnoser.runner.name} bundle={bundle.sha256}"
    )


def get() -> Services:
    services: Services = current_app.extensions[_KEY]
    return services
