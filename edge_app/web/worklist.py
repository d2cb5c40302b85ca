"""The worklist: recent studies, positive findings first (triage) for a clinician; it refreshes itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, render_template

from edge_app.store import ImageStatus, Study
from edge_app.web import audit, security, services, words

bp = Blueprint("worklist", __name__)
LIMIT = 100


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
    triage: float = 0.0  # the most urgent image's: what the list sorts by


def study_row(study: Study, reviewed: bool) -> Row:
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
        triage=triage,
    )


def worklist_rows() -> list[Row]:
    """The rows for whoever asks. AI results are a clinician's (as in the API): anyone else sees each study's
    status, newest first, with no finding, no review and no triage order, which would tell the result too."""
    svc = services.get()
    principal = security.current()
    if principal is None or "clinician" not in principal.roles:
        return [replace(study_row(study, False), positive=[], triage=0.0) for study in svc.store.list_studies(LIMIT)]
    studies = svc.store.list_studies(LIMIT)
    reviewed = svc.reviews.reviewed([image.id for study in studies for image in study.images])
    rows = [study_row(study, any(image.id in reviewed for image in study.images)) for study in studies]

    # Positive findings not yet reviewed first, the most urgent (triage score) first among them; then the rest,
    # newest first (the sort is stable).
    def order(row: Row) -> tuple[bool, float]:
        urgent = bool(row.positive) and not row.reviewed
        return not urgent, -row.triage if urgent else 0.0

    return sorted(rows, key=order)


@bp.get("/")
@security.requires("clinician", "technician")
@audit.reads("worklist.view")
def index() -> Any:
    return render_template("worklist.html", rows=worklist_rows())


@bp.get("/worklist/rows")
@security.requires("clinician", "technician")
@audit.reads("worklist.view")
def rows() -> Any:
    """The table's body alone, for the page to refresh itself."""
    return render_template("worklist_rows.html", rows=worklist_rows())
