"""Administration: users and roles, API tokens, the models in service, the audit log (viewed and as CSV)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm

from edge_app.bundles.bundle import Bundle, read_manifest_of
from edge_app.bundles.manifest import SiteValidation
from edge_app.errors import UserError
from edge_app.inference.model_import import import_folder, import_zip, imported_bundles, usb_bundles
from edge_app.ops.reviewed import site_id
from edge_app.outputs import csv_cells
from edge_app.store.accounts import ROLES, Token, User, parse_roles
from edge_app.web import security, services
from edge_app.web.forms import ActionForm, TokenForm, UserForm

bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 200


def _actor() -> str:
    principal = security.current()
    return principal.name if principal else ""


@bp.get("/users")
@security.requires("admin")
def users() -> Any:
    svc = services.get()
    form = UserForm(language=svc.settings.server.language)
    return render_template("admin/users.html", users=svc.accounts.users(), form=form, action=ActionForm(), roles=ROLES)


@bp.post("/users")
@security.requires("admin")
def add_user() -> Any:
    svc = services.get()
    form = UserForm()
    if not form.validate_on_submit():
        _flash_errors(form)
    elif _taken(svc.accounts.users(), form.username.data or ""):
        flash(_("A user named %(name)s exists already.", name=form.username.data), "error")
    else:
        try:
            user = svc.accounts.add_user(
                form.username.data or "",
                parse_roles(list(form.roles())),
                form.password.data or "",
                form.language.data or "en",
                actor=_actor(),
            )
        except UserError as exc:
            flash(str(exc), "error")
        else:
            flash(_("User %(name)s added.", name=user.name), "info")
            return redirect(url_for("admin.users"))
    return render_template(
        "admin/users.html", users=svc.accounts.users(), form=form, action=ActionForm(), roles=ROLES
    ), 400


@bp.post("/users/<name>/<action>")
@security.requires("admin")
def change_user(name: str, action: str) -> Any:
    """disable, enable, or roles (checkboxes `role-<name>`)."""
    svc = services.get()
    if not ActionForm().validate_on_submit() or action not in ("disable", "enable", "roles"):
        flash(_("Nothing was changed."), "error")
        return redirect(url_for("admin.users"))
    try:
        if action == "roles":
            chosen = [role for role in ROLES if request.form.get(f"role-{role}")]
            if not chosen:
                raise UserError(_("Choose at least one role."))
            if "admin" not in chosen and _is_self(name):
                raise UserError(_("You cannot take away your own administrator role."))
            svc.accounts.set_roles(name, parse_roles(chosen), actor=_actor())
        else:
            if action == "disable" and _is_self(name):
                raise UserError(_("You cannot disable your own account."))
            svc.accounts.set_disabled(name, action == "disable", actor=_actor())
    except UserError as exc:
        flash(str(exc), "error")
    else:
        flash(_("User %(name)s changed.", name=name), "info")
    return redirect(url_for("admin.users"))


@bp.get("/tokens")
@security.requires("admin")
def tokens() -> Any:
    svc = services.get()
    return render_template("admin/tokens.html", tokens=svc.accounts.tokens(), form=TokenForm(), action=ActionForm())


@bp.post("/tokens")
@security.requires("admin")
def create_token() -> Any:
    svc = services.get()
    form = TokenForm()
    secret = None
    if not form.validate_on_submit():
        _flash_errors(form)
    elif _taken(svc.accounts.tokens(), form.name.data or ""):
        flash(_("A token named %(name)s exists or existed: a name is never reused.", name=form.name.data), "error")
    else:
        try:
            secret = svc.accounts.create_token(form.name.data or "", parse_roles(form.role.data or ""), actor=_actor())
        except UserError as exc:
            flash(str(exc), "error")
    return render_template(
        "admin/tokens.html", tokens=svc.accounts.tokens(), form=TokenForm(), action=ActionForm(), secret=secret
    )


@bp.post("/tokens/<name>/revoke")
@security.requires("admin")
def revoke_token(name: str) -> Any:
    svc = services.get()
    if ActionForm().validate_on_submit():
        try:
            svc.accounts.revoke_token(name, actor=_actor())
        except UserError as exc:
            flash(str(exc), "error")
        else:
            flash(_("Token %(name)s revoked.", name=name), "info")
    return redirect(url_for("admin.tokens"))


@bp.get("/models")
@security.requires("admin")
def models() -> Any:
    svc = services.get()
    in_service = []
    for m in svc.lifecycle.in_service():
        site = svc.lifecycle.history.thresholds(m.bundle_sha256)
        thresholds = site.thresholds if site else m.thresholds  # the worker takes them up between two images
        in_service.append(
            {
                **m.info(),
                "path": m.path,
                "thresholds": thresholds,
                "site_version": site.version if site else None,
                "history": svc.lifecycle.history.threshold_history(m.bundle_sha256),
                "here": _validated_here(m.path, m.bundle_sha256),
            }
        )
    imported = [{**b, "here": _validated_here(b["path"], b["sha256"])} for b in imported_bundles(svc.settings)]
    return render_template(
        "admin/models.html",
        models=in_service,
        imported=imported,
        usb=usb_bundles(svc.settings),
        import_dir=svc.settings.model.import_dir,
        changes=svc.lifecycle.history.changes(),
        problem=svc.lifecycle.problem(),
        can_roll_back=bool(svc.lifecycle.history.activations()),
        action=ActionForm(),
    )


def _validated_here(path: str, sha256: str) -> SiteValidation | None:
    """The bundle's figure on this box's reviewed cases (`edge-app export --reviewed`), where it was measured."""
    manifest = read_manifest_of(Path(path), sha256)
    return manifest.validated_at(site_id(services.get().settings)) if manifest is not None else None


@bp.post("/models/upload")
@security.requires("admin")
def upload_model() -> Any:
    svc = services.get()
    upload = request.files.get("bundle")
    if not ActionForm().validate_on_submit() or upload is None or not upload.filename:
        flash(_("Choose a bundle (.zip) to upload."), "error")
        return redirect(url_for("admin.models"))
    return _imported(lambda: import_zip(upload.stream, svc.settings), upload.filename)


@bp.post("/models/import")
@security.requires("admin")
def import_model() -> Any:
    svc = services.get()
    if not ActionForm().validate_on_submit():
        return redirect(url_for("admin.models"))
    folder = Path(request.form.get("path", ""))
    return _imported(lambda: import_folder(folder, svc.settings), str(folder))


def _imported(do: Callable[[], Bundle], source: str) -> Any:
    svc = services.get()
    try:
        bundle = do()
    except UserError as exc:
        svc.store.audit(_actor(), "model.import.refused", source, str(exc))
        flash(_("The bundle was refused: %(reason)s", reason=str(exc)), "error")
    else:
        m = bundle.manifest
        svc.lifecycle.history.record(_actor(), "import", bundle.sha256, bundle.path, m.name, m.version)
        svc.store.audit(_actor(), "model.import", f"{m.name} {m.version}", bundle.sha256)
        flash(_("%(name)s %(version)s verified and imported.", name=m.name, version=m.version), "info")
    return redirect(url_for("admin.models"))


@bp.post("/models/<sha256>/activate")
@security.requires("admin")
def activate_model(sha256: str) -> Any:
    svc = services.get()
    bundle = next((b for b in imported_bundles(svc.settings) if b["sha256"] == sha256), None)
    if not ActionForm().validate_on_submit() or bundle is None:
        flash(_("Nothing was changed."), "error")
        return redirect(url_for("admin.models"))
    return _activated(lambda: svc.lifecycle.activate(Path(bundle["path"]), _actor()))


@bp.post("/models/rollback")
@security.requires("admin")
def rollback_model() -> Any:
    svc = services.get()
    if not ActionForm().validate_on_submit():
        return redirect(url_for("admin.models"))
    return _activated(lambda: svc.lifecycle.rollback(_actor()))


def _activated(do: Callable[[], Bundle]) -> Any:
    try:
        bundle = do()
    except UserError as exc:
        flash(_("The model could not be put in service: %(reason)s", reason=str(exc)), "error")
    else:
        m = bundle.manifest
        flash(_("%(name)s %(version)s is in service.", name=m.name, version=m.version), "info")
    return redirect(url_for("admin.models"))


@bp.post("/models/<sha256>/thresholds")
@security.requires("admin")
def set_thresholds(sha256: str) -> Any:
    svc = services.get()
    if ActionForm().validate_on_submit():
        try:
            given = {k.removeprefix("threshold-"): v for k, v in request.form.items() if k.startswith("threshold-")}
            thresholds = {label: float(value) for label, value in given.items()}
        except ValueError:
            flash(_("A threshold is a number between 0 and 1."), "error")
        else:
            try:
                version = svc.lifecycle.set_thresholds(sha256, thresholds, _actor())
            except UserError as exc:
                flash(str(exc), "error")
            else:
                flash(_("Site thresholds version %(version)d in use.", version=version), "info")
    return redirect(url_for("admin.models"))


@bp.get("/audit")
@security.requires("admin")
def audit() -> Any:
    store = services.get().store
    return render_template("admin/audit.html", entries=store.audit_trail(AUDIT_PAGE), chain=store.audit_chain())


@bp.get("/audit.csv")
@security.requires("admin")
def audit_csv() -> Response:
    svc = services.get()
    entries = svc.store.audit_trail(-1)  # SQLite: LIMIT -1 is no limit
    svc.store.audit(_actor(), "audit.export", detail=f"{len(entries)} entries")
    buf = io.StringIO()
    csv_cells.write(buf, ["id", "at", "actor", "action", "subject", "detail", "hash"], reversed(entries))
    return Response(
        buf.getvalue(), mimetype="text/csv", headers={"Content-Disposition": 'attachment; filename="audit.csv"'}
    )


def _is_self(name: str) -> bool:
    """Whether `name` is the administrator at hand: who must not lock the box's administration out."""
    principal = security.current()
    return principal is not None and principal.name.lower() == name.lower()


def _flash_errors(form: FlaskForm) -> None:
    for messages in form.errors.values():
        for message in messages:
            flash(str(message), "error")


def _taken(existing: Sequence[User] | Sequence[Token], name: str) -> bool:
    return any(item.name.lower() == name.lower() for item in existing)
