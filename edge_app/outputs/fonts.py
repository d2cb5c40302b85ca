"""The fonts of the printable report: Unicode TrueType fonts from the system's font packages, registered once with
reportlab and embedded (as subsets) in each PDF. Nothing is downloaded and no font file ships with the project.

DejaVu Sans comes first (Debian's `fonts-dejavu-core`, which the offline install kit installs: Latin with its
African letters, Greek, Cyrillic, Arabic), then Noto Sans and Noto Sans Arabic (`fonts-noto-core`) where present;
each character is drawn in the first font that has it. Only where none of them is found, Helvetica, built into every
PDF reader, which covers Latin-1. A character no font has is never drawn as '?' or as a blank box: `Fonts.runs`
writes it as its code point (<U+13000>) and returns it, so that the page can say the text is not printed in full.
Right-to-left text (Arabic, Hebrew) within a line is put in visual order, its letters unjoined (reportlab shapes
only with uharfbuzz, which the appliance does not have): read right to left, the letters come in their order."""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype")
# (regular, bold) under FONT_DIR, in the order a character looks for its font.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf"),
    ("noto/NotoSans-Regular.ttf", "noto/NotoSans-Bold.ttf"),
    ("noto/NotoSansArabic-Regular.ttf", "noto/NotoSansArabic-Bold.ttf"),
)
LATIN1 = frozenset([*range(0x20, 0x7F), *range(0xA0, 0x100)])  # what Helvetica prints (its WinAnsi encoding)


@dataclass(frozen=True)
class Font:
    name: str  # as registered with reportlab
    chars: frozenset[int]  # the code points it has a glyph for


@dataclass(frozen=True)
class Fonts:
    regular: tuple[Font, ...]
    bold: tuple[Font, ...]
    truetype: bool  # False: Helvetica, no TrueType font was found

    def runs(self, text: str, bold: bool = False) -> tuple[list[tuple[str, str]], str]:
        """`text` as (font name, text) runs to draw one after the other, and the characters no font has (each drawn
        as its code point, <U+XXXX>, in the first font)."""
        order = self.bold + self.regular if bold else self.regular + self.bold
        runs: list[tuple[str, str]] = []
        missing: list[str] = []
        for char in visual(text):
            font = next((f for f in order if ord(char) in f.chars), None)
            shown = char
            if font is None:
                missing.append(char)
                font, shown = order[0], f"<U+{ord(char):04X}>"
            if runs and runs[-1][0] == font.name:
                runs[-1] = (font.name, runs[-1][1] + shown)
            else:
                runs.append((font.name, shown))
        return runs, "".join(missing)

    def missing(self, text: str) -> str:
        """The characters of `text` that no font has."""
        return self.runs(text)[1]


def draw(
    pdf: Any, typeface: Fonts, x: float, y: float, text: str, size: float, bold: bool, color: tuple[float, float, float]
) -> str:
    """One line of text on the reportlab canvas `pdf`, each character in the first font that has it; return the
    characters no font has."""
    runs, missing = typeface.runs(text, bold)
    pdf.setFillColorRGB(*color)
    out = pdf.beginText(x, y)
    for name, run in runs:
        out.setFont(name, size)
        out.textOut(run)
    pdf.drawText(out)
    return missing


def visual(text: str) -> str:
    """A left-to-right line in the order it is drawn: each stretch from a right-to-left letter to the last one before
    a left-to-right letter is reversed, its numbers kept in their order and its brackets mirrored."""
    kinds = [unicodedata.bidirectional(c) for c in text]
    out, i = [], 0
    while i < len(text):
        if kinds[i] not in ("R", "AL"):
            out.append(text[i])
            i += 1
            continue
        end = i  # the last right-to-left letter before a left-to-right one (or the end)
        for j in range(i, len(text)):
            if kinds[j] == "L":
                break
            if kinds[j] in ("R", "AL"):
                end = j
        pieces: list[str] = []  # the stretch's characters and numbers, each number as one piece
        for j in range(i, end + 1):
            if kinds[j] in ("EN", "AN") and j > i and kinds[j - 1] in ("EN", "AN"):
                pieces[-1] += text[j]
            else:
                pieces.append(_MIRRORED.get(text[j], text[j]))
        out += reversed(pieces)
        i = end + 1
    return "".join(out)


_MIRRORED = dict(zip("()[]{}<>", ")(][}{><", strict=True))

HELVETICA = Fonts((Font("Helvetica", LATIN1),), (Font("Helvetica-Bold", LATIN1),), truetype=False)

_lock = threading.Lock()
_found: dict[tuple[Path, tuple[tuple[str, str], ...]], Fonts] = {}
_loaded: dict[Path, Font | None] = {}  # each file read and registered once, whichever search names it


def fonts(font_dir: Path = FONT_DIR, candidates: Sequence[tuple[str, str]] = CANDIDATES) -> Fonts:
    """The candidates (regular, bold; relative to `font_dir`) that are there, registered with reportlab; found once.
    A missing bold file: bold text in the regular one. None there at all: Helvetica."""
    key = (font_dir, tuple(candidates))
    with _lock:
        if key not in _found:
            regular: list[Font] = []
            bold: list[Font] = []
            for regular_file, bold_file in key[1]:
                face = _load(font_dir / regular_file)
                if face is not None:
                    regular.append(face)
                    bold.append(_load(font_dir / bold_file) or face)
            _found[key] = Fonts(tuple(regular), tuple(bold), truetype=True) if regular else HELVETICA
            if not regular:
                log.warning("no TrueType font in %s: the report prints Latin-1 only (fonts-dejavu-core)", font_dir)
        return _found[key]


def _load(path: Path) -> Font | None:
    if path not in _loaded:
        _loaded[path] = _register(path) if path.is_file() else None
    return _loaded[path]


def _register(path: Path) -> Font | None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    taken = {f.name for f in _loaded.values() if f is not None}
    name = path.stem if path.stem not in taken else f"{path.stem}-{len(_loaded)}"
    try:
        font = TTFont(name, str(path))
    except Exception as exc:  # a damaged or unsupported file (reportlab's TTFError, OSError, struct.error, ...)
        log.warning("font %s not usable: %s", path, exc)
        return None
    pdfmetrics.registerFont(font)
    return Font(name, frozenset(code for code, glyph in font.face.charToGlyph.items() if glyph))
