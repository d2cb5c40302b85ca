"""`edge-app backup` and `edge-app restore`: the database and the file store, copied so that a technician can carry
them away on a USB stick and bring a box back.

A backup is a folder `edge-app-backup-<time>/` holding a consistent copy of the database (SQLite's online backup:
the service may keep running), every stored file a row of that copy refers to (checked against its sha256 as it is
copied), the imported bundles, the TLS certificate and the session key (it holds secrets: keep the stick safe).
A restore checks the whole backup first, then moves the current data directory aside (never deletes it) and puts
the backup in its place; the service must be stopped.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import shutil
import sqlite3
from pathlib import Path

from edge_app.bundle import sha256_file
from edge_app.config import Settings
from edge_app.errors import UserError
from edge_app.store.db import FILES_IN_USE, SERVICE_LOCKS

DATABASE = "edge-app.sqlite3"
SUMMARY = "backup.json"
_KEPT = ("bundles", "tls", "secret_key")  # besides the database and files/


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup(settings: Settings, parent: Path) -> Path:
    """A new backup folder in `parent`; return it."""
    data = settings.storage.data_dir
    if not (data / DATABASE).is_file():
        raise UserError(f"nothing to back up: {data / DATABASE} does not exist")
    dest = parent / f"edge-app-backup-{_stamp()}"
    try:
        dest.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot make {dest}: {exc.strerror or exc}") from None
    source = sqlite3.connect(data / DATABASE)
    copy = sqlite3.connect(dest / DATABASE)
    try:
        source.backup(copy)
        digests = sorted(r[0] for r in copy.execute(FILES_IN_USE))
    finally:
        source.close()
        copy.close()
    size = 0
    for digest in digests:
        size += _copy_checked(data / "files" / digest[:2] / digest, dest / "files" / digest[:2] / digest, digest)
    for name in _KEPT:
        path = data / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns(".incoming-*"))
        elif path.is_file():
            shutil.copy2(path, dest / name)
    summary = {"created_at": _stamp(), "files": len(digests), "bytes": size, "from": str(data)}
    (dest / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return dest


def restore(settings: Settings, source: Path) -> Path | None:
    """Check the backup in `source`, move the current data directory aside and put the backup in its place;
    return where the old data went (None where there was none)."""
    check(source)
    data = settings.storage.data_dir
    _not_served(data)
    aside = data.with_name(f"{data.name}.before-restore-{_stamp()}") if data.exists() else None
    if aside is not None:
        data.rename(aside)
    shutil.copytree(source, data, ignore=shutil.ignore_patterns(SUMMARY))
    return aside


def check(source: Path) -> None:
    """Refuse a folder that is not a whole, intact backup, saying what is wrong."""
    if not (source / SUMMARY).is_file() or not (source / DATABASE).is_file():
        raise UserError(f"{source} is not an edge-app backup (no {SUMMARY} or {DATABASE})")
    db = sqlite3.connect(f"file:{source / DATABASE}?mode=ro", uri=True)
    try:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
        digests = [r[0] for r in db.execute(FILES_IN_USE)] if problems == ["ok"] else []
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    finally:
        db.close()
    if problems != ["ok"]:
        raise UserError(f"the backup's database is damaged ({'; '.join(problems[:3])})")
    for digest in digests:
        path = source / "files" / digest[:2] / digest
        if not path.is_file():
            raise UserError(f"the backup is incomplete: the stored file {digest} is missing")
        if sha256_file(path) != digest:
            raise UserError(f"the backup is damaged: the stored file {digest} does not match its sha256")


def _copy_checked(src: Path, dst: Path, digest: str) -> int:
    if not src.is_file():
        raise UserError(f"the data directory is incomplete: the stored file {digest} is missing")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    if sha256_file(dst) != digest:
        raise UserError(f"the stored file {digest} does not match its sha256: the data directory is damaged")
    return dst.stat().st_size


def _not_served(data: Path) -> None:
    """Refuse while a service holds the data directory (its locks): it would go on writing into the old one."""
    for name in SERVICE_LOCKS:
        lock = data / name
        if not lock.exists():
            continue
        with lock.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UserError(
                    f"edge-app is serving from {data}: stop the service first (systemctl stop edge-app.target)"
                ) from None
