"""Logging in and out, the first administrator (from the box itself only), each user's language."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _

from edge_app.errors import UserError
from edge_app.store.accounts import LANGUAGES
from edge_app.web import audit, security, services
from edge_app.web.forms import LanguageForm, LoginForm, SetupForm

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
@security.public
def login() -> Any:
    svc = services.get()
    if _first_run() and _from_this_box():
        return redirect(url_for("auth.setup"))
    form = LoginForm()
    status, headers = 200, dict[str, str]()
    if form.validate_on_submit():
        name, address = form.username.data or "", request.remote_addr or ""
        limits = security.login_limits()
        refusal = limits.attempt(name, address)
        if refusal is not None:  # the password is not checked
            status = 429
            if refusal.reason == "account":
                audit.refused_login(name, address, "the account waits")
                headers["Retry-After"] = str(refusal.wait_s)
                wait = _(
                    "Too many failed logins on this account: wait %(seconds)d s, then try again.",
                    seconds=refusal.wait_s,
                )
                flash(wait, "error")
            else:
                audit.refused_login(name, address, "too many failures from there")
                flash(_("Too many failed attempts. Wait a few minutes, then try again."), "error")
        else:
            user = svc.accounts.authenticate(name, form.password.data or "")
            if user is None:
                svc.store.audit(name, "login.failure", detail=f"from {address}")
                flash(_("Wrong user name or password."), "error")
                status = 401
            else:
                limits.succeeded(name)
                security.log_in(user)
                svc.store.audit(user.name, "login.success", detail=f"from {address}")
                return redirect(_safe_next(request.args.get("next"), user.roles))
    elif request.method == "POST":
        status = 400
    return render_template("login.html", form=form), status, headers


@bp.post("/logout")
@security.public
def logout() -> Any:
    """Log out; the tablet's idle timer posts `idle=1` and the page it was on (`next`): the login page then says
    why, and leads back there."""
    principal = security.current()
    if principal is not None and principal.user is not None:
        services.get().accounts.end_sessions(principal.user.name)  # the cookie alone would outlive the logout
        services.get().store.audit(principal.name, "logout", detail="idle" if request.form.get("idle") else "")
    security.log_out()
    if not request.form.get("idle"):
        return redirect(url_for("auth.login"))
    security.flash_idle()
    back = request.form.get("next")
    return redirect(url_for("auth.login", next=back) if back and _safe_next(back) == back else url_for("auth.login"))


@bp.get("/session/alive")
@security.requires("clinician", "technician", "admin")
def alive() -> Any:
    """Nothing: someone is at the tablet (typing a note makes no request), so the session stays open."""
    return "", 204


@bp.route("/setup", methods=["GET", "POST"])
@security.public
def setup() -> Any:
    """The first administrator, while there is no user, from a browser on the box itself."""
    svc = services.get()
    if not _first_run() or not _from_this_box():
        abort(404)
    form = SetupForm()
    if form.validate_on_submit():
        try:
            name = form.username.data or ""
            user = svc.accounts.add_user(
                name,
                frozenset({"admin"}),
                form.password.data or "",
                svc.settings.server.language,
                actor=name,
                how="first-run page",
            )
        except UserError as exc:
            flash(str(exc), "error")
        else:
            security.log_in(user)
            return redirect(url_for("admin.users"))
    return render_template("setup.html", form=form)


@bp.post("/language")
@security.requires("clinician", "technician", "admin")
def language() -> Any:
    form = LanguageForm()
    principal = security.current()
    if form.validate_on_submit() and principal is not None and principal.user is not None:
        services.get().accounts.set_language(principal.user.name, form.language.data or "en")
    return redirect(_safe_next(request.args.get("next")))


@bp.get("/lang/<code>")
@security.public
def login_language(code: str) -> Any:
    """The language of the pages before logging in (kept in the session)."""
    if code in LANGUAGES:
        session["lang"] = code
    return redirect(url_for("auth.login"))


def _first_run() -> bool:
    """No account at all. Disabled ones count: a box whose accounts are all disabled is not new, and any process
    on it could otherwise make itself administrator (`edge-app user enable` is the way back)."""
    return not services.get().accounts.users()


def _from_this_box() -> bool:
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def _safe_next(target: str | None, roles: frozenset[str] | None = None) -> str:
    """Only a path on this server: no scheme, no host, no backslash, no control character or space (a browser
    drops a tab from "/<tab>/evil.example" and goes to //evil.example): no open redirect."""
    if (
        target
        and target.startswith("/")
        and not any(c <= " " or c in "\\\x7f" for c in target)
        and not urlsplit(target).netloc
        and not target.startswith("//")
    ):
        return target
    return security.home(roles)
