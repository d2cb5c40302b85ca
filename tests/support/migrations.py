"""Databases as an older version of the appliance left them: what a migration test starts from."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_app.store.schema import MIGRATIONS


def database_at(path: Path, version: int, now: str = "t", foreign_keys: bool = False) -> sqlite3.Connection:
    """A new database at `path` built by the first `version` migrations, each committed with its number as an
    older appliance commits it; open, in autocommit."""
    db = sqlite3.connect(path, isolation_level=None)
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    for number, step in enumerate(MIGRATIONS[:version]):
        db.execute("BEGIN")
        step(db, now)
        db.execute(f"PRAGMA user_version = {number + 1}")
        db.execute("COMMIT")
    return db
