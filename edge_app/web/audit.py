"""Reads of patient data and refused logins in the audit log, rate-limited so that a flood cannot fill the disk.

A view that answers with patient data is marked `@audit.reads(action)`; one hook after each request writes its
row when the answer is a success: who (the user, or `token:<name>`), what (the action, the study UID, the
endpoint with its ids and the options that change what is shown), from where (the address). Rows go through
`AuditLimiter` (below); the other actions (logins, reviews, changes) are written as they happen, unlimited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request

from edge_app.config import Settings
from edge_app.store import Store
from edge_app.web import security, services

F = TypeVar("F", bound=Callable[..., Any])
SHOWN_ARGS = ("label", "heatmap", "limit")  # query arguments that change what is read: recorded; others are not
_KEY = "audit_limiter"


def reads(action: str) -> Callable[[F], F]:
    """Mark a view whose successful answer holds patient data: each one is audited as `action`."""

    def mark(view: F) -> F:
        view.audited = action  # type: ignore[attr-defined]
        return view

    return mark


@dataclass
class _Bucket:
    start: float
    written: int = 0
    suppressed: int = 0


class AuditLimiter:
    """Writes audit rows, at most one for the same (who, action, subject, detail) within `window_s`, and at most
    `rows` rows per bucket (a person for reads, an address for refused logins) in a window that starts with its
    first row. The first row over the limit writes a notice; the rest are counted, and the count written when
    the bucket's next row comes after the window. Memory holds only the rows of the last window."""

    def __init__(self, store: Store, window_s: float, rows: int) -> None:
        self.store, self.window_s, self.rows = store, window_s, rows
        self._seen: dict[tuple[str, str, str, str], float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()

    def record(self, bucket: str, actor: str, action: str, subject: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:  # held while writing: the rows of one bucket are written in the order they come
            self._prune(now)
            key = (actor, action, subject, detail)
            if now - self._seen.get(key, -self.window_s) < self.window_s:
                return
            held = self._buckets.get(bucket)
            if held is None or now - held.start >= self.window_s:
                if held is not None and held.suppressed:
                    self.store.audit(bucket, "audit.suppressed", "", f"{held.suppressed} not written")
                held = self._buckets[bucket] = _Bucket(now)
            if held.written >= self.rows:
                held.suppressed += 1
                if held.suppressed == 1:
                    self.store.audit(
                        bucket,
                        "audit.suppressed",
                        "",
                        f"more than {self.rows} rows in {self.window_s:g} s: the rest of this window are counted, "
                        "not written",
                    )
                return
            held.written += 1
            self._seen[key] = now
            self.store.audit(actor, action, subject, detail)

    def _prune(self, now: float) -> None:
        if now - self._pruned < self.window_s:
            return
        self._pruned = now
        self._seen = {k: t for k, t in self._seen.items() if now - t < self.window_s}
        self._buckets = {k: b for k, b in self._buckets.items() if b.suppressed or now - b.start < self.window_s}


def limiter() -> AuditLimiter:
    found: AuditLimiter = current_app.extensions[_KEY]
    return found


def refused_login(name: str, address: str, why: str) -> None:
    """A login refused before its password was checked, counted against its address."""
    limiter().record(f"login from {address}", name, "login.refused", "", f"from {address}: {why}")


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[_KEY] = AuditLimiter(
        services.get_from(app).store, settings.server.audit_window_s, settings.server.audit_rows_per_window
    )

    @app.after_request
    def _audit_read(response: Response) -> Response:
        view = app.view_functions.get(request.endpoint or "")
        action = getattr(view, "audited", None)
        principal = security.current()
        if action is None or principal is None or response.status_code >= 400:
            return response
        args = dict(request.view_args or {})
        subject = str(args.pop("uid", ""))
        if not subject and "result_id" in args:
            subject = services.get().store.study_of_result(int(args["result_id"])) or ""
        shown = [f"{k}={v}" for k, v in args.items()]
        shown += [f"{k}={request.args[k][:64]}" for k in SHOWN_ARGS if k in request.args]
        detail = " ".join([str(request.endpoint), *shown, f"from {request.remote_addr or ''}"])
        limiter().record(principal.name, principal.name, action, subject, detail)
        return response
