"""What the web app needs at hand: the store and the diagnoser, attached with `init_app`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from edge_app.bundle import load_bundle
from edge_app.config import Settings
from edge_app.imaging import DecodeLimits
from edge_app.pipeline import Diagnoser
from edge_app.runtime import open_runner
from edge_app.store import Store

_KEY = "edge_app"


@dataclass
class Services:
    settings: Settings
    store: Store
    diagnoser: Diagnoser


def init_app(app: Flask, settings: Settings) -> None:
    bundle = load_bundle(settings.model.bundle)
    runner = open_runner(bundle, settings.model.runner, settings.model.threads)
    limits = DecodeLimits(max_pixels=settings.imaging.max_pixels, frame=settings.imaging.frame)
    store = Store(settings.storage.data_dir)
    app.extensions[_KEY] = Services(settings, store, Diagnoser(bundle, runner, limits))
    store.audit("system", "service.start", bundle.manifest.name, f"runner={runner.name} bundle={bundle.sha256}")


def get() -> Services:
    services: Services = current_app.extensions[_KEY]
    return services
