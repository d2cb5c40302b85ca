"""Clinicians' reviews. One review covers a study: the study read or referred, a note, and a verdict (agree or
disagree) on every finding of each image's latest result, kept per result (the rows the monitoring counts) and tied
to the study's review. A new review is added, never written over: the study keeps each one."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from edge_app.errors import NotFound, UserError
from edge_app.store.db import Store
from edge_app.system.clock import utc_text

VERDICTS = ("agree", "disagree")
STATES = ("read", "referred")
MAX_NOTE_CHARS = 2000


class ResultsChanged(UserError):
    """The study's latest results are not those the clinician saw (a model read an image since)."""


@dataclass(frozen=True)
class Review:
    """The verdicts on one result's findings, part of a study's review."""

    id: int
    image_id: int
    result_id: int
    author: str
    at: str
    verdicts: dict[str, str]  # label -> "agree" or "disagree"
    note: str


@dataclass(frozen=True)
class StudyReview:
    id: int
    study_id: int
    author: str
    at: str
    state: str  # "read" or "referred"
    note: str
    verdicts: dict[int, dict[str, str]]  # result id -> label -> "agree" or "disagree"

    def disagreements(self) -> list[tuple[int, str]]:
        """(result id, label) of each finding the clinician disagreed with."""
        return [(rid, label) for rid, found in self.verdicts.items() for label, v in found.items() if v == "disagree"]


class Reviews:
    def __init__(self, store: Store) -> None:
        self.store = store

    def review_study(
        self,
        study_uid: str,
        author: str,
        state: str,
        note: str = "",
        disagree: Collection[tuple[int, str]] = (),
        seen: Collection[int] | None = None,
    ) -> StudyReview:
        """Record one review of the study: `state`, the note, and a verdict on every finding of each image's latest
        result: disagree for each (result id, label) in `disagree`, agree for all others. `seen`: the result ids
        the clinician reviewed; ResultsChanged where they are no longer the latest."""
        if state not in STATES:
            raise UserError(f"a review's state is one of {', '.join(STATES)}, not {state}")
        _check_note(note)
        at = utc_text("seconds")
        with self.store.transaction() as db:
            found = db.execute("SELECT id FROM studies WHERE uid = ?", (study_uid,)).fetchone()
            if found is None:
                raise NotFound(f"no study {study_uid}")
            study_id = int(found[0])
            latest = {
                int(r[0]): (int(r[1]), [str(f["label"]) for f in json.loads(r[2])])
                for r in db.execute(
                    "SELECT r.id, r.image_id, r.findings FROM images i JOIN results r ON r.id = (SELECT max(n.id) "
                    "FROM results n WHERE n.image_id = i.id AND n.status = 'ok') WHERE i.study_id = ? ORDER BY i.id",
                    (study_id,),
                )
            }
            if seen is not None and set(seen) != set(latest):
                raise ResultsChanged("the AI's results changed since the page was opened")
            unknown = sorted(f"{rid}:{label}" for rid, label in disagree if label not in latest.get(rid, (0, []))[1])
            if unknown:
                raise UserError(f"no finding {', '.join(unknown)} among the study's latest results")
            verdicts = {
                rid: {label: "disagree" if (rid, label) in disagree else "agree" for label in labels}
                for rid, (_, labels) in latest.items()
            }
            review_id = _insert(db, study_id, author, at, state, note)
            for rid, (image_id, _) in latest.items():
                _insert_verdicts(db, review_id, image_id, rid, author, at, verdicts[rid], note)
        return StudyReview(review_id, study_id, author, at, state, note, verdicts)

    def add(self, result_id: int, author: str, verdicts: Mapping[str, str], note: str = "") -> Review:
        """Record a review of one result alone (a study review, read, holding it): a verdict for each of its
        findings, at least one."""
        rows = self.store.query(
            "SELECT r.image_id, r.status, r.findings, i.study_id FROM results r JOIN images i ON i.id = r.image_id "
            "WHERE r.id = ?",
            (result_id,),
        )
        if not rows:
            raise NotFound(f"no result {result_id}")
        if rows[0]["status"] != "ok":
            raise UserError("only a result with findings can be reviewed")
        labels = {f["label"] for f in json.loads(rows[0]["findings"])}
        if not verdicts:
            raise UserError("a review needs a verdict on at least one finding")
        unknown = sorted(set(verdicts) - labels)
        if unknown:
            raise UserError(f"no finding {', '.join(unknown)} in this result")
        bad = sorted(v for v in verdicts.values() if v not in VERDICTS)
        if bad:
            raise UserError(f"a verdict is one of {', '.join(VERDICTS)}, not {', '.join(bad)}")
        _check_note(note)
        at = utc_text("seconds")
        image_id = int(rows[0]["image_id"])
        with self.store.transaction() as db:
            review_id = _insert(db, int(rows[0]["study_id"]), author, at, "read", note)
            row_id = _insert_verdicts(db, review_id, image_id, result_id, author, at, dict(verdicts), note)
        return Review(row_id, image_id, result_id, author, at, dict(verdicts), note)

    def states(self, study_uids: Collection[str]) -> dict[str, str]:
        """Each of these studies' newest review's state (read or referred), where it has one (one query, for the
        worklist)."""
        if not study_uids:
            return {}
        marks = ",".join("?" * len(study_uids))
        rows = self.store.query(
            "SELECT s.uid, v.state FROM study_reviews v JOIN studies s ON s.id = v.study_id WHERE v.id IN "
            f"(SELECT max(v.id) FROM study_reviews v JOIN studies s ON s.id = v.study_id WHERE s.uid IN ({marks}) "
            "GROUP BY v.study_id)",
            tuple(study_uids),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def of_study(self, study_uid: str) -> list[StudyReview]:
        """The study's reviews, newest first, each with its verdicts per result."""
        reviews = self.store.query(
            "SELECT v.* FROM study_reviews v JOIN studies s ON s.id = v.study_id WHERE s.uid = ? ORDER BY v.id DESC",
            (study_uid,),
        )
        verdicts: dict[int, dict[int, dict[str, str]]] = {}
        for r in self.store.query(
            "SELECT v.study_review_id, v.result_id, v.verdicts FROM reviews v JOIN study_reviews w "
            "ON w.id = v.study_review_id JOIN studies s ON s.id = w.study_id WHERE s.uid = ? ORDER BY v.id",
            (study_uid,),
        ):
            verdicts.setdefault(int(r[0]), {})[int(r[1])] = json.loads(r[2])
        return [
            StudyReview(
                int(r["id"]),
                int(r["study_id"]),
                str(r["author"]),
                str(r["at"]),
                str(r["state"]),
                str(r["note"]),
                verdicts.get(int(r["id"]), {}),
            )
            for r in reviews
        ]

    def newest_by_image(self) -> dict[int, Review]:
        """Each reviewed image's newest verdicts (one query, for the export of reviewed cases)."""
        rows = self.store.query("SELECT * FROM reviews WHERE id IN (SELECT max(id) FROM reviews GROUP BY image_id)")
        return {int(r["image_id"]): _review(r) for r in rows}

    def of_image(self, image_id: int) -> list[Review]:
        """The verdicts on the image's results, newest first."""
        rows = self.store.query("SELECT * FROM reviews WHERE image_id = ? ORDER BY id DESC", (image_id,))
        return [_review(r) for r in rows]


def _review(r: sqlite3.Row) -> Review:
    return Review(
        int(r["id"]),
        int(r["image_id"]),
        int(r["result_id"]),
        str(r["author"]),
        str(r["at"]),
        json.loads(r["verdicts"]),
        str(r["note"]),
    )


def _check_note(note: str) -> None:
    if len(note) > MAX_NOTE_CHARS:
        raise UserError(f"a note holds at most {MAX_NOTE_CHARS} characters")


def _insert(db: sqlite3.Connection, study_id: int, author: str, at: str, state: str, note: str) -> int:
    cur = db.execute(
        "INSERT INTO study_reviews (study_id, author, at, state, note) VALUES (?, ?, ?, ?, ?)",
        (study_id, author, at, state, note),
    )
    return int(cur.lastrowid or 0)


def _insert_verdicts(
    db: sqlite3.Connection,
    review_id: int,
    image_id: int,
    result_id: int,
    author: str,
    at: str,
    verdicts: dict[str, str],
    note: str,
) -> int:
    """One result's verdicts, as the reports and the monitoring read them, with the note the reports print."""
    cur = db.execute(
        "INSERT INTO reviews (image_id, result_id, author, at, verdicts, note, study_review_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (image_id, result_id, author, at, json.dumps(verdicts), note, review_id),
    )
    return int(cur.lastrowid or 0)
