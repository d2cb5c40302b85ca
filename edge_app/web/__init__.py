"""The Flask application: `create_app(service)`, one blueprint per area."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Request, jsonify, render_template, request
from flask_babel import get_locale
from jinja2 import Environment
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from edge_app.ops.secrets import session_secret
from edge_app.service import Service
from edge_app.web import (
    admin,
    api,
    audit,
    auth,
    devices,
    i18n,
    performance,
    security,
    services,
    study,
    words,
    worklist,
)
from edge_app.web.forms import LanguageForm

log = logging.getLogger(__name__)


def create_app(service: Service) -> Flask:
    """The web app of a service built (and started, and later stopped) by its caller; this starts nothing."""
    settings = service.settings

    app = Flask(__name__)
    app.request_class = _Request
    app.config.update(MAX_CONTENT_LENGTH=settings.server.max_upload_mb * 1024 * 1024, JSON_SORT_KEYS=False)
    services.init_app(app, service)
    app.config["SECRET_KEY"] = session_secret(settings)
    security.init_app(app, settings)
    audit.init_app(app, settings)
    i18n.init_app(app, settings)
    for blueprint in (auth.bp, worklist.bp, study.bp, devices.bp, admin.bp, performance.bp, api.bp):
        app.register_blueprint(blueprint)
    app.view_functions["static"] = security.public(app.view_functions["static"])

    @app.context_processor
    def _page() -> dict[str, Any]:
        principal = security.current()
        roles = principal.roles if principal is not None else frozenset()
        return {
            "principal": principal,
            "roles": roles,
            "can": lambda *wanted: bool(roles & set(wanted)),
            "locale": str(get_locale()),
            "idle_s": settings.server.idle_logout_min * 60,
            "home": security.home(),
            "reason_words": words.reason_words,
            "source_words": words.source_words,
            "finding_name": words.finding_name,
            "worker_state": service.worker_state,  # called by the page that shows the banner, only then
            "language_form": LanguageForm(language=principal.user.language if principal and principal.user else "en"),
        }

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Any:
        limit = settings.server.max_upload_mb
        detail = f"the upload is larger than the limit of {limit} MB (server.max_upload_mb)"
        return _error(exc, detail, 413)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        return _error(exc, exc.description or "", exc.code or 500)

    return app


def compile_templates(env: Environment) -> list[str]:
    """Every template compiled into the app's cache, for a server about to answer: else the first visit to each
    page after a start waits for its compilation (0.4 s for the study page on a desktop's CPU, more on a small ARM
    board), the first study page opened on a tablet included. Returns the templates' names."""
    names = env.list_templates()
    for name in names:
        env.get_template(name)
    return names


def _error(exc: HTTPException, detail: str, code: int) -> Any:
    """JSON for the API, a page for the tablet."""
    if request.path.startswith("/api/"):
        return jsonify(error=exc.name, detail=detail), code
    return render_template("error.html", code=code, name=exc.name, detail=detail), code


class _Request(Request):
    """Multipart bodies parsed strictly: a malformed one raises `ValueError` saying why, where werkzeug's
    default drops the part without a word."""

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser
