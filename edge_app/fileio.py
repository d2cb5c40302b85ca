"""File helpers shared by the store, the engine cache and the TOML readers: durable writes, plain-words TOML."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a power cut leaves the old file or the whole new one: a temporary file in
    the same folder, fsynced, renamed into place, and the folder fsynced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".incoming-{path.name[:16]}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_toml(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """Parse a TOML file; raise `error` saying, in plain words, why `what` (e.g. "spec x.toml") cannot be used."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {exc}") from None
    return data
