"""The Flask application: `create_app()`, one blueprint per area."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from edge_app.bundle import format_validation_error
from edge_app.config import Settings, check_secure, load_settings
from edge_app.errors import ConfigError
from edge_app.web import services
from edge_app.web.api import bp as api_bp

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | Settings | None = None) -> Flask:
    """Build the app from settings: a `Settings`, a mapping shaped like the TOML file, or (None) the file named
    by $EDGE_APP_CONFIG with environment overrides."""
    if test_config is None:
        settings = load_settings(os.environ.get("EDGE_APP_CONFIG"))
    elif isinstance(test_config, Settings):
        settings = test_config
    else:
        try:
            settings = Settings.model_validate(dict(test_config))
        except ValidationError as exc:
            raise ConfigError(f"invalid configuration: {format_validation_error(exc)}") from None
    check_secure(settings)

    app = Flask(__name__)
    app.request_class = _Request
    app.config.update(
        SECRET_KEY=settings.server.secret_key or os.urandom(32).hex(),
        MAX_CONTENT_LENGTH=settings.server.max_upload_mb * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    services.init_app(app, settings)
    app.register_blueprint(api_bp)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Any:
        limit = settings.server.max_upload_mb
        detail = f"the upload is larger than the limit of {limit} MB (server.max_upload_mb)"
        return jsonify(error=exc.name, detail=detail), 413

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        return jsonify(error=exc.name, detail=exc.description), exc.code or 500

    return app


class _Request(Request):
    """Multipart bodies parsed strictly: a malformed one raises `ValueError` saying why, where werkzeug's
    default drops the part without a word."""

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser
