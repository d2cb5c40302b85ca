"""The running service, attached to the web app with `init_app` and reached from requests with `get`."""

from __future__ import annotations

from flask import Flask, current_app

from edge_app.service import Service

_KEY = "edge_app"


def init_app(app: Flask, service: Service) -> None:
    """Serve `service`'s store, models and sources to this app's requests (its owner starts and stops it)."""
    app.extensions[_KEY] = service


def get() -> Service:
    return get_from(current_app)


def get_from(app: Flask) -> Service:
    service: Service = app.extensions[_KEY]
    return service
