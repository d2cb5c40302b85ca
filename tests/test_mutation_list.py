"""The mutation run's list of equivalent mutants: each entry well formed and with its reason. Whether each entry's
line still exists is the mutation tool's report (`python tests/mutation/run.py --check-list`), not this suite's: a
module moved or a line edited must not fail the ordinary tests."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mutation"))

import run

pytestmark = pytest.mark.unit


def test_every_listed_mutant_says_why() -> None:
    assert all(len(reason) >= 10 for reason in run.EQUIVALENT.values())


def test_every_listed_mutant_is_a_line_and_a_cosmic_ray_operator() -> None:
    for line, operator in run.EQUIVALENT:
        assert line == line.strip() and line, line
        assert operator is None or re.fullmatch(r"core/[A-Za-z_]+", operator), operator


def test_an_entry_is_stale_only_where_its_line_is_on_no_mutated_module() -> None:
    kept = next(iter(run.EQUIVALENT))[0]
    source = f"def f() -> None:\n    {kept}\n"
    assert run.stale([source]) == [key for key in run.EQUIVALENT if key[0] != kept]
    assert run.stale([]) == list(run.EQUIVALENT)
