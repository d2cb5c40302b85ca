"""The one CSV-cell neutraliser behind every CSV the product writes: no cell a formula in any separator, and the
ordinary cells (times, roles, numbers) left as they are. Each CSV's own test goes through its command or route."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_app.outputs import csv_cells

pytestmark = pytest.mark.unit


def _written(cell: object) -> str:
    out = io.StringIO()
    csv_cells.write(out, ["n", "cell", "after"], [{"n": 1, "cell": cell, "after": "x"}])
    return out.getvalue()


@given(st.text(alphabet="=+-@\t\r\n\v\xa0,; \"'x1", max_size=12))
def test_no_text_becomes_a_formula(formulas: Callable[[str], list[str]], text: str) -> None:
    assert formulas(_written(text)) == []


def test_ordinary_cells_are_kept() -> None:
    for cell in (7, 0.25, True, None, "2026-12-03T01:05:47+00:00", "roles=admin,clinician", "from 10.0.0.7", "a - b"):
        assert csv_cells.inert(cell) == cell
    assert csv_cells.inert(' "=1') == "' \"=1" and csv_cells.inert("a\n@b") == "a\n'@b"
