"""Every CSV the product writes (an export's `results.csv`, the audit log's download), each text cell made inert.

A spreadsheet runs a cell as a formula when it starts with = + - @, after any blanks (OWASP adds TAB and CR: here
they separate, below). Which character separates cells depends on the spreadsheet: a French one splits `x;=1+1;` on
';' and runs `=1+1`, whatever quoting the writer chose for ','. So an apostrophe goes before any piece that would
start a formula, at the start of the cell and after each separator (, ; TAB, CR, LF), blanks and quotes before the
formula counted in. Written here: defusedcsv, the library for this, looks only at the first character, which is the
hole that was found.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

_FORMULA = re.compile(r"""(?:^|(?<=[,;\t\r\n]))(?=[\s"]*[=+\-@])""")


def inert(value: object) -> object:
    """A text cell that no spreadsheet runs as a formula, whatever its separator; any other value as it is."""
    return _FORMULA.sub("'", value) if isinstance(value, str) else value


def write(out: TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """`rows` as CSV under a header line of `fields`, each cell `inert`."""
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: inert(v) for k, v in row.items()} for row in rows)
