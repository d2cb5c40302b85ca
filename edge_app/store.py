"""Durable storage: SQLite (WAL, synchronous=FULL) and a content-addressed file store.

The only module that writes the database. A file is on disk (fsynced, renamed into place, directory fsynced)
before any row refers to it, so whatever the service acknowledged survives a power cut.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import IO, Any

from edge_app.errors import ConfigError, NotFound
from edge_app.fileio import INCOMING_PREFIX, commit, spool

_SCHEMA = [
    # version 1
    """
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL,
        patient_id TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id),
        created_at TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id),
        created_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ok', 'rejected', 'failed')),
        reason TEXT,
        model TEXT NOT NULL,
        bundle_sha256 TEXT NOT NULL,
        findings TEXT NOT NULL DEFAULT '[]',
        heatmap_label TEXT,
        heatmap_sha256 TEXT,
        timings TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX images_study ON images(study_id);
    CREATE INDEX results_image ON results(image_id);
    """,
]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """Studies, images, results and the audit trail under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self._lock = threading.RLock()
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.data_dir / "edge-app.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"data directory {self.data_dir} cannot be used (storage.data_dir): {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(_SCHEMA[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def pragma(self, name: str) -> Any:
        """Read a PRAGMA (for health checks and tests)."""
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    # -- files -------------------------------------------------------------------------------------------------

    def put_file(self, data: bytes) -> str:
        """Store bytes durably under their sha256; return it. Storing the same bytes twice is a no-op."""
        return self.put_stream(io.BytesIO(data))[0]

    def put_stream(self, stream: IO[bytes]) -> tuple[str, int]:
        """Store a stream's bytes durably under their sha256, read in chunks; return (sha256, size). Nothing is
        kept of an empty stream."""
        tmp, digest, size = spool(self.files_dir, stream)
        path = self.file_path(digest)
        if size == 0 or path.exists():
            tmp.unlink()
            return digest, size
        path.parent.mkdir(exist_ok=True)
        commit(tmp, path)
        return digest, size

    def file_path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise NotFound(f"no stored file {digest!r}")
        return self.files_dir / digest[:2] / digest

    def read_file(self, digest: str) -> bytes:
        try:
            return self.file_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no stored file {digest}") from None

    # -- studies -----------------------------------------------------------------------------------------------

    def add_study(self, digest: str, size: int, filename: str, source: str, patient_id: str = "") -> tuple[str, int]:
        """Record a stored file as a new study of one image; return (study uid, image id)."""
        uid = uuid.uuid4().hex
        now = _now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO studies (uid, created_at, source, patient_id) VALUES (?, ?, ?, ?)",
                    (uid, now, source, patient_id),
                )
                cur = self._db.execute(
                    "INSERT INTO images (study_id, created_at, filename, sha256, size) VALUES (?, ?, ?, ?, ?)",
                    (cur.lastrowid, now, filename, digest, size),
                )
                image_id = int(cur.lastrowid or 0)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return uid, image_id

    def set_image_metadata(self, image_id: int, metadata: dict[str, Any], patient_id: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE images SET metadata = ? WHERE id = ?", (json.dumps(metadata), image_id))
            if patient_id:
                self._db.execute(
                    "UPDATE studies SET patient_id = ? WHERE id = (SELECT study_id FROM images WHERE id = ?)",
                    (patient_id, image_id),
                )

    def add_result(
        self,
        image_id: int,
        *,
        status: str,
        model: dict[str, str],
        bundle_sha256: str,
        reason: str | None = None,
        findings: list[dict[str, Any]] | None = None,
        heatmap: tuple[str, bytes] | None = None,
        timings: dict[str, float] | None = None,
    ) -> int:
        """Record an inference outcome (and its heatmap PNG, stored as a file)."""
        heatmap_label, heatmap_sha = (heatmap[0], self.put_file(heatmap[1])) if heatmap else (None, None)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO results (image_id, created_at, status, reason, model, bundle_sha256, findings, "
                "heatmap_label, heatmap_sha256, timings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image_id,
                    _now(),
                    status,
                    reason,
                    json.dumps(model),
                    bundle_sha256,
                    json.dumps(findings or []),
                    heatmap_label,
                    heatmap_sha,
                    json.dumps(timings or {}),
                ),
            )
            return int(cur.lastrowid or 0)

    def get_study(self, uid: str) -> dict[str, Any]:
        with self._lock:
            study = self._db.execute("SELECT * FROM studies WHERE uid = ?", (uid,)).fetchone()
            if study is None:
                raise NotFound(f"no study {uid}")
            images = self._db.execute("SELECT * FROM images WHERE study_id = ? ORDER BY id", (study["id"],)).fetchall()
            out_images = []
            for image in images:
                results = self._db.execute(
                    "SELECT * FROM results WHERE image_id = ? ORDER BY id", (image["id"],)
                ).fetchall()
                out_images.append(
                    {
                        "id": image["id"],
                        "filename": image["filename"],
                        "sha256": image["sha256"],
                        "size": image["size"],
                        "received_at": image["created_at"],
                        "metadata": json.loads(image["metadata"]),
                        "results": [_result_dict(r) for r in results],
                    }
                )
        return {
            "uid": study["uid"],
            "created_at": study["created_at"],
            "source": study["source"],
            "patient_id": study["patient_id"],
            "images": out_images,
        }

    def list_studies(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT uid FROM studies ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self.get_study(r["uid"]) for r in rows]

    def get_result(self, result_id: int) -> dict[str, Any]:
        row = None
        if 0 < result_id < 2**63:  # SQLite's INTEGER range
            with self._lock:
                row = self._db.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise NotFound(f"no result {result_id}")
        return _result_dict(row)

    # -- recovery at start ---------------------------------------------------------------------------------------

    def fail_unfinished(self, reason: str, model: dict[str, str], bundle_sha256: str) -> int:
        """Give every image left without a result (the service stopped while diagnosing it) a failed result."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM images WHERE NOT EXISTS (SELECT 1 FROM results WHERE image_id = images.id)"
            ).fetchall()
        for row in rows:
            self.add_result(row["id"], status="failed", model=model, bundle_sha256=bundle_sha256, reason=reason)
        return len(rows)

    def remove_orphans(self) -> int:
        """Delete temporaries a crash left behind and stored files no row refers to; call before serving."""
        with self._lock:
            wanted = {
                r[0]
                for r in self._db.execute(
                    "SELECT sha256 FROM images "
                    "UNION SELECT heatmap_sha256 FROM results WHERE heatmap_sha256 IS NOT NULL"
                )
            }
        removed = 0
        for path in self.files_dir.rglob("*"):
            if path.is_file() and (path.name.startswith(INCOMING_PREFIX) or path.name not in wanted):
                path.unlink()
                removed += 1
        return removed

    def audit(self, actor: str, action: str, subject: str = "", detail: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                (_now(), actor, action, subject, detail),
            )

    def audit_trail(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]


def _result_dict(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "created_at": row["created_at"],
        "status": row["status"],
        "model": json.loads(row["model"]),
        "bundle_sha256": row["bundle_sha256"],
        "findings": json.loads(row["findings"]),
        "timings_ms": json.loads(row["timings"]),
    }
    if row["reason"] is not None:
        out["reason"] = row["reason"]
    if row["heatmap_sha256"]:
        out["heatmap"] = {"label": row["heatmap_label"], "sha256": row["heatmap_sha256"]}
    return out
