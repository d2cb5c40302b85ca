"""The devices page: each capture source and serial device with its state, the models and their runner, the
queue, the results not yet sent to each destination (re-sent from here by an administrator), the free disk; the
capture button where a video source is attached."""

from __future__ import annotations

import shutil
import time
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from edge_app.ingest import Event
from edge_app.outputs.sender import backlog_problem
from edge_app.runtime.engines.ensure import engine_status
from edge_app.store.monitoring import Monitoring
from edge_app.web import security, services
from edge_app.web.forms import ActionForm

bp = Blueprint("devices", __name__, url_prefix="/devices")


@bp.get("")
@security.requires("technician", "admin")
def index() -> Any:
    svc = services.get()
    disk = shutil.disk_usage(svc.settings.storage.data_dir)
    backlog, now = svc.store.backlog(), time.time()
    return render_template(
        "devices.html",
        sources=[source.state() for source in svc.sources],
        models=svc.lifecycle.in_service(),
        problem=svc.lifecycle.problem(),
        engines=engine_status(svc.settings.engine_cache),
        queued=svc.store.queued(),
        backlog=backlog,
        backlog_problem=backlog_problem(backlog, svc.settings.outputs, now),
        flags=Monitoring(svc.store).flags(),
        now=now,
        free_gb=disk.free / 1e9,
        free_fraction=disk.free / disk.total if disk.total else 0.0,
        can_capture=svc.ingest.has_capture,
        form=ActionForm(),
    )


@bp.post("/capture")
@security.requires("technician")
def capture() -> Any:
    svc = services.get()
    if ActionForm().validate_on_submit() and svc.ingest.has_capture:
        principal = security.current()
        svc.ingest.event(Event("capture", {}, principal.name if principal else "web"))
        flash(_("Frame requested: it appears in the worklist in a moment."), "info")
    else:
        flash(_("No video source is configured."), "error")
    return redirect(url_for("devices.index"))


@bp.post("/outbox/retry")
@security.requires("admin")
def retry_outbox() -> Any:
    """Queue again the results given up for one destination (form field `destination`), or for all."""
    svc = services.get()
    if ActionForm().validate_on_submit():
        principal = security.current()
        count = svc.retry_outputs(principal.name if principal else "web", request.form.get("destination") or None)
        flash(_("%(n)d result(s) queued again.", n=count), "info")
    return redirect(url_for("devices.index"))
