"""Who is asking, and may they: sessions and Bearer tokens, roles, CSRF, idle logout, the login limits
(`edge_app.store.logins`), and the security headers of every answer."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, flash, g, jsonify, redirect, request, session, url_for
from flask_wtf.csrf import CSRFProtect

from edge_app.config import Settings
from edge_app.store.accounts import User
from edge_app.store.logins import LoginLimits
from edge_app.web import services

F = TypeVar("F", bound=Callable[..., Any])
csrf = CSRFProtect()
BACKGROUND_HEADER = "X-Background"  # a page refreshing itself: not a sign that someone is at the tablet
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Principal:
    """Whoever a request comes from: a logged-in user or an API token."""

    name: str
    roles: frozenset[str]
    user: User | None = None  # None for a token


def current() -> Principal | None:
    principal: Principal | None = g.get("principal")
    return principal


def requires(*roles: str) -> Callable[[F], F]:
    """The view answers only someone holding one of `roles`: anyone else gets 401 (API) or the login page, and
    a wrong role 403. The roles are kept on the view, where the route-by-role test reads them."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            principal = current()
            if principal is None:
                if _is_api():
                    return jsonify(error="Unauthorized", detail="log in, or send an API token (Bearer)"), 401
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not principal.roles & set(roles):
                return _forbidden(roles)
            return view(*args, **kwargs)

        wrapped.roles = frozenset(roles)  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorate


def public(view: F) -> F:
    """A view anyone may reach (the login page, health, static files)."""
    view.roles = None  # type: ignore[attr-defined]
    return view


def log_in(user: User) -> None:
    session.clear()
    session.update(uid=user.id, epoch=user.epoch, seen=time.time())
    session.permanent = False


def log_out() -> None:
    session.clear()


def init_app(app: Flask, settings: Settings) -> None:
    """Sessions (idle logout), Bearer tokens, CSRF on every unsafe request of a session, and headers."""
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to the tablet from another site (a top-level GET) carries the session, where
        # Strict sent none and the tablet looked logged out. No GET changes anything, and every unsafe request
        # needs its CSRF token (below), which a cross-site POST, sent without the cookie anyway, cannot have.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.tls,
        SESSION_COOKIE_NAME="edge_session",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in `_authenticate`, for sessions only: a token is no cookie
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as the session, which the idle logout ends
    )
    csrf.init_app(app)
    server = settings.server
    app.extensions["login_limits"] = LoginLimits(
        services.get_from(app).store, server.login_attempts, server.login_lockout_min * 60, server.login_delay_s
    )
    idle_s = settings.server.idle_logout_min * 60
    app.extensions["idle_logout_min"] = settings.server.idle_logout_min

    @app.before_request
    def _authenticate() -> Any:
        g.principal = None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer " and _is_api():
            token = services.get().accounts.token(header[7:].strip())
            if token is None:
                return jsonify(error="Unauthorized", detail="the API token is not valid, or was revoked"), 401
            g.principal = Principal(f"token:{token.name}", token.roles)
            return None
        uid = session.get("uid")
        if request.method not in ("GET", "HEAD", "OPTIONS") and (uid is not None or not _is_api()):
            csrf.protect()  # a form, or the API called from a logged-in page (header X-CSRFToken)
        if uid is None:
            return None
        user = services.get().accounts.user_by_id(int(uid))
        now = time.time()
        seen = float(session.get("seen", 0))
        if user is None or user.disabled or user.epoch != session.get("epoch") or now - seen > idle_s:
            log_out()
            if user is not None and now - seen > idle_s:
                flash_idle()
            return None
        if not request.headers.get(BACKGROUND_HEADER):
            session["seen"] = now
        g.principal = Principal(user.name, user.roles, user)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # Flask-WTF checks the Referer of a form posted over HTTPS
        if request.is_secure:  # browsers heed it only over HTTPS with a certificate they trust
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if current() is not None:  # patient data: never kept by the tablet's browser cache
            response.headers["Cache-Control"] = "no-store"
        return response


def flash_idle() -> None:
    """Tell the login page that the session ended for want of activity."""
    from flask import current_app
    from flask_babel import gettext

    minutes = current_app.extensions["idle_logout_min"]
    flash(gettext("You were signed out after %(minutes)d minutes without activity.", minutes=minutes), "info")


def login_limits() -> LoginLimits:
    from flask import current_app

    limits: LoginLimits = current_app.extensions["login_limits"]
    return limits


def _is_api() -> bool:
    return request.path.startswith("/api/")


def home(roles: frozenset[str] | None = None) -> str:
    """Where someone with `roles` (default: whoever asks) lands: the worklist for a clinician or a technician, the
    users' page for an administrator alone (the worklist would refuse them), else the login page."""
    principal = current()
    roles = roles if roles is not None else principal.roles if principal is not None else frozenset()
    if roles & {"clinician", "technician"}:
        return url_for("worklist.index")
    return url_for("admin.users") if "admin" in roles else url_for("auth.login")


def _forbidden(roles: tuple[str, ...]) -> Any:
    from flask import abort

    if _is_api():
        return jsonify(error="Forbidden", detail=f"this needs the role {' or '.join(roles)}"), 403
    if request.method == "GET" and request.path == "/":  # the landing page: to one this role may see
        return redirect(home())
    abort(403)
