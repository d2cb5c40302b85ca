"""The audit log's hash chain: each row sealed by sha256 over the seal of the row before it and its own content.

The SQLite triggers stop an UPDATE or DELETE through edge-app; whoever drops them, edits and puts them back leaves
a row whose seal no longer follows (an edit) or a row whose predecessor is not the one it was sealed after (a
deletion). The newest rows deleted together, or the whole chain sealed anew, show only against a seal kept
elsewhere (the audit page shows the newest one, the CSV export carries every seal).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GENESIS = "0" * 64  # what the first row is sealed after
COLUMNS = ("id", "at", "actor", "action", "subject", "detail")  # what a seal covers, in this order


def seal(previous: str, row: Sequence[object]) -> str:
    """The seal of `row` (the values of COLUMNS) following the row sealed `previous`. The content as JSON: one
    text for one row, whatever separators or quotes its fields hold."""
    content = json.dumps(list(row), separators=(",", ":"))
    return hashlib.sha256(f"{previous}\n{content}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainState:
    """What a walk along the chain found."""

    entries: int  # rows walked (all of them where the chain holds)
    head: str  # the seal of the last row that follows (GENESIS for an empty log)
    broken_at: int | None = None  # the id of the first row that does not follow
    after: int = 0  # the id of the last row that does (0: none)
    missing: bool = False  # rows between them are gone (ids are given in turn: `broken_at` is not `after` + 1)

    @property
    def holds(self) -> bool:
        return self.broken_at is None


def verify(rows: Iterable[Sequence[object]]) -> ChainState:
    """Walk rows of (COLUMNS..., seal) in id order; stop at the first that does not follow."""
    head, previous_id, entries = GENESIS, 0, 0
    for row in rows:
        content, stored = row[:-1], row[-1]
        row_id = int(content[0])  # type: ignore[call-overload]
        if stored != seal(head, content):
            return ChainState(entries, head, row_id, previous_id, missing=row_id != previous_id + 1)
        head, previous_id, entries = str(stored), row_id, entries + 1
    return ChainState(entries, head)
