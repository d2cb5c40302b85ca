"""The one way a bundle is written, by `edge-convert build` and by the reference-model training alike: in a
sibling staging folder, checked (`load_bundle`), then renamed into place, so that a crash or a refusal leaves
either no bundle or the previous one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converters.errors import ConversionError
from edge_app.bundles.bundle import load_bundle, sha256_file

MANIFEST = "manifest.json"


def listed_files(staging: Path) -> dict[str, str]:
    """Every file of the staging folder but the manifest, by name, with its sha256: the manifest's `files`."""
    return {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST}


def check_target(out: Path, replace: bool = False) -> None:
    """A bundle may be written at `out`: a new or empty folder (or, with `replace`, a folder to swap out)."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} is a file; give a new folder for the bundle")
    if out.exists() and any(out.iterdir()) and not (replace and (out / MANIFEST).is_file()):
        what = "is not a bundle" if replace else "exists and is not empty"
        raise ConversionError(f"{out} {what}; choose a new bundle folder")


@contextlib.contextmanager
def staged_bundle(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; once the block has written the files and the manifest, the
    bundle is loaded (hashes checked) and renamed to `out`. `out` must be new or empty, unless `replace`: then an
    existing bundle there is swapped out for the new one."""
    check_target(out, replace)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    old = None
    try:
        yield staging
        load_bundle(staging)  # what is handed over must load
        if out.exists():
            old = out.parent / f".{out.name}-previous"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
