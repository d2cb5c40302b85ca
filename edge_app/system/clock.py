"""The one clock for times that are recorded: UTC, as ISO 8601 text that sorts as it reads."""

from __future__ import annotations

import datetime as dt
from typing import Literal


def utc_now() -> dt.datetime:
    """Now, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def utc_text(timespec: Literal["seconds", "milliseconds"] = "milliseconds", ago_s: float = 0.0) -> str:
    """Now (or `ago_s` seconds before), in UTC, as ISO 8601 text to `timespec`."""
    return (utc_now() - dt.timedelta(seconds=ago_s)).isoformat(timespec=timespec)
