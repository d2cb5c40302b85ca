"""The worklist: every study held, found by patient or accession, filtered, in triage or time order, a page at a
time. It asks every 15 s what arrived and announces it; the rows change only when the clinician taps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, get_args
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, render_template, request, url_for
from flask_babel import ngettext

from edge_app.store import ImageStatus, Study
from edge_app.store.rows import StudyOrder, StudyPage, StudyQuery, StudyState
from edge_app.web import audit, i18n, security, services, words

bp = Blueprint("worklist", __name__)
PAGE = 20  # studies a page: 20 cards fill a tablet's portrait screen about twice
# The arguments a worklist URL (and the API) may carry to pick studies; the page's own (page, since) aside.
FILTERS = ("q", "positive", "unreviewed", "state", "from", "to", "modality", "sort")


@dataclass(frozen=True)
class Row:
    """One study as the worklist shows it."""

    uid: str
    received_at: str
    patient_id: str
    patient_name: str
    modality: str
    status: ImageStatus
    reason: str | None
    reason_kind: str | None
    positive: list[str] = field(default_factory=list)
    reviewed: bool = False
    state: str = ""  # the newest review's: read or referred
    triage: float = 0.0  # the most urgent image's: what the list sorts by


def study_row(study: Study, reviewed: bool, state: str = "") -> Row:
    images = study.images
    statuses = [image.status for image in images]
    status: ImageStatus
    if "queued" in statuses:
        status = "queued"
    elif "done" in statuses:
        status = "done"
    else:
        status = statuses[-1] if statuses else "queued"
    why = next((image for image in images if image.status == status and image.reason), None)
    positive: dict[str, None] = {}
    triage = 0.0
    for image in images:
        if (result := image.latest_ok) is not None:
            positive.update(
                (words.label_of(result.bundle_sha256, f.label), None) for f in result.findings if f.positive
            )
            triage = max(triage, result.triage or 0.0)
    first = images[0].metadata if images else {}
    return Row(
        uid=study.uid,
        received_at=study.created_at,
        patient_id=study.patient_id or first.get("patient_id", ""),
        patient_name=first.get("patient_name", ""),
        modality=first.get("modality", "") or first.get("format", "").upper(),
        status=status,
        reason=why.reason if why and status != "done" else None,
        reason_kind=why.reason_kind if why and status != "done" else None,
        positive=list(positive),
        reviewed=reviewed,
        state=state,
        triage=triage,
    )


def study_query(args: Mapping[str, str], results: bool, offset: int, limit: int) -> StudyQuery:
    """The studies a URL's arguments ask for (`FILTERS`); 400 where one cannot be read. Dates are the clinic's
    calendar days (site.timezone), `to` included."""
    zone = ZoneInfo(services.get().settings.site.timezone)
    state, order = args.get("state", ""), args.get("sort", "triage" if results else "newest")
    if state not in get_args(StudyState) or order not in get_args(StudyOrder):
        abort(400, "state is queued or refused; sort is triage, newest or oldest")
    bounds = []
    for name, shift in (("from", 0), ("to", 1)):
        try:
            day = dt.date.fromisoformat(args[name]) if args.get(name) else None
        except ValueError:
            abort(400, f"{name} is a date (YYYY-MM-DD)")
        bounds.append(i18n.day_start(day + dt.timedelta(days=shift), zone) if day else "")
    return StudyQuery(
        text=args.get("q", "").strip()[:200],
        positive=args.get("positive") == "1",
        unreviewed=args.get("unreviewed") == "1",
        state=state,  # type: ignore[arg-type]  # checked above
        received_from=bounds[0],
        received_to=bounds[1],
        modality=args.get("modality", "")[:16],
        order=order,  # type: ignore[arg-type]
        offset=offset,
        limit=limit,
        results=results,
    )


def _sees_results() -> bool:
    """AI results are a clinician's (as in the API): anyone else sees each study's status, newest first, with no
    finding, no review, no triage order and no filter on them, which would tell the result too."""
    principal = security.current()
    return principal is not None and "clinician" in principal.roles


def _listing() -> dict[str, Any]:
    """What the list shows for this request's arguments: its rows, counts, pages and what arrived since `since`."""
    store = services.get().store
    results = _sees_results()
    number = max(request.args.get("page", 1, type=int) or 1, 1)
    q = study_query(request.args, results, (number - 1) * PAGE, PAGE)
    found: StudyPage = store.find_studies(q)
    states = services.get().reviews.states(found.reviewed)
    rows = [study_row(study, study.uid in found.reviewed, states.get(study.uid, "")) for study in found.studies]
    if not results:
        rows = [replace(row, positive=[], triage=0.0) for row in rows]
    since = request.args.get("since", 0, type=int) or 0
    new = store.count_studies(replace(q, newer_than=since)) if 0 < since < found.newest else 0
    kept: dict[str, Any] = {k: v for k, v in request.args.items() if k in FILTERS and v}
    pages = max((found.total + PAGE - 1) // PAGE, 1)
    return {
        "rows": rows,
        "total": found.total,
        "first": q.offset + 1 if rows else 0,
        "last": q.offset + len(rows),
        "page": number,
        "pages": pages,
        "prev_url": url_for("worklist.index", **kept, page=number - 1) if number > 1 else None,
        "next_url": url_for("worklist.index", **kept, page=number + 1) if number < pages else None,
        "newest": found.newest,
        "news": ngettext("%(num)d new study", "%(num)d new studies", new) if new else "",
        "refresh_url": url_for("worklist.rows", **kept, page=number),
        "args": kept,
    }


@bp.get("/")
@security.requires("clinician", "technician")
@audit.reads("worklist.view")
def index() -> Any:
    listing = _listing()
    return render_template("worklist.html", modalities=services.get().store.modalities(), **listing)


@bp.get("/worklist/rows")
@security.requires("clinician", "technician")
@audit.reads("worklist.view")
def rows() -> Any:
    """The list alone (rows, counts, pages) for this page's arguments, with what arrived after `since` announced:
    the page asks for it every 15 s and puts it in only when the clinician taps the announcement."""
    return render_template("worklist_rows.html", **_listing())
