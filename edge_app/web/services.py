"""The running service, attached to the web app with `init_app` and reached from requests with `get`."""

from __future__ import annotations

from flask import Flask, current_app

from edge_app.config import Settings
from edge_app.service import Role, Service

_KEY = "edge_app"


def init_app(app: Flask, settings: Settings, role: Role = "all") -> None:
    """Start the service (store, models, worker; `front`: without the models and the worker) for this app;
    `get_from(app).stop()` ends it."""
    service = Service(settings, role)
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    app.extensions[_KEY] = service


def get() -> Service:
    return get_from(current_app)


def get_from(app: Flask) -> Service:
    service: Service = app.extensions[_KEY]
    return service
