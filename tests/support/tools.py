"""The commands the tests run: the project's own from the running interpreter's environment (never PATH, so the
suite passes with the virtual environment anywhere, activated or not), dcmtk's as dcmtk's."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _ours(script: str, module: str) -> list[str]:
    """The console script installed beside this interpreter, else the module run by it (a source checkout)."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


EDGE_APP = _ours("edge-app", "edge_app.cli.main")
EDGE_CONVERT = _ours("edge-convert", "converters.cli")


@functools.cache
def _dcmtk(name: str) -> str | None:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(name, path=folder) if folder else None
        if found is None:
            continue
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
        if "dcmtk" in version.stdout.lower():
            return found
    return None


def dcmtk(name: str) -> str:
    """The path of dcmtk's tool `name` (storescu, echoscu, storescp, dsrdump...) on PATH, passing over other
    programs of that name (pynetdicom installs its own storescu, echoscu and storescp beside the interpreter);
    skips the test where dcmtk is not installed."""
    found = _dcmtk(name)
    if found is None:
        pytest.skip(f"dcmtk's {name} is not installed (apt-get install dcmtk)")
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """The `Error -` lines dicom3tools' dciodvfy writes of a DICOM file (its IOD checked); skips the test where
    dicom3tools is not installed (apt-get install dicom3tools)."""
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.skip("dicom3tools' dciodvfy is not installed (apt-get install dicom3tools)")
    checked = subprocess.run([found, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in checked.stderr.splitlines() if line.startswith("Error -")]
