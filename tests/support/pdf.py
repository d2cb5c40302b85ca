"""A PDF read back as text, the way a person reads it."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def pdf_lines(pdf: bytes) -> list[str]:
    """The PDF's lines as poppler's `pdftotext -layout` reads them, runs of spaces as one (skips where it is absent)."""
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler's pdftotext is not installed (apt-get install poppler-utils)")
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True).stdout
    return [" ".join(line.split()) for line in out.decode().splitlines() if line.strip()]
