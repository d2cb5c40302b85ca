"""The mutation run's list of equivalent mutants names lines that exist: a line changed since is listed no more."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

import run  # noqa: E402

pytestmark = pytest.mark.unit


def test_every_listed_mutant_is_on_a_line_of_a_mutated_module() -> None:
    lines = {line.strip() for module in run.MODULES for line in (ROOT / module).read_text().splitlines()}
    stale = [line for line, _ in run.EQUIVALENT if line not in lines]
    assert stale == []


def test_every_listed_mutant_says_why() -> None:
    assert all(len(reason) >= 10 for reason in run.EQUIVALENT.values())
