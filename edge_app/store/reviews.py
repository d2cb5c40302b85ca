"""Clinicians' reviews of a model's result: agree or disagree with each finding, a note, the author and the time.
A new review is added, never written over: the study keeps each one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from edge_app.errors import NotFound, UserError
from edge_app.store.db import Store
from edge_app.system.clock import utc_text

VERDICTS = ("agree", "disagree")
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True)
class Review:
    id: int
    image_id: int
    result_id: int
    author: str
    at: str
    verdicts: dict[str, str]  # label -> "agree" or "disagree"
    note: str


class Reviews:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, result_id: int, author: str, verdicts: dict[str, str], note: str = "") -> Review:
        """Record a review of one result: a verdict for each of its findings, at least one."""
        rows = self.store.query("SELECT image_id, status, findings FROM results WHERE id = ?", (result_id,))
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
        if len(note) > MAX_NOTE_CHARS:
            raise UserError(f"a note holds at most {MAX_NOTE_CHARS} characters")
        at = utc_text("seconds")
        image_id = int(rows[0]["image_id"])
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO reviews (image_id, result_id, author, at, verdicts, note) VALUES (?, ?, ?, ?, ?, ?)",
                (image_id, result_id, author, at, json.dumps(verdicts), note),
            )
        return Review(int(cur.lastrowid or 0), image_id, result_id, author, at, dict(verdicts), note)

    def reviewed(self, image_ids: list[int]) -> set[int]:
        """Which of these images have at least one review (one query, for the worklist)."""
        if not image_ids:
            return set()
        marks = ",".join("?" * len(image_ids))
        rows = self.store.query(f"SELECT DISTINCT image_id FROM reviews WHERE image_id IN ({marks})", tuple(image_ids))
        return {int(r[0]) for r in rows}

    def of_image(self, image_id: int) -> list[Review]:
        """The image's reviews, newest first."""
        rows = self.store.query("SELECT * FROM reviews WHERE image_id = ? ORDER BY id DESC", (image_id,))
        return [
            Review(
                int(r["id"]),
                int(r["image_id"]),
                int(r["result_id"]),
                str(r["author"]),
                str(r["at"]),
                json.loads(r["verdicts"]),
                str(r["note"]),
            )
            for r in rows
        ]
