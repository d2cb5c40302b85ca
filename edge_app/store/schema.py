"""The database schema, version by version; `migrate` takes any earlier version forward in one transaction each."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable

from edge_app.store import chain

_V1 = """
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
CREATE INDEX results_image ON results(image_id)
"""

# Version 2: studies keyed by the Study Instance UID (the `uid` column), series, images keyed by their SOP
# Instance UID with a status, and the jobs the worker claims with a lease.
_V2 = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
ALTER TABLE images ADD COLUMN series_id INTEGER REFERENCES series(id);
ALTER TABLE images ADD COLUMN sop_instance_uid TEXT;
ALTER TABLE images ADD COLUMN status TEXT NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'done', 'rejected', 'failed', 'no_model'));
ALTER TABLE images ADD COLUMN reason TEXT;
ALTER TABLE images ADD COLUMN source TEXT NOT NULL DEFAULT '';
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL UNIQUE REFERENCES images(id),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX images_series ON images(series_id)
"""
_STATUS_OF_RESULT = {"ok": "done", "rejected": "rejected", "failed": "failed"}


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _to_v1(db: sqlite3.Connection, now: str) -> None:
    for statement in _statements(_V1):
        db.execute(statement)


def _to_v2(db: sqlite3.Connection, now: str) -> None:
    """Each version-1 study gets one series; each image its SOP Instance UID (from its metadata, else a new one)
    and the status of its last result, or a job where it has none."""
    from pydicom.uid import generate_uid

    for statement in _statements(_V2):
        db.execute(statement)
    for study in db.execute("SELECT id FROM studies").fetchall():
        db.execute("INSERT INTO series (study_id, uid, created_at) VALUES (?, ?, ?)", (study[0], generate_uid(), now))
    used: set[str] = set()
    for image_id, study_id, metadata in db.execute("SELECT id, study_id, metadata FROM images").fetchall():
        sop = str(json.loads(metadata).get("sop_instance_uid") or "")
        sop = sop if sop and sop not in used else generate_uid()
        used.add(sop)
        last = db.execute(
            "SELECT status, reason FROM results WHERE image_id = ? ORDER BY id DESC LIMIT 1", (image_id,)
        ).fetchone()
        status, reason = (_STATUS_OF_RESULT[last[0]], last[1]) if last else ("queued", None)
        db.execute(
            "UPDATE images SET series_id = (SELECT id FROM series WHERE study_id = ?), sop_instance_uid = ?, "
            "status = ?, reason = ?, source = (SELECT source FROM studies WHERE id = ?) WHERE id = ?",
            (study_id, sop, status, reason, study_id, image_id),
        )
        if last is None:
            db.execute("INSERT INTO jobs (image_id, state, updated_at) VALUES (?, 'queued', ?)", (image_id, now))
    db.execute("CREATE UNIQUE INDEX images_sop ON images(sop_instance_uid)")


# Version 3: the outbox, results on their way to DICOM destinations.
_V3 = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX outbox_due ON outbox(state, next_try)
"""


def _to_v3(db: sqlite3.Connection, now: str) -> None:
    for statement in _statements(_V3):
        db.execute(statement)


# Version 4: the people who use the tablet, API tokens, clinicians' reviews, the image as shown; the audit log
# becomes append-only (a row can be neither changed nor deleted).
_V4 = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    roles TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    language TEXT NOT NULL DEFAULT 'en',
    created_at TEXT NOT NULL,
    disabled_at TEXT,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    roles TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    result_id INTEGER NOT NULL REFERENCES results(id),
    author TEXT NOT NULL,
    at TEXT NOT NULL,
    verdicts TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX reviews_image ON reviews(image_id);
ALTER TABLE images ADD COLUMN view_sha256 TEXT
"""
_APPEND_ONLY = [  # one statement each: a trigger's body holds semicolons
    f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    for verb in ("UPDATE", "DELETE")
]


def _to_v4(db: sqlite3.Connection, now: str) -> None:
    for statement in [*_statements(_V4), *_APPEND_ONLY]:
        db.execute(statement)


# Version 5: the models an administrator imported and activated, and per-site thresholds, each version kept.
_V5 = """
CREATE TABLE model_changes (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('import', 'activate')),
    bundle_sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE site_thresholds (
    id INTEGER PRIMARY KEY,
    bundle_sha256 TEXT NOT NULL,
    version INTEGER NOT NULL,
    thresholds TEXT NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL,
    UNIQUE (bundle_sha256, version)
)
"""


def _to_v5(db: sqlite3.Connection, now: str) -> None:
    for statement in _statements(_V5):
        db.execute(statement)


def _to_v6(db: sqlite3.Connection, now: str) -> None:
    """Version 6: when an image's files were removed by the retention policy (its results and reviews stay)."""
    db.execute("ALTER TABLE images ADD COLUMN purged_at TEXT")


def _to_v7(db: sqlite3.Connection, now: str) -> None:
    """Version 7: "outside", an image the input guard says the model does not read (a status of its own, for results
    and images); the guard's verdict on each result (JSON; NULL where the bundle had no guard); the model a job is
    for, where a clinician chose one (NULL: the models whose intended use fits the image); each result's triage
    score (what the worklist sorts by)."""
    _rebuild(db, "results", "'rejected', 'failed')", "'rejected', 'failed', 'outside')")
    _rebuild(db, "images", "'failed', 'no_model')", "'failed', 'no_model', 'outside')")
    db.execute("ALTER TABLE results ADD COLUMN guard TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN bundle_sha256 TEXT")
    db.execute("ALTER TABLE results ADD COLUMN triage REAL NOT NULL DEFAULT 0")


def _to_v8(db: sqlite3.Connection, now: str) -> None:
    """Version 8: a heatmap for each positive finding of a result (the clinician picks which), the most probable
    first (`rank` 0); a result's single heatmap of before moves there."""
    db.execute(
        "CREATE TABLE heatmaps (result_id INTEGER NOT NULL REFERENCES results(id), rank INTEGER NOT NULL, "
        "label TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (result_id, rank), UNIQUE (result_id, label))"
    )
    db.execute(
        "INSERT INTO heatmaps (result_id, rank, label, sha256) "
        "SELECT id, 0, heatmap_label, heatmap_sha256 FROM results WHERE heatmap_sha256 IS NOT NULL"
    )
    db.execute("ALTER TABLE results DROP COLUMN heatmap_label")
    db.execute("ALTER TABLE results DROP COLUMN heatmap_sha256")


def _to_v9(db: sqlite3.Connection, now: str) -> None:
    """Version 9: each audit row sealed by a hash chained to the row before it (`edge_app.store.chain`), the rows
    of before sealed in their order (the UPDATE trigger lifted meanwhile); failed logins kept in the database, so
    that a restart forgets none of the login limits."""
    db.execute("ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    previous = chain.GENESIS
    for row in db.execute(f"SELECT {', '.join(chain.COLUMNS)} FROM audit ORDER BY id").fetchall():
        previous = chain.seal(previous, row)
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (previous, row[0]))
    db.execute(_APPEND_ONLY[0])
    db.execute(
        "CREATE TABLE login_failures (at REAL NOT NULL, address TEXT NOT NULL, name TEXT NOT NULL COLLATE NOCASE)"
    )
    db.execute("CREATE INDEX login_failures_name ON login_failures(name, at)")
    db.execute("CREATE INDEX login_failures_address ON login_failures(address, at)")


def _to_v10(db: sqlite3.Connection, now: str) -> None:
    """Version 10: when each outgoing item was queued (the backlog's age; rows of before: their last change), and
    an index to take a destination's due items apart from the others'."""
    db.execute("ALTER TABLE outbox ADD COLUMN queued_at REAL NOT NULL DEFAULT 0")
    db.execute("UPDATE outbox SET queued_at = coalesce((julianday(updated_at) - 2440587.5) * 86400.0, 0)")
    db.execute("CREATE INDEX outbox_destination ON outbox(destination, state, next_try)")


def _to_v11(db: sqlite3.Connection, now: str) -> None:
    """Version 11: the kind of each image's reason (`edge_app.errors.ReasonKind`), what the tablet words it by;
    rows of before get it from their status, or from their reason's fixed words, else none (general words)."""
    db.execute("ALTER TABLE images ADD COLUMN reason_kind TEXT")
    db.execute(
        "UPDATE images SET reason_kind = CASE "
        "WHEN status = 'no_model' THEN 'no_model' WHEN status = 'outside' THEN 'outside' "
        "WHEN status = 'failed' THEN 'internal' "
        "WHEN reason LIKE 'made by this appliance%' THEN 'ours' "
        "WHEN reason LIKE 'not an image (%' OR reason LIKE 'DICOM object holds no image%' THEN 'no_image' "
        "WHEN reason LIKE '%kept apart%' THEN 'identity' END WHERE reason IS NOT NULL"
    )


# Version 12: the model's monitoring (`edge_app.store.monitoring`). What it counts, kept beside the rows it is
# counted from so that a page reads aggregates of a narrow indexed table instead of parsing every result's JSON: each
# result of a model that read or refused an image, with the image's groups; the latest clinician verdict on each
# finding of it; the flags raised, with who acknowledged them.
_V12 = """
CREATE TABLE monitor_results (
    result_id INTEGER PRIMARY KEY REFERENCES results(id),
    bundle_sha256 TEXT NOT NULL,
    at TEXT NOT NULL,
    outside INTEGER NOT NULL,
    positive INTEGER NOT NULL,
    sex TEXT NOT NULL,
    age REAL,
    modality TEXT NOT NULL,
    station TEXT NOT NULL
);
CREATE INDEX monitor_results_bundle ON monitor_results(bundle_sha256, at);
CREATE TABLE monitor_verdicts (
    result_id INTEGER NOT NULL REFERENCES monitor_results(result_id),
    label TEXT NOT NULL,
    review_id INTEGER NOT NULL,
    ai_positive INTEGER NOT NULL,
    clinician_positive INTEGER NOT NULL,
    PRIMARY KEY (result_id, label)
);
CREATE INDEX monitor_verdicts_review ON monitor_verdicts(review_id);
CREATE TABLE monitor_flags (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    reason TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    cleared_at TEXT,
    acknowledged_at TEXT,
    acknowledged_by TEXT
);
CREATE UNIQUE INDEX monitor_flags_open ON monitor_flags(key) WHERE cleared_at IS NULL
"""


def _to_v12(db: sqlite3.Connection, now: str) -> None:
    for statement in _statements(_V12):
        db.execute(statement)


# Version 13: one review per study (`edge_app.store.reviews`): who read it or referred it, when, with which note;
# each image's per-result verdicts (what the monitoring counts) are tied to it. Each review of before becomes one
# study review, marked read, with its own id.
_V13 = """
CREATE TABLE study_reviews (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    author TEXT NOT NULL,
    at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('read', 'referred')),
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX study_reviews_study ON study_reviews(study_id, id);
ALTER TABLE reviews ADD COLUMN study_review_id INTEGER REFERENCES study_reviews(id);
INSERT INTO study_reviews (id, study_id, author, at, state, note)
    SELECT r.id, i.study_id, r.author, r.at, 'read', r.note FROM reviews r JOIN images i ON i.id = r.image_id;
UPDATE reviews SET study_review_id = id;
CREATE INDEX reviews_study_review ON reviews(study_review_id)
"""


def _to_v13(db: sqlite3.Connection, now: str) -> None:
    for statement in _statements(_V13):
        db.execute(statement)


_V14 = """
CREATE TABLE documents_due (
    result_id INTEGER PRIMARY KEY REFERENCES results(id),
    image_id INTEGER NOT NULL REFERENCES images(id)
)
"""


def _to_v14(db: sqlite3.Connection, now: str) -> None:
    db.execute(_V14)


# Version 15: a station's latest results read at once, newest first (the monitoring's drift window, `edge_app.store.
# monitoring.Monitoring.window`), instead of the bundle's every result sorted each round.
def _to_v15(db: sqlite3.Connection, now: str) -> None:
    db.execute("CREATE INDEX monitor_results_station ON monitor_results(bundle_sha256, station, result_id)")


def _to_v16(db: sqlite3.Connection, now: str) -> None:
    """Version 16: the result whose documents could not be made, on the outbox's failed `documents` items (one per
    destination), so that re-sending them makes its documents again."""
    db.execute("ALTER TABLE outbox ADD COLUMN result_id INTEGER REFERENCES results(id)")


def _rebuild(db: sqlite3.Connection, table: str, old: str, new: str) -> None:
    """A table made anew with `old` replaced by `new` in its definition (SQLite cannot change a CHECK in place: its
    documented twelve steps, foreign keys off from `migrate`), rows, indexes and ids kept."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    if old not in sql:
        raise ValueError(f"table {table} is not as this edge-app wrote it ({old} not found)")
    indexes = [
        r[0]
        for r in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
        )
    ]
    columns = ", ".join(r[1] for r in db.execute(f"PRAGMA table_info({table})"))
    # After a rename SQLite keeps the name quoted ('CREATE TABLE "images"'): either way.
    head = re.match(rf'CREATE TABLE\s+"?{table}"?', sql)
    if head is None:
        raise ValueError(f"table {table} is not as this edge-app wrote it")
    db.execute(f"CREATE TABLE {table}_new" + sql[head.end() :].replace(old, new))
    db.execute(f"INSERT INTO {table}_new ({columns}) SELECT {columns} FROM {table}")
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    for index in indexes:
        db.execute(index)


MIGRATIONS: list[Callable[[sqlite3.Connection, str], None]] = [
    _to_v1,
    _to_v2,
    _to_v3,
    _to_v4,
    _to_v5,
    _to_v6,
    _to_v7,
    _to_v8,
    _to_v9,
    _to_v10,
    _to_v11,
    _to_v12,
    _to_v13,
    _to_v14,
    _to_v15,
    _to_v16,
]
VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, now: str) -> None:
    """Bring the database to `VERSION`, one transaction per version. The version is read inside each
    transaction: two processes opening the database at once (the web service and the worker) take turns. A
    database of a later version is refused (ValueError), left as it is. Foreign keys are off while it works (a
    table made anew is dropped with rows pointing at it), checked before each version commits, and on again after."""
    # fetchall: a statement left unfinished would hold a read snapshot, and BEGIN IMMEDIATE after another
    # process's migration would then fail at once ("database is locked") instead of waiting its turn.
    enforced = int(db.execute("PRAGMA foreign_keys").fetchall()[0][0])
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        _migrate(db, now)
    finally:
        db.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")


def _migrate(db: sqlite3.Connection, now: str) -> None:
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > VERSION:  # an older edge-app installed over a newer one's data: never guess its schema
                raise ValueError(
                    f"its schema is version {version}, written by a newer edge-app (this one knows up to {VERSION}): "
                    "install that edge-app again, or restore a backup made with this one"
                )
            if version == VERSION:
                db.execute("COMMIT")
                return
            MIGRATIONS[version](db, now)
            broken = db.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise ValueError(f"version {version + 1} would leave {len(broken)} row(s) pointing at nothing")
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
