"""What the store gives back to read: a study with its images, each image's results, heatmaps and outputs, as
frozen rows. The pages, the report and the export read them by attribute; the API's JSON is written here, once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge_app.bundles.findings import ResultStatus
from edge_app.errors import ReasonKind

# queued for the worker; done (diagnosed); rejected (not diagnosed: refused, kept apart, or kept with its study: no
# image, or the box's own); failed (an internal error); no_model (none reads it); outside (the input guard refused it)
ImageStatus = Literal["queued", "done", "rejected", "failed", "no_model", "outside"]
OutputState = Literal["queued", "sent", "failed"]
OUTPUT_FIELDS = ("destination", "kind", "state", "attempts", "last_error", "updated_at")


@dataclass(frozen=True)
class StoredFinding:
    """One label's answer as it was recorded (`positive` as decided then, not recomputed from the rounding)."""

    label: str
    probability: float
    threshold: float
    positive: bool
    validated: bool = True  # a result of before validation per label was recorded: every label validated

    def json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "positive": self.positive,
            "validated": self.validated,
        }


@dataclass(frozen=True)
class HeatmapRef:
    label: str
    sha256: str


@dataclass(frozen=True)
class Output:
    """One object queued for one destination."""

    destination: str
    kind: str  # sr, sc, or documents (an SR and SC that could not be made: failed, with the reason)
    state: OutputState
    attempts: int
    last_error: str | None
    updated_at: str

    @classmethod
    def of(cls, row: sqlite3.Row) -> Output:
        return cls(*(row[k] for k in OUTPUT_FIELDS))

    def json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OUTPUT_FIELDS}


@dataclass(frozen=True)
class Result:
    """A model's result on one image, with its heatmaps (most probable finding first)."""

    id: int
    created_at: str
    status: ResultStatus
    model: Mapping[str, str]  # name, version, precision, runner (and the server of a remote runner)
    bundle_sha256: str
    findings: tuple[StoredFinding, ...]
    timings_ms: Mapping[str, float]
    guard: Mapping[str, Any] | None  # the input guard's verdict; None: not checked (a bundle without a guard)
    triage: float | None
    reason: str | None
    heatmaps: tuple[HeatmapRef, ...]

    @classmethod
    def of(cls, row: sqlite3.Row, heatmaps: list[tuple[str, str]]) -> Result:
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            status=row["status"],
            model=json.loads(row["model"]),
            bundle_sha256=row["bundle_sha256"],
            findings=tuple(StoredFinding(**f) for f in json.loads(row["findings"])),
            timings_ms=json.loads(row["timings"]),
            guard=json.loads(row["guard"]) if row["guard"] is not None else None,
            triage=row["triage"],
            reason=row["reason"],
            heatmaps=tuple(HeatmapRef(label, sha) for label, sha in heatmaps),
        )

    def heatmap(self, label: str | None = None) -> HeatmapRef | None:
        """The heatmap of finding `label` (None: the most probable finding's); None if there is no such one."""
        if label is None:
            return self.heatmaps[0] if self.heatmaps else None
        return next((m for m in self.heatmaps if m.label == label), None)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "created_at": self.created_at,
            "status": self.status,
            "model": dict(self.model),
            "bundle_sha256": self.bundle_sha256,
            "findings": [f.json() for f in self.findings],
            "timings_ms": dict(self.timings_ms),
            "guard": dict(self.guard) if self.guard is not None else None,
            "triage": self.triage,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        out["heatmaps"] = [{"label": m.label, "sha256": m.sha256} for m in self.heatmaps]
        return out


@dataclass(frozen=True)
class Image:
    """An image of a study: where it came from, what became of it, its results (oldest first) and outputs."""

    id: int
    sop_instance_uid: str
    series_uid: str | None
    status: ImageStatus
    reason: str | None
    reason_kind: ReasonKind | None  # what the reason is about (the tablet's words); None: recorded before kinds were
    source: str
    filename: str
    sha256: str
    size: int
    view_sha256: str | None  # None where it has no view or its files were removed
    purged_at: str | None
    received_at: str
    metadata: Mapping[str, Any]  # all that is stored of the image (its header, an exposure report)
    results: tuple[Result, ...]
    outputs: tuple[Output, ...]

    @property
    def latest_ok(self) -> Result | None:
        """The newest diagnosis (a result another model gave later replaces the one before)."""
        return next((r for r in reversed(self.results) if r.status == "ok"), None)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sop_instance_uid": self.sop_instance_uid,
            "series_uid": self.series_uid,
            "status": self.status,
            "reason": self.reason,
            "reason_kind": self.reason_kind,
            "source": self.source,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            "view_sha256": self.view_sha256,
            "purged_at": self.purged_at,
            "received_at": self.received_at,
            "metadata": dict(self.metadata),
            "results": [r.json() for r in self.results],
            "outputs": [o.json() for o in self.outputs],
        }


@dataclass(frozen=True)
class Study:
    uid: str
    created_at: str
    source: str
    patient_id: str
    images: tuple[Image, ...]

    def image(self, image_id: int) -> Image | None:
        return next((i for i in self.images if i.id == image_id), None)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "created_at": self.created_at,
            "source": self.source,
            "patient_id": self.patient_id,
            "images": [i.json() for i in self.images],
        }


StudyState = Literal["", "queued", "refused"]  # "": any; queued: an image waits for the AI; refused: none diagnosed
StudyOrder = Literal["triage", "newest", "oldest"]


@dataclass(frozen=True)
class StudyQuery:
    """Which studies a list shows, in which order, which part of them. `results=False` (someone who may not see AI
    results): the filters and the order that would tell a result (positive, unreviewed, triage) are not applied."""

    text: str = ""  # words each found in the patient's name, patient ID or accession number (case-blind for ASCII)
    positive: bool = False  # an AI-positive finding on an image's newest diagnosis
    unreviewed: bool = False
    state: StudyState = ""
    received_from: str = ""  # UTC ISO bounds on when the study arrived: from (included) ... to (excluded)
    received_to: str = ""
    modality: str = ""
    order: StudyOrder = "triage"
    offset: int = 0
    limit: int = 20
    results: bool = True
    newer_than: int = 0  # only studies the store numbered above this (`StudyPage.newest`): what arrived since


@dataclass(frozen=True)
class StudyPage:
    """A page of studies, the number that match in all, which of them were reviewed, and the newest study's number
    in the store when it was read (to ask later what arrived since)."""

    studies: tuple[Study, ...]
    total: int
    reviewed: frozenset[str]  # the UIDs of the studies on the page with a review of any image
    newest: int
