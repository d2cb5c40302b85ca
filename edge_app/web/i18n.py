"""Every visible string through Flask-Babel: the logged-in user's language, else the one picked on the login
page, else server.language. Catalogues in web/translations (English is the source language)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

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
    zone = ZoneInfo(settings.site.timezone)
    app.jinja_env.filters["local_time"] = lambda text: local_time(text, zone)
    app.jinja_env.globals["clinic_zone"] = settings.site.timezone


def local_time(text: str, zone: ZoneInfo) -> str:
    """A time as the store writes it (ISO 8601, UTC) as the clinic reads it: date and minute in the clinic's time
    zone (site.timezone), then the zone's abbreviation ("2025-03-01 14:05 EAT"). Any page shows times through it
    (the `local_time` filter)."""
    if not text:
        return ""
    at = dt.datetime.fromisoformat(text)
    local = (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def day_start(day: dt.date, zone: ZoneInfo) -> str:
    """The UTC time (as the store writes times) at which a day of the clinic's calendar begins."""
    start = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.timezone.utc)
    return start.isoformat(timespec="milliseconds")
