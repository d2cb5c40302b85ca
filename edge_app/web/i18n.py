"""Every visible string through Flask-Babel: the logged-in user's language, else the one picked on the login
page, else server.language. Catalogues in web/translations (English is the source language)."""

from __future__ import annotations

from flask import Flask, session

from edge_app.config import Settings
from edge_app.store.accounts import LANGUAGES
from edge_app.web import security


def init_app(app: Flask, settings: Settings) -> None:
    from flask_babel import Babel

    def locale() -> str:
        principal = security.current()
        if principal is not None and principal.user is not None:
            return principal.user.language
        chosen = session.get("lang")
        return chosen if chosen in LANGUAGES else settings.server.language

    Babel(app, locale_selector=locale, default_translation_directories="translations")
