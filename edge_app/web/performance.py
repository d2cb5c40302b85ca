"""Model performance, for the administrator: each bundle's agreement with clinicians per finding, per week (a small
plot drawn here as SVG: nothing fetched, nothing to install) and by patient group, beside its validation; the flags,
acknowledged from here; the figures as CSV and as a one-page PDF summary. Aggregates only: a group under
`monitoring.min_group_size` images is shown without its figures."""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from markupsafe import Markup

from edge_app.outputs import csv_cells
from edge_app.outputs.drift import StationDrift
from edge_app.outputs.performance import BundleFigures, Line, figures
from edge_app.store.monitoring import Monitoring
from edge_app.system.clock import utc_text
from edge_app.web import security, services
from edge_app.web.forms import ActionForm

bp = Blueprint("performance", __name__, url_prefix="/admin")
CSV_FIELDS = (
    "bundle", "name", "version", "label", "dimension", "group", "state", "images", "refused",
    "ai_positive_reviewed", "agreed", "ppv", "ppv_low", "ppv_high", "validation_ppv",
    "ai_negative_reviewed", "marked_positive", "missed", "missed_low", "missed_high", "validation_missed", "reason",
    "guard_ks", "guard_limit", "intensity_tv", "refused_share", "refused_before", "positive_share", "positive_before",
)  # fmt: skip


def _actor() -> str:
    principal = security.current()
    return principal.name if principal else ""


def _current(fresh: bool = False) -> list[BundleFigures]:
    """The figures of the monitoring's last round (`fresh`: counted now, the flags settled)."""
    svc = services.get()
    if svc.monitor is not None:
        return svc.monitor.run_once() if fresh else svc.monitor.latest()
    Monitoring(svc.store).catch_up()  # a front apart from nothing: counted all the same
    return figures(svc.store, svc.settings.monitoring, svc.lifecycle.manifest_of)


@bp.get("/performance")
@security.requires("admin")
def index() -> Any:
    svc = services.get()
    bundles = _current(fresh=request.args.get("count") == "now")
    return render_template(
        "admin/performance.html",
        bundles=bundles,
        plots={b.sha256: {label: _plot(b, label) for label in b.expected} for b in bundles},
        flags=Monitoring(svc.store).flags(),
        settings=svc.settings.monitoring,
        form=ActionForm(),
    )


@bp.post("/performance/flags/<int:flag_id>/acknowledge")
@security.requires("admin")
def acknowledge(flag_id: int) -> Any:
    if ActionForm().validate_on_submit() and Monitoring(services.get().store).acknowledge(flag_id, _actor()):
        flash(_("Flag acknowledged."), "info")
    return redirect(url_for("performance.index"))


@bp.get("/performance.csv")
@security.requires("admin")
def export_csv() -> Response:
    bundles = _current(fresh=True)
    services.get().store.audit(_actor(), "performance.export", detail="csv")
    buf = io.StringIO()
    rows = [_row(b, line) for b in bundles for line in b.lines] + [_drift_row(b, d) for b in bundles for d in b.drift]
    csv_cells.write(buf, list(CSV_FIELDS), rows)
    return Response(
        buf.getvalue(), mimetype="text/csv", headers={"Content-Disposition": 'attachment; filename="performance.csv"'}
    )


@bp.get("/performance.pdf")
@security.requires("admin")
def export_pdf() -> Response:
    """The one-page summary a district supervisor takes away: aggregates only, in the administrator's language."""
    from edge_app.outputs.summary import performance_summary

    svc = services.get()
    bundles = _current(fresh=True)
    svc.store.audit(_actor(), "performance.export", detail="pdf")
    pdf = performance_summary(
        bundles,
        Monitoring(svc.store).flags(),
        svc.settings.monitoring,
        utc_text(),
        _,
        cards={b.sha256: svc.lifecycle.manifest_of(b.sha256) for b in bundles},
        language=str(get_locale()),
    )
    return Response(
        pdf, mimetype="application/pdf", headers={"Content-Disposition": 'attachment; filename="performance.pdf"'}
    )


def _row(bundle: BundleFigures, line: Line) -> dict[str, Any]:
    expected = bundle.expected[line.label]
    shown = line.state != "small"

    def share(value: float | None) -> str:
        return f"{value:.4f}" if value is not None and shown else ""

    ppv, missed = line.ppv.interval or (None, None), line.missed.interval or (None, None)
    return {
        "bundle": bundle.sha256, "name": bundle.name, "version": bundle.version, "label": line.label,
        "dimension": line.dimension, "group": line.group, "state": line.state,
        "images": (line.arrivals.total if shown else "") if line.arrivals else "",
        "refused": (line.arrivals.outside if shown else "") if line.arrivals else "",
        "ai_positive_reviewed": line.ppv.n if shown else "", "agreed": line.ppv.k if shown else "",
        "ppv": share(line.ppv.value), "ppv_low": share(ppv[0]), "ppv_high": share(ppv[1]),
        "validation_ppv": share(expected.ppv),
        "ai_negative_reviewed": line.missed.n if shown else "", "marked_positive": line.missed.k if shown else "",
        "missed": share(line.missed.value), "missed_low": share(missed[0]), "missed_high": share(missed[1]),
        "validation_missed": share(expected.missed), "reason": line.reason,
    }  # fmt: skip


def _drift_row(bundle: BundleFigures, station: StationDrift) -> dict[str, Any]:
    """A station's drift as a row of the CSV (dimension "drift", the station as its group)."""

    def number(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else ""

    return {
        "bundle": bundle.sha256, "name": bundle.name, "version": bundle.version, "dimension": "drift",
        "group": station.station, "state": station.state, "images": station.images,
        "refused": station.refused.k, "reason": "; ".join(station.reasons),
        "guard_ks": number(station.guard_ks), "guard_limit": number(station.guard_limit),
        "intensity_tv": number(station.intensity), "refused_share": number(station.refused.value),
        "refused_before": number(station.refused_before.value), "positive_share": number(station.positive.value),
        "positive_before": number(station.positive_before.value),
    }  # fmt: skip


def _plot(bundle: BundleFigures, label: str, width: int = 320, height: int = 90) -> Markup:
    """The weekly agreement with positive findings as a line (weeks without reviews left out), its 95 % intervals as
    bars, the validation's figure as a dashed line; the y axis from 0 to 1."""
    weeks = [x for x in bundle.of("week") if x.label == label and x.ppv.n]
    expected = bundle.expected[label].ppv

    def y(v: float) -> float:
        return round(height - 4 - v * (height - 8), 1)

    step = (width - 8) / max(len(weeks) - 1, 1)
    parts = [f'<rect x="0" y="0" width="{width}" height="{height}" class="frame"/>']
    if expected is not None:
        parts.append(f'<line x1="0" x2="{width}" y1="{y(expected)}" y2="{y(expected)}" class="expected"/>')
    points = []
    for i, week in enumerate(weeks):
        x = round(4 + i * step, 1)
        low, high = week.ppv.interval or (0.0, 0.0)
        parts.append(f'<line x1="{x}" x2="{x}" y1="{y(low)}" y2="{y(high)}" class="interval"/>')
        points.append(f"{x},{y(week.ppv.value or 0.0)}")
    if points:
        parts.append(f'<polyline points="{" ".join(points)}" class="figure"/>')
    return Markup(
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
        + "".join(parts)
        + "</svg>"
    )
