"""The models an administrator brought to the box: each import and activation (the newest activation is the model
in service; the one before it is where a rollback goes), and per-site thresholds, versioned, tied to a bundle's
sha256."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_app.errors import UserError
from edge_app.store.db import Store
from edge_app.system.clock import utc_text


@dataclass(frozen=True)
class ModelChange:
    id: int
    at: str
    actor: str
    action: str  # import or activate
    bundle_sha256: str
    path: Path
    name: str
    version: str


@dataclass(frozen=True)
class SiteThresholds:
    bundle_sha256: str
    version: int
    thresholds: dict[str, float]
    actor: str
    at: str


def _now() -> str:
    return utc_text("seconds")


class ModelHistory:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, actor: str, action: str, sha256: str, path: Path, name: str, version: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO model_changes (at, actor, action, bundle_sha256, path, name, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_now(), actor, action, sha256, str(path), name, version),
            )

    def changes(self) -> list[ModelChange]:
        """Newest first."""
        rows = self.store.query("SELECT * FROM model_changes ORDER BY id DESC")
        return [
            ModelChange(
                r["id"], r["at"], r["actor"], r["action"], r["bundle_sha256"], Path(r["path"]), r["name"], r["version"]
            )
            for r in rows
        ]

    def activations(self) -> list[ModelChange]:
        """Newest first: the first is in service, the second is where a rollback goes."""
        return [c for c in self.changes() if c.action == "activate"]

    def latest_change(self) -> tuple[int, int]:
        """The newest model change and threshold version, by row: what a worker in its own process follows."""
        row = self.store.query(
            "SELECT (SELECT coalesce(max(id), 0) FROM model_changes), "
            "(SELECT coalesce(max(id), 0) FROM site_thresholds)"
        )[0]
        return int(row[0]), int(row[1])

    def set_thresholds(self, sha256: str, labels: Sequence[str], thresholds: dict[str, float], actor: str) -> int:
        """A new version of the site's thresholds for a bundle: one in [0, 1] for each of its labels."""
        if sorted(thresholds) != sorted(labels):
            raise UserError(f"thresholds are needed for exactly the model's labels: {', '.join(labels)}")
        bad = sorted(label for label, value in thresholds.items() if not 0.0 <= value <= 1.0)
        if bad:
            raise UserError(f"a threshold lies between 0 and 1 ({', '.join(bad)})")
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT coalesce(max(version), 0) FROM site_thresholds WHERE bundle_sha256 = ?", (sha256,)
            ).fetchone()
            version = int(row[0]) + 1
            db.execute(
                "INSERT INTO site_thresholds (bundle_sha256, version, thresholds, actor, at) VALUES (?, ?, ?, ?, ?)",
                (sha256, version, json.dumps(thresholds), actor, _now()),
            )
        return version

    def thresholds(self, sha256: str) -> SiteThresholds | None:
        """The newest site thresholds of a bundle, or None where the site keeps the bundle's own."""
        history = self.threshold_history(sha256)
        return history[0] if history else None

    def threshold_history(self, sha256: str) -> list[SiteThresholds]:
        rows = self.store.query(
            "SELECT * FROM site_thresholds WHERE bundle_sha256 = ? ORDER BY version DESC", (sha256,)
        )
        return [
            SiteThresholds(r["bundle_sha256"], int(r["version"]), json.loads(r["thresholds"]), r["actor"], r["at"])
            for r in rows
        ]
