"""Failed logins, kept in the database so that a restart forgets none, and the limits they set.

Two limits over a sliding window: `attempts` failures on one name from one address, and four times that from one
address whatever the names (password spraying). Then each account's delay: after its n-th failure in a row (any
address) the next attempt on it waits `first_delay_s` x 2^(n-1), at most DELAY_CAP_S. Not a lock-out: once the
delay has passed the right password logs in, so a colleague guessing cannot keep anyone out for longer than the
cap at a time; while it runs the password is not checked. Each attempt let through counts as a failure from the
start (in the transaction that let it through), so guesses sent at once cannot all pass one opening of the delay;
a right password then clears the account's failures.
(Flask-Limiter counts requests in memory or in Redis; what is limited here is failures, which only the login
knows, and they must outlive a restart of this one process.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from edge_app.store.db import Store

ADDRESS_FACTOR = 4
DELAY_CAP_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a login is refused before its password is checked, and (the account's delay) for how long."""

    reason: Literal["address", "account"]
    wait_s: int = 0  # whole seconds, rounded up; 0 where the address's failures must age out of the window


def account_delay(failures: int, first_delay_s: float) -> float:
    """The wait after an account's `failures`-th failure in a row: `first_delay_s`, doubling, at most DELAY_CAP_S."""
    if failures < 1:
        return 0.0
    return min(DELAY_CAP_S, first_delay_s * float(2 ** min(failures - 1, 32)))


class LoginLimits:
    def __init__(self, store: Store, attempts: int, window_s: float, first_delay_s: float) -> None:
        self.store, self.attempts, self.window_s, self.first_delay_s = store, attempts, window_s, first_delay_s

    def attempt(self, name: str, address: str) -> Refusal | None:
        """Why a login of `name` from `address` is refused now; or None: its password may be checked, and it
        counts as a failure until `succeeded`. Failures older than the window are forgotten here (the table
        holds no more than the window's)."""
        now = time.time()
        since = now - self.window_s
        with self.store.transaction() as db:
            (pair,) = db.execute(
                "SELECT count(*) FROM login_failures WHERE address = ? AND name = ? AND at > ?", (address, name, since)
            ).fetchone()
            (spray,) = db.execute(
                "SELECT count(*) FROM login_failures WHERE address = ? AND at > ?", (address, since)
            ).fetchone()
            if pair >= self.attempts or spray >= ADDRESS_FACTOR * self.attempts:
                return Refusal("address")
            failures, last = db.execute(
                "SELECT count(*), max(at) FROM login_failures WHERE name = ? AND at > ?", (name, since)
            ).fetchone()
            delay = account_delay(int(failures), self.first_delay_s)
            wait = min(float(last or 0) + delay - now, delay)  # min: a clock set back does not lengthen it
            if wait > 0:
                return Refusal("account", math.ceil(wait))
            db.execute("INSERT INTO login_failures (at, address, name) VALUES (?, ?, ?)", (now, address, name))
            db.execute("DELETE FROM login_failures WHERE at <= ?", (since,))
        return None

    def succeeded(self, name: str) -> None:
        """The right password: the account's failures are forgotten (its delay starts afresh)."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE name = ?", (name,))
