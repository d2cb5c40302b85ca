"""Durable storage: SQLite (WAL, synchronous=FULL) and a content-addressed file store.

The only module that writes the database. A file is on disk (fsynced, renamed into place, directory fsynced)
before any row refers to it, so whatever the service acknowledged survives a power cut. Studies, series and
images are keyed by their DICOM UIDs; each image waiting for a result has a job, which the worker claims with a
lease: a job claimed when the service stopped is taken again after the lease.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge_app.bundles.findings import ResultStatus
from edge_app.errors import ConfigError, IdentityConflict, LeaseLost, NotFound, ReasonKind, UserError
from edge_app.imaging.header import ImageHeader
from edge_app.store import chain
from edge_app.store.rows import OUTPUT_FIELDS, Image, ImageStatus, Output, Result, Study, StudyPage, StudyQuery
from edge_app.store.schema import migrate
from edge_app.system.clock import utc_text
from edge_app.system.fileio import INCOMING_PREFIX, commit, spool

SENDABLE = ("no_model", "outside")  # the statuses of an image a clinician may send to another model
# In the data directory: held by the one front (web, capture) and the one worker (models) that use it.
SERVICE_LOCKS = ("front.lock", "worker.lock")
# Every stored file a row still needs: images (and their views) not purged, results' heatmaps, outgoing objects.
FILES_IN_USE = (
    "SELECT sha256 FROM images WHERE purged_at IS NULL UNION SELECT sha256 FROM outbox WHERE kind != 'documents' "
    "UNION SELECT view_sha256 FROM images WHERE view_sha256 IS NOT NULL AND purged_at IS NULL "
    "UNION SELECT sha256 FROM heatmaps"
)


@dataclass(frozen=True)
class Added:
    """What became of an arriving image: its row, its study, whether it was there already, and whether it was
    kept apart from what its UIDs name (an `IdentityConflict`: stored in a study of its own, not diagnosed)."""

    image_id: int
    study_uid: str
    sop_instance_uid: str
    status: ImageStatus
    reason: str | None = None
    duplicate: bool = False
    kept_apart: bool = False
    not_an_image: bool = False  # refused as `NotAnImage` (a refusal sent again is a duplicate and says nothing)
    kept: bool = False  # kept with its study, never diagnosed: no image (an SR...) or one of the box's own outputs


SOP_CONFLICT = (
    "an image with the same SOP Instance UID and other content is already held: kept apart, not diagnosed "
    "(two images must not share a UID; ask who set up the modality)"
)

# Each study with what a list filters and sorts it by, as the worklist's `study_row` reads it from the rows: an
# image's diagnosis is its newest 'ok' result; the study's triage score is its images' highest; it is positive where
# one of those diagnoses has a positive finding, reviewed where it has a review. Computed in SQL, not kept in
# columns that every result and review would have to keep up to date.
_NEWEST_OK = "SELECT max(r.id) FROM results r WHERE r.image_id = i.id AND r.status = 'ok'"
_FACTS = (
    "SELECT s.id, s.uid, s.created_at, s.patient_id, "
    f"coalesce((SELECT max(r.triage) FROM images i JOIN results r ON r.id = ({_NEWEST_OK}) "
    "WHERE i.study_id = s.id), 0) AS triage, "
    f"EXISTS (SELECT 1 FROM images i JOIN results r ON r.id = ({_NEWEST_OK}) JOIN json_each(r.findings) f "
    "WHERE i.study_id = s.id AND json_extract(f.value, '$.positive')) AS positive, "
    "EXISTS (SELECT 1 FROM study_reviews v WHERE v.study_id = s.id) AS reviewed, "
    "EXISTS (SELECT 1 FROM images i WHERE i.study_id = s.id AND i.status = 'queued') AS queued, "
    "EXISTS (SELECT 1 FROM images i WHERE i.study_id = s.id AND i.status = 'done') AS done "
    "FROM studies s"
)
# Names, accession numbers and modalities are read from the images' stored headers (JSON): the header is written
# once, a later image of the study may carry what the first lacked, and a scan of a clinic's studies is cheap.
_SEARCHED = ("patient_name", "patient_id", "accession_number")
_TEXT = (
    "(f.patient_id LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM images i WHERE i.study_id = f.id AND ("
    + " OR ".join(f"json_extract(i.metadata, '$.{k}') LIKE ? ESCAPE '\\'" for k in _SEARCHED)
    + ")))"
)
_MODALITY = (
    "EXISTS (SELECT 1 FROM images i WHERE i.study_id = f.id AND upper(coalesce(nullif("
    "json_extract(i.metadata, '$.modality'), ''), json_extract(i.metadata, '$.format'))) = upper(?))"
)
_ORDERS = {
    # Positive findings not yet reviewed first, the most urgent first among them; then the rest, newest first.
    "triage": "(f.positive AND NOT f.reviewed) DESC, CASE WHEN f.positive AND NOT f.reviewed THEN f.triage END "
    "DESC, f.id DESC",
    "newest": "f.id DESC",
    "oldest": "f.id",
}


def _filter(q: StudyQuery) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause on `_FACTS` (as `f`) that picks the studies `q` asks for, and its parameters."""
    terms: list[str] = []
    params: list[Any] = []
    for word in q.text.split():
        like = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        terms.append(_TEXT)
        params += [like] * (1 + len(_SEARCHED))
    if q.results and q.positive:
        terms.append("f.positive")
    if q.results and q.unreviewed:
        terms.append("NOT f.reviewed")
    if q.state == "queued":
        terms.append("f.queued")
    elif q.state == "refused":
        terms.append("NOT f.queued AND NOT f.done")
    for bound, op in ((q.received_from, ">="), (q.received_to, "<")):
        if bound:
            terms.append(f"f.created_at {op} ?")
            params.append(bound)
    if q.modality:
        terms.append(_MODALITY)
        params.append(q.modality)
    if q.newer_than:
        terms.append("f.id > ?")
        params.append(q.newer_than)
    return ("WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


SERIES_CONFLICT = "its Series Instance UID belongs to another study: kept apart, not diagnosed"


def _study_conflict(patient: str, study_patient: str) -> str:
    """Why an image cannot join a study, saying nothing of the study's patient but whether there is one."""
    if not patient:
        return "it carries no patient ID and its Study Instance UID names a patient's study: kept apart, not diagnosed"
    if not study_patient:
        return "its Study Instance UID names a study held without a patient ID: kept apart, not diagnosed"
    return "its Study Instance UID belongs to another patient's study: kept apart, not diagnosed"


@dataclass(frozen=True)
class Job:
    """An image the worker has claimed, with what it needs to diagnose it."""

    id: int
    image_id: int
    sha256: str
    filename: str
    attempts: int
    header: ImageHeader
    metadata: dict[str, Any]  # all that is stored of the image so far (the header, an exposure report)
    bundle_sha256: str | None = None  # the model a clinician sent it to; None: the models its header fits


@dataclass(frozen=True)
class OutboxItem:
    """A DICOM object on its way to a destination."""

    id: int
    image_id: int
    destination: str  # AE@host:port
    kind: str
    sha256: str
    attempts: int


@dataclass(frozen=True)
class DocumentsDue:
    """An image's recorded results whose documents (SR, SC) are still to be made."""

    image_id: int
    sha256: str  # the image's stored file
    header: ImageHeader
    patient_id: str  # its study's, as the store holds it
    result_ids: tuple[int, ...]


@dataclass(frozen=True)
class Backlog:
    """One destination's unsent items: waiting (queued) and given up (failed)."""

    destination: str
    waiting: int
    failed: int
    oldest_at: float  # when the oldest of them was queued (seconds since the epoch)
    last_error: str | None  # why the latest attempt failed


@dataclass(frozen=True)
class ModelResult:
    """One model's answer for one image."""

    status: ResultStatus
    model: dict[str, str]
    bundle_sha256: str
    reason: str | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    heatmaps: list[tuple[str, bytes]] = field(default_factory=list)  # (label, PNG), the most probable first
    timings: dict[str, float] = field(default_factory=dict)
    guard: dict[str, Any] | None = None  # the input guard's verdict; None: not checked (a bundle without a guard)
    triage: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """A finished job: the image's status, what decoding learnt of it, and each model's result."""

    status: ImageStatus  # any but "queued"
    reason: str | None = None
    reason_kind: ReasonKind | None = None  # set with `reason`
    metadata: dict[str, Any] | None = None
    results: list[ModelResult] = field(default_factory=list)
    view: bytes | None = None  # the image as the tablet shows it (JPEG)


# A job as one claim of it holds it (see `_held`). A clinician's re-send (`send_to_model`) counts attempts from 0
# again: a claim stale since before it, of the same attempt number, would pass; one worker holds a data directory,
# and it renews before it claims, so none is that stale.
_HELD = "id = ? AND state = 'running' AND attempts = ?"


def _held(job: Job) -> tuple[int, int]:
    """`_HELD`'s parameters: the job, and the attempt its claim made (a later claim of it counts one more)."""
    return job.id, job.attempts


def _now() -> str:
    return utc_text("milliseconds")


def _write_ahead_log(db: sqlite3.Connection, wait_s: float = 10.0) -> None:
    """Put the database in WAL mode. Switching needs the database to itself and SQLite does not wait for that (no
    busy handler): where another process holds it (the worker migrating a new database as the front starts), try
    again for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class Store:
    """Studies, images, results and the audit trail under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(  # timeout: the other process may hold it a while (an upgrade migrating)
                self.data_dir / "edge-app.sqlite3", check_same_thread=False, isolation_level=None, timeout=60.0
            )
            self._db.row_factory = sqlite3.Row
            _write_ahead_log(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            try:
                problems = [str(r[0]) for r in self._db.execute("PRAGMA quick_check").fetchall()]
            except sqlite3.DatabaseError as exc:  # too damaged to be checked
                problems = [str(exc)]
            if problems != ["ok"]:  # a power cut on a disk that lies about fsync, a failing card
                self._db.close()
                raise ConfigError(
                    f"the database {self.data_dir / 'edge-app.sqlite3'} is damaged ({'; '.join(problems[:3])}): "
                    "restore it from a backup, or move it aside to start afresh"
                )
            with self._lock:
                migrate(self._db, _now())
        except (OSError, sqlite3.Error, ValueError) as exc:  # ValueError: a row an upgrade cannot read
            raise ConfigError(f"data directory {self.data_dir} cannot be used (storage.data_dir): {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def pragma(self, name: str) -> Any:
        """Read a PRAGMA (for health checks and tests)."""
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one immediate transaction: committed at the end (a return or a `continue` inside
        too), rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

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
            if size:
                os.utime(path)  # stored again now: not a stray file for another process's remove_orphans
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

    def add_image(
        self,
        digest: str,
        size: int,
        filename: str,
        source: str,
        header: ImageHeader,
        *,
        reason: str | None = None,
        reason_kind: ReasonKind | None = None,
        patient_id: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Added:
        """Record a stored file as an image of its study and series (created where new) and queue its job; with a
        `reason` (and its kind), record it refused instead. The same bytes under a known SOP Instance UID are not added
        twice. `IdentityConflict` (nothing recorded) where the image cannot join what its UIDs name: other bytes under a
        known SOP Instance UID, or a study whose patient ID is not the image's (no ID never matches a known
        patient's, nor an ID a study held without one)."""
        now = _now()
        status: ImageStatus = "rejected" if reason else "queued"
        patient = header.patient_id or patient_id
        with self.transaction() as db:
            known = db.execute(
                "SELECT images.id, images.status, images.reason, studies.uid, images.sha256 FROM images JOIN studies "
                "ON studies.id = images.study_id WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            ).fetchone()
            if known is not None:
                if known[4] != digest:
                    raise IdentityConflict(filename, SOP_CONFLICT)
                return Added(known[0], known[3], header.sop_instance_uid, known[1], known[2], duplicate=True)
            study = db.execute("SELECT id, patient_id FROM studies WHERE uid = ?", (header.study_uid,)).fetchone()
            if study is not None and study[1] != patient:
                raise IdentityConflict(filename, _study_conflict(patient, study[1]))
            study_id = (
                study[0]
                if study is not None
                else self._insert(
                    "INSERT INTO studies (uid, created_at, source, patient_id) VALUES (?, ?, ?, ?)",
                    (header.study_uid, now, source, patient),
                )
            )
            series = db.execute("SELECT id, study_id FROM series WHERE uid = ?", (header.series_uid,)).fetchone()
            if series is not None and series[1] != study_id:
                raise IdentityConflict(filename, SERIES_CONFLICT)
            series_id = (
                series[0]
                if series is not None
                else self._insert(
                    "INSERT INTO series (study_id, uid, modality, created_at) VALUES (?, ?, ?, ?)",
                    (study_id, header.series_uid, header.modality, now),
                )
            )
            image_id = self._insert(
                "INSERT INTO images (study_id, series_id, created_at, filename, sha256, size, metadata, "
                "sop_instance_uid, status, reason, reason_kind, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    study_id,
                    series_id,
                    now,
                    filename,
                    digest,
                    size,
                    json.dumps({**header.as_dict(), **(extra or {})}),
                    header.sop_instance_uid,
                    status,
                    reason,
                    reason_kind if reason else None,
                    source,
                ),
            )
            if status == "queued":
                db.execute("INSERT INTO jobs (image_id, state, updated_at) VALUES (?, 'queued', ?)", (image_id, now))
        return Added(image_id, header.study_uid, header.sop_instance_uid, status, reason)

    def unread_from(self, source_suffix: str, seconds: float) -> int:
        """How many images whose source ends with `source_suffix` arrived in the last `seconds` and were read by
        no model (none fits them, or the input guard refused them): what a flood of such objects looks like."""
        since = utc_text("milliseconds", ago_s=seconds)
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM images WHERE id > (SELECT coalesce(max(id), 0) - 1000 FROM images) "
                "AND created_at >= ? AND status IN ('no_model', 'outside') "
                "AND substr(source, -length(?)) = ?",
                (since, source_suffix, source_suffix),
            ).fetchone()
        return int(row[0])

    def kept_apart(self, digest: str, sop_instance_uid: str) -> Added | None:
        """The image these bytes were kept apart as when they first came (an `IdentityConflict`), if they did."""
        with self._lock:
            row = self._db.execute(
                "SELECT images.id, studies.uid, images.sop_instance_uid, images.status, images.reason FROM images "
                "JOIN studies ON studies.id = images.study_id WHERE images.sha256 = ? "
                "AND json_extract(images.metadata, '$.kept_apart.sop_instance_uid') = ? ORDER BY images.id LIMIT 1",
                (digest, sop_instance_uid),
            ).fetchone()
        return Added(row[0], row[1], row[2], row[3], row[4], duplicate=True, kept_apart=True) if row else None

    def _id_of(self, table: str, uid: str) -> int | None:
        row = self._db.execute(f"SELECT id FROM {table} WHERE uid = ?", (uid,)).fetchone()
        return int(row[0]) if row else None

    def _insert(self, sql: str, values: tuple[Any, ...]) -> int:
        return int(self._db.execute(sql, values).lastrowid or 0)

    def image_status(self, image_id: int) -> tuple[str, str | None]:
        with self._lock:
            row = self._db.execute("SELECT status, reason FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"no image {image_id}")
        return str(row[0]), row[1]

    # -- jobs ----------------------------------------------------------------------------------------------------

    def claim_job(self, lease_s: float, max_attempts: int) -> Job | None:
        """The oldest queued job, or one whose lease ran out (its worker died), now leased for `lease_s`. A job
        tried `max_attempts` times already fails its image instead: an image that kills the worker is not tried
        for ever."""
        while True:
            now, stamp = time.time(), _now()
            with self.transaction() as db:
                row = db.execute(
                    "SELECT jobs.id, jobs.image_id, jobs.attempts, images.sha256, images.filename, "
                    "images.metadata, jobs.bundle_sha256 FROM jobs JOIN images ON images.id = jobs.image_id "
                    "WHERE jobs.state = 'queued' OR (jobs.state = 'running' AND jobs.lease_until < ?) "
                    "ORDER BY jobs.id LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                job_id, image_id, attempts = int(row[0]), int(row[1]), int(row[2])
                if attempts >= max_attempts:
                    reason = (
                        f"gave up after {attempts} attempts: the service stopped, or its decoder could not be "
                        "started, while diagnosing it each time"
                    )
                    db.execute(
                        "UPDATE images SET status = 'failed', reason = ?, reason_kind = 'internal' WHERE id = ?",
                        (reason, image_id),
                    )
                    db.execute("UPDATE jobs SET state = 'done', updated_at = ? WHERE id = ?", (stamp, job_id))
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?, "
                    "updated_at = ? WHERE id = ?",
                    (now + lease_s, stamp, job_id),
                )
            metadata = json.loads(row[5])
            header = ImageHeader.from_dict(metadata)
            return Job(job_id, image_id, str(row[3]), str(row[4]), attempts + 1, header, metadata, row[6])

    def requeue_job(self, job: Job) -> None:
        """A job back in the queue at once, its attempt counted: its image was not read, through no fault of its
        own (no decoder process or model for it: `DecoderUnavailable`). Only while this claim holds it (see
        `finish_job`)."""
        with self.transaction() as db:
            db.execute(
                f"UPDATE jobs SET state = 'queued', lease_until = 0, updated_at = ? WHERE {_HELD}",
                (_now(), *_held(job)),
            )

    def renew_jobs(self, jobs: Sequence[Job], lease_s: float) -> None:
        """Lease again for `lease_s` jobs still held (a worker's images waiting for a decoder): not claimed again
        while their worker lives."""
        with self.transaction() as db:
            db.executemany(
                f"UPDATE jobs SET lease_until = ? WHERE {_HELD}", [(time.time() + lease_s, *_held(job)) for job in jobs]
            )

    def finish_job(self, job: Job, outcome: Outcome) -> list[int]:
        """Record a job's outcome in one transaction (heatmap files first), then wake whoever waits for it; the
        ids of the results recorded. LeaseLost, nothing recorded, where this claim no longer holds the job: its lease
        ran out and another claim took it (whose outcome counts), or it was finished or queued again meanwhile."""
        heatmaps = [[(label, self.put_file(png)) for label, png in r.heatmaps] for r in outcome.results]
        view = self.put_file(outcome.view) if outcome.view else None
        now = _now()
        recorded: list[int] = []
        with self.transaction() as db:
            if not db.execute(
                f"UPDATE jobs SET state = 'done', updated_at = ? WHERE {_HELD}", (now, *_held(job))
            ).rowcount:
                raise LeaseLost(f"image {job.image_id}: attempt {job.attempts} no longer holds its job")
            for result, maps in zip(outcome.results, heatmaps, strict=True):
                cur = db.execute(
                    "INSERT INTO results (image_id, created_at, status, reason, model, bundle_sha256, "
                    "findings, timings, guard, triage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.image_id,
                        now,
                        result.status,
                        result.reason,
                        json.dumps(result.model),
                        result.bundle_sha256,
                        json.dumps(result.findings),
                        json.dumps(result.timings),
                        json.dumps(result.guard) if result.guard is not None else None,
                        result.triage,
                    ),
                )
                db.executemany(
                    "INSERT INTO heatmaps (result_id, rank, label, sha256) VALUES (?, ?, ?, ?)",
                    [(cur.lastrowid, rank, label, sha) for rank, (label, sha) in enumerate(maps)],
                )
                recorded.append(int(cur.lastrowid or 0))
            metadata = {**job.metadata, **(outcome.metadata or {})}
            db.execute(
                # An outcome without a view (none decoded it) keeps one the front made for the tablet meanwhile.
                "UPDATE images SET status = ?, reason = ?, reason_kind = ?, metadata = ?, "
                "view_sha256 = COALESCE(?, view_sha256) WHERE id = ?",
                (outcome.status, outcome.reason, outcome.reason_kind, json.dumps(metadata), view, job.image_id),
            )
        with self._changed:
            self._changed.notify_all()
        return recorded

    def send_to_model(self, image_id: int, bundle_sha256: str) -> None:
        """Queue a finished image again, for one model (a clinician's choice: an image another model refused or
        none read); its earlier results stay."""
        with self.transaction() as db:
            row = db.execute("SELECT status, purged_at FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                raise NotFound(f"no image {image_id}")
            if row[0] == "queued":
                raise UserError("the image is already waiting for a model")
            if row[0] not in SENDABLE:  # a diagnosed image keeps its findings; an unreadable one stays unreadable
                raise UserError(f"only an image no model read or the input guard refused can be sent ({row[0]})")
            if row[1] is not None:
                raise UserError("the image's file was removed (the retention policy): it cannot be read again")
            db.execute(
                "UPDATE images SET status = 'queued', reason = NULL, reason_kind = NULL WHERE id = ?", (image_id,)
            )
            db.execute(  # an image of schema version 1 may have no job row yet
                "INSERT INTO jobs (image_id, state, attempts, lease_until, bundle_sha256, updated_at) "
                "VALUES (?, 'queued', 0, 0, ?, ?) ON CONFLICT (image_id) DO UPDATE SET state = 'queued', attempts = 0, "
                "lease_until = 0, bundle_sha256 = excluded.bundle_sha256, updated_at = excluded.updated_at",
                (image_id, bundle_sha256, _now()),
            )

    def notify_changed(self) -> None:
        """Wake whoever waits for a result (`wait_for`): one came in, from this process or another."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, image_id: int, timeout: float, until: threading.Event | None = None) -> tuple[str, str | None]:
        """The image's status once it is no longer queued, or still queued after `timeout` seconds or once `until`
        is set (the service stops)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                status, reason = self.image_status(image_id)
                left = deadline - time.monotonic()
                if status != "queued" or left <= 0 or (until is not None and until.is_set()):
                    return status, reason
                self._changed.wait(min(left, 0.25))  # a worker in another process notifies no one

    # -- outbox ----------------------------------------------------------------------------------------------------

    def enqueue_outputs(self, image_id: int, items: list[tuple[str, str, str]]) -> None:
        """Queue (destination, kind, sha256 of a stored DICOM file) for sending."""
        with self.transaction() as db:
            _enqueue(db, image_id, items)

    def documents_due(self, image_id: int, result_ids: list[int]) -> int:
        """Note that the documents of an image's recorded diagnoses (results `ok`; others send nothing) are to be
        made (`next_documents`); how many were noted."""
        with self.transaction() as db:
            return sum(
                db.execute(
                    "INSERT OR IGNORE INTO documents_due (result_id, image_id) "
                    "SELECT id, image_id FROM results WHERE id = ? AND image_id = ? AND status = 'ok'",
                    (result_id, image_id),
                ).rowcount
                for result_id in result_ids
            )

    def next_documents(self) -> DocumentsDue | None:
        """The image noted first whose results' documents are still to be made, or None."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.result_id, i.id, i.sha256, i.metadata, s.patient_id FROM documents_due d "
                "JOIN images i ON i.id = d.image_id JOIN studies s ON s.id = i.study_id "
                "WHERE d.image_id = (SELECT image_id FROM documents_due ORDER BY result_id LIMIT 1) "
                "ORDER BY d.result_id"
            ).fetchall()
        if not rows:
            return None
        _, image_id, sha256, metadata, patient = rows[0]
        header = ImageHeader.from_dict(json.loads(metadata))
        return DocumentsDue(int(image_id), str(sha256), header, str(patient or ""), tuple(int(r[0]) for r in rows))

    def documents_made(self, due: DocumentsDue, items: list[tuple[str, str, str]]) -> None:
        """Queue what `due`'s documents send (destination, kind, sha256 of a stored DICOM file) and note them made
        (for every destination: any of them given up as not made is no longer), in one transaction."""
        with self.transaction() as db:
            _enqueue(db, due.image_id, items)
            done = [(r,) for r in due.result_ids]
            db.executemany("DELETE FROM documents_due WHERE result_id = ?", done)
            db.executemany("DELETE FROM outbox WHERE kind = 'documents' AND result_id = ?", done)

    def documents_failed(self, due: DocumentsDue, destinations: list[str], reason: str) -> None:
        """`due`'s documents could not be made: kept as failed `documents` items, one per result and destination
        (those of an earlier failure replaced), with `reason` (the backlog, health and the pages show them);
        `retry_outputs` makes them again."""
        now, at = _now(), time.time()
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM outbox WHERE kind = 'documents' AND result_id = ?", [(r,) for r in due.result_ids]
            )
            db.executemany(
                "INSERT INTO outbox (image_id, destination, kind, sha256, state, attempts, last_error, updated_at, "
                "queued_at, result_id) VALUES (?, ?, 'documents', '', 'failed', 1, ?, ?, ?, ?)",
                [(due.image_id, d, reason, now, at, r) for d in destinations for r in due.result_ids],
            )
            db.executemany("DELETE FROM documents_due WHERE result_id = ?", [(r,) for r in due.result_ids])

    def due_outputs(self, hold_s: float, destination: str | None = None, limit: int = 1) -> list[OutboxItem]:
        """The oldest queued items whose time has come (of one destination, or of any), at most `limit`, held for
        `hold_s` (so that no other sender takes them)."""
        now = time.time()
        where = "state = 'queued' AND next_try <= ?" + (" AND destination = ?" if destination is not None else "")
        params = (now, destination) if destination is not None else (now,)
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT id, image_id, destination, kind, sha256, attempts FROM outbox WHERE {where} "
                "ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
            db.executemany("UPDATE outbox SET next_try = ? WHERE id = ?", [(now + hold_s, row[0]) for row in rows])
        return [OutboxItem(*row) for row in rows]

    def output_done(self, item: OutboxItem, error: str | None, retry_at: float | None) -> None:
        """Sent (no error), to be tried again at `retry_at`, or (no `retry_at`) given up."""
        state = "sent" if error is None else ("queued" if retry_at is not None else "failed")
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, next_try = ?, last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (state, retry_at or 0, error, _now(), item.id),
            )

    def release_outputs(self) -> int:
        """Make every queued item due now: at start, when no sender of this data directory can be alive (what one
        held, or was waiting to try again, is sent at once)."""
        with self._lock:
            return int(self._db.execute("UPDATE outbox SET next_try = 0 WHERE state = 'queued'").rowcount)

    def give_up_outputs(self, destinations: list[str], reason: str) -> int:
        """Keep as failed, with `reason`, the queued items for any destination not among `destinations`."""
        with self._lock:
            return int(
                self._db.execute(
                    "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ? "
                    f"WHERE state = 'queued' AND destination NOT IN ({', '.join('?' * len(destinations))})",
                    (reason, _now(), *destinations),
                ).rowcount
            )

    def retry_outputs(self, destinations: list[str], actor: str, destination: str | None = None) -> int:
        """Queue again the items given up (failed) for the configured `destinations` (or one of them), their
        attempts counted anew, and note again as due the documents that could not be made (`next_documents`);
        audited; return how many."""
        wanted = [d for d in destinations if destination is None or d == destination]
        if not wanted:
            return 0
        among = f"destination IN ({', '.join('?' * len(wanted))})"
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO documents_due (result_id, image_id) SELECT result_id, image_id FROM outbox "
                f"WHERE kind = 'documents' AND state = 'failed' AND {among}",
                wanted,
            )
            remade = db.execute(f"DELETE FROM outbox WHERE kind = 'documents' AND state = 'failed' AND {among}", wanted)
            count = (
                remade.rowcount
                + db.execute(
                    "UPDATE outbox SET state = 'queued', attempts = 0, next_try = 0, updated_at = ? "
                    f"WHERE state = 'failed' AND {among}",
                    (_now(), *wanted),
                ).rowcount
            )
        self.audit(actor, "outbox.retry", destination or "all destinations", f"{count} item(s) queued again")
        return int(count)

    def backlog(self) -> list[Backlog]:
        """What waits or was given up, per destination (those with nothing unsent are not named)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT destination, sum(state = 'queued'), sum(state = 'failed'), min(queued_at), "
                "(SELECT last_error FROM outbox AS o WHERE o.destination = outbox.destination AND o.state != 'sent' "
                "AND o.last_error IS NOT NULL ORDER BY o.updated_at DESC, o.id DESC LIMIT 1) "
                "FROM outbox WHERE state != 'sent' GROUP BY destination ORDER BY destination"
            ).fetchall()
        return [Backlog(r[0], int(r[1]), int(r[2]), float(r[3]), r[4]) for r in rows]

    def outputs(self, image_id: int) -> list[Output]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(OUTPUT_FIELDS)} FROM outbox WHERE image_id = ? ORDER BY id",
                (image_id,),
            ).fetchall()
        return [Output.of(r) for r in rows]

    def release_leases(self) -> int:
        """Queue again every job a worker held: at start, when no worker of this data directory can be alive."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET state = 'queued', lease_until = 0 WHERE state = 'running'")
            return int(cur.rowcount)

    def queued(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM jobs WHERE state != 'done'").fetchone()[0])

    def get_study(self, uid: str) -> Study:
        studies = self._studies("WHERE uid = ?", (uid,))
        if not studies:
            raise NotFound(f"no study {uid}")
        return studies[0]

    def list_studies(self, limit: int = 50) -> list[Study]:
        """The newest studies, newest first."""
        return self._studies("ORDER BY id DESC LIMIT ?", (limit,))

    def find_studies(self, q: StudyQuery) -> StudyPage:
        """The page of studies `q` asks for, in its order, with the number matching in all: the filtering, the
        order, the count and the page are SQL's, so the statements stay as many whatever the number of studies."""
        where, params = _filter(q)
        order = _ORDERS[q.order if q.results else "newest" if q.order == "triage" else q.order]
        with self._lock:
            picked = self._db.execute(
                f"SELECT f.id, f.uid, f.reviewed FROM ({_FACTS}) f {where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*params, q.limit, q.offset),
            ).fetchall()
            total, newest = self._db.execute(
                f"SELECT (SELECT count(*) FROM ({_FACTS}) f {where}), (SELECT coalesce(max(id), 0) FROM studies)",
                params,
            ).fetchone()
            ids = [row["id"] for row in picked]
            found = {s.uid: s for s in self._studies(f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))}
        return StudyPage(
            studies=tuple(found[row["uid"]] for row in picked if row["uid"] in found),
            total=int(total),
            reviewed=frozenset(row["uid"] for row in picked if row["reviewed"] and q.results),
            newest=int(newest),
        )

    def count_studies(self, q: StudyQuery) -> int:
        """How many studies `q`'s filters pick (its order and page aside): one statement."""
        where, params = _filter(q)
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM ({_FACTS}) f {where}", params).fetchone()[0])

    def modalities(self) -> list[str]:
        """The modalities of the studies held (as the worklist names them), for a filter's choices."""
        rows = self.query(
            "SELECT DISTINCT upper(coalesce(nullif(json_extract(metadata, '$.modality'), ''), "
            "json_extract(metadata, '$.format'))) AS m FROM images WHERE m IS NOT NULL AND m != '' ORDER BY m"
        )
        return [str(r[0]) for r in rows]

    def _studies(self, where: str, params: tuple[Any, ...]) -> list[Study]:
        """The studies `where` picks (a clause on `studies`), in its order, each with its images, their results,
        heatmaps and outputs: one query per level, whatever the number of studies (the worklist refreshes itself)."""
        picked = f"SELECT id FROM studies {where}"
        in_images = f"SELECT id FROM images WHERE study_id IN ({picked})"
        with self._lock:
            db = self._db
            studies = db.execute(f"SELECT * FROM studies {where}", params).fetchall()
            images = db.execute(
                "SELECT images.*, series.uid AS series_uid FROM images LEFT JOIN series ON series.id = "
                f"images.series_id WHERE images.study_id IN ({picked}) ORDER BY images.id",
                params,
            ).fetchall()
            results = db.execute(
                f"SELECT * FROM results WHERE image_id IN ({in_images}) ORDER BY id", params
            ).fetchall()
            maps = db.execute(
                "SELECT result_id, label, sha256 FROM heatmaps WHERE result_id IN "
                f"(SELECT id FROM results WHERE image_id IN ({in_images})) ORDER BY result_id, rank",
                params,
            ).fetchall()
            outputs = db.execute(
                f"SELECT image_id, {', '.join(OUTPUT_FIELDS)} FROM outbox WHERE image_id IN ({in_images}) ORDER BY id",
                params,
            ).fetchall()
        heatmaps: dict[int, list[tuple[str, str]]] = {}
        for m in maps:
            heatmaps.setdefault(m["result_id"], []).append((m["label"], m["sha256"]))
        by_image: dict[int, list[Result]] = {}
        for r in results:
            by_image.setdefault(r["image_id"], []).append(Result.of(r, heatmaps.get(r["id"], [])))
        sent: dict[int, list[Output]] = {}
        for o in outputs:
            sent.setdefault(o["image_id"], []).append(Output.of(o))
        of_study: dict[int, list[Image]] = {}
        for image in images:
            of_study.setdefault(image["study_id"], []).append(
                Image(
                    id=image["id"],
                    sop_instance_uid=image["sop_instance_uid"],
                    series_uid=image["series_uid"],
                    status=image["status"],
                    reason=image["reason"],
                    reason_kind=image["reason_kind"],
                    source=image["source"],
                    filename=image["filename"],
                    sha256=image["sha256"],
                    size=image["size"],
                    view_sha256=image["view_sha256"] if image["purged_at"] is None else None,
                    purged_at=image["purged_at"],
                    received_at=image["created_at"],
                    metadata=json.loads(image["metadata"]),
                    results=tuple(by_image.get(image["id"], [])),
                    outputs=tuple(sent.get(image["id"], [])),
                )
            )
        return [
            Study(
                study["uid"],
                study["created_at"],
                study["source"],
                study["patient_id"],
                tuple(of_study.get(study["id"], [])),
            )
            for study in studies
        ]

    def get_result(self, result_id: int) -> Result:
        if 0 < result_id < 2**63:  # SQLite's INTEGER range
            with self._lock:
                row = self._db.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
                if row is not None:
                    maps = self._db.execute(
                        "SELECT label, sha256 FROM heatmaps WHERE result_id = ? ORDER BY rank", (result_id,)
                    ).fetchall()
                    return Result.of(row, [(label, sha) for label, sha in maps])
        raise NotFound(f"no result {result_id}")

    def set_view(self, image_id: int, jpeg: bytes) -> None:
        """Keep the tablet's view of an image that has none yet (made before any model read it)."""
        digest = self.put_file(jpeg)
        with self.transaction() as db:
            db.execute(
                "UPDATE images SET view_sha256 = ? WHERE id = ? AND view_sha256 IS NULL AND purged_at IS NULL",
                (digest, image_id),
            )

    def patient_studies(self, patient_id: str) -> list[Study]:
        """Every study of one patient ID, newest first (an empty ID is no patient: none)."""
        if not patient_id:
            return []
        return self._studies("WHERE patient_id = ? ORDER BY id DESC", (patient_id,))

    def oldest_queued_at(self) -> str | None:
        """When the oldest image still waiting for the worker was queued (None: none waits)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(images.created_at) FROM jobs JOIN images ON images.id = jobs.image_id "
                "WHERE jobs.state != 'done'"
            ).fetchone()
        return str(row[0]) if row[0] is not None else None

    def image_view(self, image_id: int) -> bytes | None:
        """The JPEG of an image as the tablet shows it (its preview); None where it has none or it was removed."""
        with self._lock:
            row = self._db.execute(
                "SELECT view_sha256 FROM images WHERE id = ? AND purged_at IS NULL", (image_id,)
            ).fetchone()
        return self.read_file(row[0]) if row is not None and row[0] is not None else None

    def result_ordinal(self, result_id: int) -> int:
        """Where a diagnosed result stands among its study's diagnosed results, from 1 (the series its DICOM
        documents take); 0 where there is no such result."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM results JOIN images ON images.id = results.image_id WHERE results.status = 'ok' "
                "AND results.id <= ? AND images.study_id = (SELECT images.study_id FROM results JOIN images "
                "ON images.id = results.image_id WHERE results.id = ?)",
                (result_id, result_id),
            ).fetchone()
        return int(row[0])

    def patient_of_image(self, image_id: int) -> str:
        """The patient ID of an image's study, as the store holds it (given with a PNG, read from a DICOM)."""
        with self._lock:
            row = self._db.execute(
                "SELECT studies.patient_id FROM images JOIN studies ON studies.id = images.study_id "
                "WHERE images.id = ?",
                (image_id,),
            ).fetchone()
        return str(row[0] or "") if row is not None else ""

    def study_of_result(self, result_id: int) -> str | None:
        """The UID of the study a result is of (None where there is no such result)."""
        with self._lock:
            row = self._db.execute(
                "SELECT studies.uid FROM results JOIN images ON images.id = results.image_id "
                "JOIN studies ON studies.id = images.study_id WHERE results.id = ?",
                (result_id,),
            ).fetchone()
        return str(row[0]) if row is not None else None

    def purge_images(self, received_before: str) -> int:
        """Remove the files (the image and its view) of every finished image received before the ISO time
        `received_before`, but those whose documents are still to be made (due, or not made and kept to be sent
        again: they are made from the image); keep its row, results, heatmaps and reviews. Returns how many were
        removed."""
        now = _now()
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, sha256, view_sha256 FROM images WHERE created_at < ? AND purged_at IS NULL "
                "AND status != 'queued' AND id NOT IN (SELECT image_id FROM documents_due) "
                "AND id NOT IN (SELECT image_id FROM outbox WHERE kind = 'documents')",
                (received_before,),
            ).fetchall()
            db.executemany("UPDATE images SET purged_at = ? WHERE id = ?", [(now, r[0]) for r in rows])
            # Files are named by their content: the same bytes sent twice are one file two images use.
            still_used = {r[0] for r in db.execute(FILES_IN_USE)}
        for digest in {d for row in rows for d in (row[1], row[2]) if d} - still_used:
            # Once the rows say so: files a crash leaves here are remove_orphans' to delete.
            self.file_path(digest).unlink(missing_ok=True)
        return len(rows)

    # -- recovery at start ---------------------------------------------------------------------------------------

    def remove_orphans(self, min_age_s: float = 0.0) -> int:
        """Delete temporaries a crash left behind and stored files no row refers to; call before serving. With
        another process writing (the front and the worker apart), only files older than `min_age_s`: a file is
        stored a moment before the row that refers to it."""
        with self._lock:
            wanted = {r[0] for r in self._db.execute(FILES_IN_USE)}
        removed = 0
        too_new = time.time() - min_age_s
        for path in self.files_dir.rglob("*"):
            if not path.is_file() or (min_age_s and path.stat().st_mtime > too_new):
                continue
            if path.name.startswith(INCOMING_PREFIX) or path.name not in wanted:
                path.unlink()
                removed += 1
        return removed

    def audit(self, actor: str, action: str, subject: str = "", detail: str = "") -> None:
        """Append a row to the audit log, sealed after the newest one (`chain`); one transaction, so that two
        processes writing at once take turns."""
        with self.transaction() as db:
            last = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            row = (int(last[0]) + 1 if last else 1, _now(), str(actor), str(action), str(subject), str(detail))
            db.execute(
                "INSERT INTO audit (id, at, actor, action, subject, detail, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*row, chain.seal(last[1] if last else chain.GENESIS, row)),
            )

    def audit_trail(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def audit_chain(self) -> chain.ChainState:
        """Whether every row of the audit log follows the one before it, and where the first does not."""
        return chain.verify(self._audit_rows())

    def _audit_rows(self, batch: int = 5000) -> Iterator[tuple[object, ...]]:
        """Every audit row in id order, a batch at a time: the lock is not held for the whole log."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {', '.join(chain.COLUMNS)}, hash FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                    (after, batch),
                ).fetchall()
            yield from (tuple(r) for r in rows)
            if len(rows) < batch:
                return
            after = int(rows[-1][0])


def _enqueue(db: sqlite3.Connection, image_id: int, items: list[tuple[str, str, str]]) -> None:
    now = _now()
    db.executemany(
        "INSERT INTO outbox (image_id, destination, kind, sha256, state, updated_at, queued_at) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
        [(image_id, destination, kind, digest, now, time.time()) for destination, kind, digest in items],
    )
