"""The people who use the appliance and the API tokens of integrations: roles, argon2 password hashes, tokens
kept only as their sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edge_app.errors import NotFound, UserError
from edge_app.store.db import Store
from edge_app.system.clock import utc_text

ROLES = ("clinician", "technician", "admin")
LANGUAGES = ("en", "fr")
MIN_PASSWORD_CHARS = 10
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}"  # user and token names
_NAME = re.compile(NAME_PATTERN)
TOKEN_PREFIX = "eat_"  # edge-app token: recognisable in a configuration file or a leak report


@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: frozenset[str]
    language: str
    epoch: int  # raised when the password, the roles or the account's state change: older sessions end
    disabled: bool = False


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    roles: frozenset[str]
    created_at: str
    revoked: bool = False


def _now() -> str:
    return utc_text("seconds")


def parse_roles(text: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Roles from "clinician,admin" or a list; refuse an unknown or empty one in plain words."""
    items = text.split(",") if isinstance(text, str) else list(text)
    roles = frozenset(r.strip().lower() for r in items if r.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        raise UserError(f"roles must be some of {', '.join(ROLES)} (got {', '.join(unknown) or 'none'})")
    return roles


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


def _token_digest(secret: str) -> str:
    # A token is 32 random bytes: a plain sha256 cannot be reversed, no slow hash is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """Users and tokens in the store's database."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(16))  # checked for unknown names: same time as a real one

    # -- users -----------------------------------------------------------------------------------------------

    # Every change below is audited here, by whoever made it (`actor`: a user's name, "cli:<login>", "system"), so
    # the web and the command line write the same lines.

    def add_user(
        self,
        name: str,
        roles: frozenset[str],
        password: str,
        language: str = "en",
        *,
        actor: str = "system",
        how: str = "",
    ) -> User:
        """A new account; `how` is said in the audit line (the first-run page)."""
        if not _NAME.fullmatch(name):
            raise UserError(
                f"{name!r} is not a user name: 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a "
                "letter or digit"
            )
        check_password(password)
        if language not in LANGUAGES:
            raise UserError(f"language must be one of {', '.join(LANGUAGES)}")
        try:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT INTO users (name, roles, password_hash, language, created_at) VALUES (?, ?, ?, ?, ?)",
                    (name, ",".join(sorted(parse_roles(list(roles)))), self.hasher.hash(password), language, _now()),
                )
        except sqlite3.IntegrityError:
            raise UserError(f"a user named {name!r} exists already") from None
        user = self.user(name)
        self.store.audit(
            actor, "user.add", name, f"roles={','.join(sorted(user.roles))}" + (f" ({how})" if how else "")
        )
        return user

    def user(self, name: str) -> User:
        rows = self.store.query("SELECT * FROM users WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no user {name!r}")
        return _user(rows[0])

    def user_by_id(self, user_id: int) -> User | None:
        rows = self.store.query("SELECT * FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    def users(self) -> list[User]:
        return [_user(r) for r in self.store.query("SELECT * FROM users ORDER BY name")]

    def active_count(self) -> int:
        return int(self.store.query("SELECT count(*) FROM users WHERE disabled_at IS NULL")[0][0])

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, where the name is of an active account and the password is its own; else None."""
        rows = self.store.query("SELECT * FROM users WHERE name = ?", (name,))
        stored = rows[0]["password_hash"] if rows else self._dummy
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows or rows[0]["disabled_at"] is not None:
            return None
        if self.hasher.check_needs_rehash(stored):  # the hasher's parameters were raised since
            self._update(name, "password_hash = ?", (self.hasher.hash(password),), new_epoch=False)
        return _user(rows[0])

    def set_password(self, name: str, password: str, *, actor: str = "system") -> None:
        check_password(password)
        self._update(name, "password_hash = ?", (self.hasher.hash(password),))
        self.store.audit(actor, "user.passwd", name)

    def set_roles(self, name: str, roles: frozenset[str], *, actor: str = "system") -> None:
        joined = ",".join(sorted(parse_roles(list(roles))))
        self._update(name, "roles = ?", (joined,))
        self.store.audit(actor, "user.roles", name, f"roles={joined}")

    def set_language(self, name: str, language: str) -> None:
        if language not in LANGUAGES:
            raise UserError(f"language must be one of {', '.join(LANGUAGES)}")
        self._update(name, "language = ?", (language,), new_epoch=False)

    def set_disabled(self, name: str, disabled: bool, *, actor: str = "system") -> None:
        self._update(name, "disabled_at = ?", (_now() if disabled else None,))
        self.store.audit(actor, "user.disable" if disabled else "user.enable", name)

    def end_sessions(self, name: str) -> None:
        """Every session of the user ends (logging out of one tablet logs out of all: a copied cookie dies)."""
        with self.store.transaction() as db:
            db.execute("UPDATE users SET epoch = epoch + 1 WHERE name = ?", (name,))

    def _update(self, name: str, assignment: str, values: tuple[object, ...], *, new_epoch: bool = True) -> None:
        epoch = ", epoch = epoch + 1" if new_epoch else ""
        with self.store.transaction() as db:
            cur = db.execute(f"UPDATE users SET {assignment}{epoch} WHERE name = ?", (*values, name))
        if cur.rowcount == 0:
            raise NotFound(f"no user {name!r}")

    # -- tokens ----------------------------------------------------------------------------------------------

    def create_token(self, name: str, roles: frozenset[str], *, actor: str = "system") -> str:
        """A new token's secret: shown once, only its sha256 is kept."""
        if not _NAME.fullmatch(name):
            raise UserError(f"{name!r} is not a token name: 1 to 64 letters, digits, '.', '_', '@' or '-'")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT INTO tokens (name, roles, digest, created_at) VALUES (?, ?, ?, ?)",
                    (name, ",".join(sorted(parse_roles(list(roles)))), _token_digest(secret), _now()),
                )
        except sqlite3.IntegrityError:
            raise UserError(f"a token named {name!r} exists or existed (a name is never reused)") from None
        self.store.audit(actor, "token.create", name, f"roles={','.join(sorted(roles))}")
        return secret

    def token(self, secret: str) -> Token | None:
        """The live token with this secret, or None."""
        rows = self.store.query(
            "SELECT * FROM tokens WHERE digest = ? AND revoked_at IS NULL", (_token_digest(secret),)
        )
        return _token(rows[0]) if rows else None

    def tokens(self) -> list[Token]:
        return [_token(r) for r in self.store.query("SELECT * FROM tokens ORDER BY name")]

    def revoke_token(self, name: str, *, actor: str = "system") -> None:
        with self.store.transaction() as db:
            cur = db.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (_now(), name))
        if cur.rowcount == 0:
            raise NotFound(f"no live token {name!r}")
        self.store.audit(actor, "token.revoke", name)


def _user(row: sqlite3.Row) -> User:
    return User(
        id=int(row["id"]),
        name=str(row["name"]),
        roles=frozenset(str(row["roles"]).split(",")),
        language=str(row["language"]),
        epoch=int(row["epoch"]),
        disabled=row["disabled_at"] is not None,
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        id=int(row["id"]),
        name=str(row["name"]),
        roles=frozenset(str(row["roles"]).split(",")),
        created_at=str(row["created_at"]),
        revoked=row["revoked_at"] is not None,
    )
