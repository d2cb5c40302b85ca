"""What the model's monitoring counts, in SQL: each result of a model that read or refused an image with the image's
groups (sex, age, modality, station), and the latest clinician verdict on each of its findings, kept in two narrow
tables (schema version 12) that `catch_up` extends from the rows added since; the aggregates over them; and the
flags raised, cleared and acknowledged, each change audited. The reviews themselves are only read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from edge_app.store.db import Store
from edge_app.system.clock import utc_text

GROUPS = ("sex", "band", "modality", "station")  # the columns a figure can be taken apart by


@dataclass(frozen=True)
class Counts:
    """Clinicians' verdicts on a model's findings: AI-positive they agreed with (tp) or not (fp), AI-negative they
    agreed with (tn) or marked positive (fn)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


@dataclass(frozen=True)
class Arrivals:
    """The images a model was given: how many, how many its input guard refused, how many it found positive."""

    total: int = 0
    outside: int = 0
    positive: int = 0

    def __add__(self, other: Arrivals) -> Arrivals:
        return Arrivals(self.total + other.total, self.outside + other.outside, self.positive + other.positive)


@dataclass(frozen=True)
class Arrival:
    """One of a station's latest results, as the drift monitoring compares it with the bundle's fingerprint: refused
    by the guard or not, found positive or not, the guard's score (None: the bundle has no guard) and the image's
    intensity histogram (None: prepared before the box recorded it)."""

    outside: bool
    positive: bool
    guard: float | None
    intensity: tuple[float, ...] | None


@dataclass(frozen=True)
class Flag:
    id: int
    key: str
    kind: str  # agreement, fairness, drift
    bundle_sha256: str
    reason: str
    raised_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None


Group = tuple[str, str, str, str]  # sex, age band, modality, station


class Monitoring:
    def __init__(self, store: Store) -> None:
        self.store = store

    def catch_up(self) -> None:
        """Count the results and reviews added since the last call (one transaction; a few rows each time once
        caught up). A result counts where a model read the image (ok) or its guard refused it (outside); a finding's
        verdict is its newest review's."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO monitor_results (result_id, bundle_sha256, at, outside, positive, sex, age, modality, "
                "station) SELECT r.id, r.bundle_sha256, r.created_at, r.status = 'outside', "
                "EXISTS (SELECT 1 FROM json_each(r.findings) f WHERE json_extract(f.value, '$.positive')), "
                "coalesce(json_extract(i.metadata, '$.patient_sex'), ''), json_extract(i.metadata, '$.age_years'), "
                "coalesce(json_extract(i.metadata, '$.modality'), ''), "
                "trim(coalesce(json_extract(i.metadata, '$.manufacturer'), '') || ' / ' || "
                "coalesce(json_extract(i.metadata, '$.device_model'), '') || ' / ' || "
                "coalesce(json_extract(i.metadata, '$.station'), ''), ' /') "
                "FROM results r JOIN images i ON i.id = r.image_id "
                "WHERE r.id > (SELECT coalesce(max(result_id), 0) FROM monitor_results) "
                "AND r.status IN ('ok', 'outside') ORDER BY r.id"
            )
            # WHERE true: SQLite's parser needs it before an upsert's ON CONFLICT after a SELECT with a join.
            db.execute(
                "INSERT INTO monitor_verdicts (result_id, label, review_id, ai_positive, clinician_positive) "
                "SELECT v.result_id, v.label, v.review_id, v.ai, CASE WHEN v.verdict = 'agree' THEN v.ai ELSE 1 - v.ai "
                "END FROM (SELECT rv.result_id, rv.id AS review_id, j.key AS label, j.value AS verdict, "
                "(SELECT coalesce(json_extract(f.value, '$.positive'), 0) FROM results r, json_each(r.findings) f "
                "WHERE r.id = rv.result_id AND json_extract(f.value, '$.label') = j.key) AS ai "
                "FROM reviews rv, json_each(rv.verdicts) j "
                "WHERE rv.id > (SELECT coalesce(max(review_id), 0) FROM monitor_verdicts) "
                "AND rv.result_id IN (SELECT result_id FROM monitor_results) ORDER BY rv.id) v WHERE v.ai IS NOT NULL "
                "ON CONFLICT (result_id, label) DO UPDATE SET review_id = excluded.review_id, "
                "ai_positive = excluded.ai_positive, clinician_positive = excluded.clinician_positive "
                "WHERE excluded.review_id > monitor_verdicts.review_id"
            )

    def bundles(self) -> list[tuple[str, str, str]]:
        """Each bundle that gave results: its sha256, its first and its last result's time, the newest first."""
        rows = self.store.query(
            "SELECT bundle_sha256, min(at), max(at) FROM monitor_results GROUP BY bundle_sha256 ORDER BY max(at) DESC"
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def weekly(self, bundle_sha256: str) -> dict[tuple[str, str], Counts]:
        """(label, the week's Monday) -> the verdicts on the findings of that week's results."""
        rows = self.store.query(
            "SELECT v.label, date(m.at, 'weekday 0', '-6 days'), " + _COUNTS + " FROM monitor_verdicts v "
            "JOIN monitor_results m USING (result_id) WHERE m.bundle_sha256 = ? GROUP BY 1, 2",
            (bundle_sha256,),
        )
        return {(str(r[0]), str(r[1])): Counts(*r[2:]) for r in rows}

    def by_group(self, bundle_sha256: str, adult_from: float, older_from: float) -> dict[tuple[str, Group], Counts]:
        """(label, group) -> the verdicts, over the bundle's whole service; a group is each combination of sex, age
        band (child, adult, older, or "" where unknown), modality and station that occurred."""
        rows = self.store.query(
            f"SELECT v.label, m.sex, {_BAND}, m.modality, m.station, " + _COUNTS + " FROM monitor_verdicts v "
            "JOIN monitor_results m USING (result_id) WHERE m.bundle_sha256 = ? GROUP BY 1, 2, 3, 4, 5",
            (adult_from, older_from, bundle_sha256),
        )
        return {(str(r[0]), (str(r[1]), str(r[2]), str(r[3]), str(r[4]))): Counts(*r[5:]) for r in rows}

    def arrivals(self, bundle_sha256: str, adult_from: float, older_from: float) -> dict[Group, Arrivals]:
        """Group -> the images the bundle was given, refused by its guard, found positive."""
        rows = self.store.query(
            f"SELECT m.sex, {_BAND}, m.modality, m.station, count(*), sum(outside), sum(positive) "
            "FROM monitor_results m WHERE m.bundle_sha256 = ? GROUP BY 1, 2, 3, 4",
            (adult_from, older_from, bundle_sha256),
        )
        return {(str(r[0]), str(r[1]), str(r[2]), str(r[3])): Arrivals(*r[4:]) for r in rows}

    def window(self, bundle_sha256: str, station: str, size: int) -> list[Arrival]:
        """The station's latest `size` results of the bundle, newest first (an index's range: as cheap with 100,000
        results as with 100)."""
        rows = self.store.query(
            "SELECT m.outside, m.positive, json_extract(r.guard, '$.score'), json_extract(i.metadata, '$.intensity') "
            "FROM (SELECT result_id, outside, positive FROM monitor_results WHERE bundle_sha256 = ? AND station = ? "
            "ORDER BY result_id DESC LIMIT ?) m JOIN results r ON r.id = m.result_id "
            "JOIN images i ON i.id = r.image_id ORDER BY m.result_id DESC",
            (bundle_sha256, station, size),
        )
        return [
            Arrival(bool(r[0]), bool(r[1]), r[2], tuple(json.loads(r[3])) if r[3] is not None else None) for r in rows
        ]

    # -- flags -----------------------------------------------------------------------------------------------------

    def flags(self, include_acknowledged: bool = True) -> list[Flag]:
        """The flags raised and not cleared since, oldest first."""
        where = "" if include_acknowledged else " AND acknowledged_at IS NULL"
        rows = self.store.query(
            "SELECT id, key, kind, bundle_sha256, reason, raised_at, acknowledged_at, acknowledged_by "
            f"FROM monitor_flags WHERE cleared_at IS NULL{where} ORDER BY id"
        )
        return [Flag(*r) for r in rows]

    def settle(self, found: Mapping[str, tuple[str, str, str]]) -> list[str]:
        """Make the open flags those `found` (key -> kind, bundle, reason): a new one raised, one no longer found
        cleared, each audited; return the keys raised."""
        now = utc_text()
        with self.store.transaction() as db:
            open_ = {str(r[0]) for r in db.execute("SELECT key FROM monitor_flags WHERE cleared_at IS NULL")}
            raised = sorted(set(found) - open_)
            for key in raised:
                kind, bundle, reason = found[key]
                db.execute(
                    "INSERT INTO monitor_flags (key, kind, bundle_sha256, reason, raised_at) VALUES (?, ?, ?, ?, ?)",
                    (key, kind, bundle, reason, now),
                )
            cleared = sorted(open_ - set(found))
            db.executemany(
                "UPDATE monitor_flags SET cleared_at = ? WHERE key = ? AND cleared_at IS NULL",
                [(now, k) for k in cleared],
            )
        for key in raised:
            self.store.audit("system", "monitor.flag", key, found[key][2])
        for key in cleared:
            self.store.audit("system", "monitor.clear", key)
        return raised

    def acknowledge(self, flag_id: int, actor: str) -> bool:
        """An administrator has seen flag `flag_id`: recorded and audited; False where no such open flag is."""
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT key FROM monitor_flags WHERE id = ? AND cleared_at IS NULL AND acknowledged_at IS NULL",
                (flag_id,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE monitor_flags SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
                    (utc_text(), actor, flag_id),
                )
        if row is None:
            return False
        self.store.audit(actor, "monitor.acknowledge", str(row[0]))
        return True


_COUNTS = (
    "sum(v.ai_positive AND v.clinician_positive), sum(v.ai_positive AND NOT v.clinician_positive), "
    "sum(NOT v.ai_positive AND v.clinician_positive), sum(NOT v.ai_positive AND NOT v.clinician_positive)"
)
_BAND = "CASE WHEN m.age IS NULL THEN '' WHEN m.age < ? THEN 'child' WHEN m.age < ? THEN 'adult' ELSE 'older' END"
