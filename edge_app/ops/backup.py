"""`edge-app backup` and `edge-app restore`: the database and the file store, copied so that a technician can carry
them away on a USB stick and bring a box back.

A backup is a folder `edge-app-backup-<time>/` holding a consistent copy of the database (SQLite's online backup:
the service may keep running), every stored file a row of that copy refers to (checked against its sha256 as it is
copied), the imported bundles, the TLS certificate and the session key (it holds secrets: keep the stick safe).
A restore checks the whole backup first (its database, every file's sha256, its schema no newer than this
edge-app's, every kept bundle's hashes and, where required, signature), then moves the current data directory aside
(never deletes it) and puts the backup in its place; the service must be stopped. It says what the backup brings
(studies, accounts, administrators, API tokens, bundles): a backup is trusted as a whole, its accounts and session
key included, so the technician must see an administrator they do not know before the box serves again.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge_app.bundles.bundle import load_as_configured, sha256_file
from edge_app.config import Settings
from edge_app.errors import BundleError, UserError
from edge_app.store.db import FILES_IN_USE, SERVICE_LOCKS
from edge_app.store.schema import VERSION
from edge_app.system.clock import utc_now

DATABASE = "edge-app.sqlite3"
SUMMARY = "backup.json"
_KEPT = ("bundles", "tls", "secret_key")  # besides the database and files/
_SECRETS = {"secret_key": "the session key (sessions signed with it are valid)", "tls": "the TLS certificate and key"}


def _stamp() -> str:
    return utc_now().strftime("%Y%m%dT%H%M%SZ")


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


@dataclass(frozen=True)
class Contents:
    """What a backup brings into the box, for the technician who restores it to see."""

    studies: int
    users: int
    admins: list[str]  # administrators whose account is not disabled
    tokens: list[str]  # API tokens not revoked, each "name (roles)"
    bundles: list[str]  # kept model bundles, each "name version"
    keys: list[str]  # the secrets of the box it was made on that it holds

    def describe(self, known: set[str] | None) -> str:
        """One paragraph; `known`: the account names of the data it replaces (None: there was none), so that an
        administrator new to this box is marked."""
        admins = [a if known is None or a.lower() in known else f"{a} (new to this box)" for a in self.admins]
        lines = [
            f"the backup brings {self.studies} studies and {self.users} accounts",
            f"administrators: {', '.join(admins) or 'none'}",
            f"API tokens: {', '.join(self.tokens) or 'none'}",
            f"model bundles: {', '.join(self.bundles) or 'none'}",
            f"from the box it was made on: {', '.join(self.keys) or 'no key'}",
        ]
        return "\n".join(lines)


def restore(settings: Settings, source: Path) -> tuple[Path | None, str]:
    """Check the backup in `source`, move the current data directory aside and put the backup in its place;
    return where the old data went (None where there was none) and what the backup brought, in words."""
    contents = check(source, settings)
    data = settings.storage.data_dir
    _not_served(data)
    known = _account_names(data / DATABASE) if (data / DATABASE).is_file() else None
    aside = data.with_name(f"{data.name}.before-restore-{_stamp()}") if data.exists() else None
    if aside is not None:
        data.rename(aside)
    shutil.copytree(source, data, ignore=shutil.ignore_patterns(SUMMARY))
    return aside, contents.describe(known)


def check(source: Path, settings: Settings) -> Contents:
    """Refuse a folder that is not a whole, intact backup this edge-app can serve, saying what is wrong; return
    what it holds."""
    if not (source / SUMMARY).is_file() or not (source / DATABASE).is_file():
        raise UserError(f"{source} is not an edge-app backup (no {SUMMARY} or {DATABASE})")
    db = sqlite3.connect(f"file:{source / DATABASE}?mode=ro", uri=True)
    try:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
        if problems == ["ok"]:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > VERSION:  # served, it would be refused at start; never guess a newer schema
                raise UserError(
                    f"the backup's database has schema version {version}, written by a newer edge-app (this one "
                    f"knows up to {VERSION}): restore it with that edge-app"
                )
            digests = [r[0] for r in db.execute(FILES_IN_USE)]
            contents = _contents(db, source, settings)
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
    return contents


def _contents(db: sqlite3.Connection, source: Path, settings: Settings) -> Contents:
    """What the backup's database and bundles hold; each kept bundle verified as the service will load it (its
    hashes, and its signature where model.require_signature is set)."""
    bundles = []
    for folder in sorted((source / "bundles").iterdir()) if (source / "bundles").is_dir() else []:
        try:
            bundle = load_as_configured(folder, settings.model)
        except BundleError as exc:
            raise UserError(f"the backup's model bundle {folder.name} is refused: {exc}") from None
        if bundle.sha256 != folder.name:
            raise UserError(f"the backup's model bundle {folder.name} is refused: its manifest is {bundle.sha256}")
        bundles.append(f"{bundle.manifest.name} {bundle.manifest.version}")
    users = db.execute("SELECT name, roles, disabled_at FROM users ORDER BY name").fetchall()
    tokens = db.execute("SELECT name, roles FROM tokens WHERE revoked_at IS NULL ORDER BY name").fetchall()
    return Contents(
        studies=int(db.execute("SELECT count(*) FROM studies").fetchone()[0]),
        users=len(users),
        admins=[name for name, roles, disabled in users if "admin" in roles.split(",") and disabled is None],
        tokens=[f"{name} ({roles})" for name, roles in tokens],
        bundles=bundles,
        keys=[what for name, what in _SECRETS.items() if (source / name).exists()],
    )


def _account_names(database: Path) -> set[str]:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {str(r[0]).lower() for r in db.execute("SELECT name FROM users")}
    except sqlite3.DatabaseError:  # a damaged database is what a restore is for: nobody is known then
        return set()
    finally:
        db.close()


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
