"""File helpers shared by the store, the engine cache and the TOML readers: durable writes, plain-words TOML."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

INCOMING_PREFIX = ".incoming-"


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` so that a power cut leaves the old file or the whole new one; `mode`: its
    permissions (default: readable by its owner only)."""
    tmp, _, _ = spool(path.parent, io.BytesIO(data), prefix=path.name[:16])
    if mode is not None:
        tmp.chmod(mode)
    commit(tmp, path)


def spool(folder: Path, stream: IO[bytes], prefix: str = "") -> tuple[Path, str, int]:
    """Copy `stream` into a fsynced temporary file in `folder` (named `.incoming-*`, so that one a crash left
    behind can be told apart); return its path, the sha256 of its bytes and their number."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{INCOMING_PREFIX}{prefix}-")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as fh:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), digest.hexdigest(), size


def commit(tmp: Path, path: Path) -> None:
    """Rename a spooled file into place and fsync the folder, so that the name survives a power cut too."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def toml_value(text: str) -> Any:
    """`text` read as one TOML value (`9000`, `true`, `["a", "b"]`), or as it is where it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
