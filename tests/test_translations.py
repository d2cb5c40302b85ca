"""Every visible string goes through Flask-Babel, and French is complete: the catalogue is up to date with the
sources, every message is translated, and the compiled catalogue is the one the sources give."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "edge_app" / "web" / "translations"
TEMPLATES = ROOT / "edge_app" / "web" / "templates"
# Words that are the same in every language the tablet speaks (names of languages, units, formats).
UNTRANSLATED = {"English", "Français", "SHA-256", "UTC"}


def _ids(path: Path) -> set[str]:
    with path.open("rb") as fh:
        return {str(m.id) for m in read_po(fh) if m.id}


def test_the_catalogue_holds_every_message_of_the_sources(tmp_path: Path) -> None:
    fresh = tmp_path / "messages.pot"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "babel.messages.frontend",
            "extract",
            "-F",
            str(TRANSLATIONS / "babel.cfg"),
            "-k",
            "_l",
            "--no-location",
            "-o",
            str(fresh),
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert _ids(fresh) == _ids(TRANSLATIONS / "messages.pot"), "run the pybabel extract line in babel.cfg"


def test_french_translates_every_message_with_the_same_placeholders() -> None:
    with (TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    french = {str(m.id): m for m in catalog if m.id}
    assert set(french) == _ids(TRANSLATIONS / "messages.pot")
    for msgid, message in french.items():
        assert message.string and not message.fuzzy, f"untranslated: {msgid!r}"
        assert re.findall(r"%\(\w+\)\w", msgid) == re.findall(r"%\(\w+\)\w", str(message.string)), msgid


def _text(value: object) -> str:
    """A message's text; a plural one's forms (a tuple read from the .po, a list from the .mo) joined."""
    return " | ".join(value) if isinstance(value, (list, tuple)) else str(value)


def test_the_compiled_catalogue_is_the_translations() -> None:
    with (TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        source = {_text(m.id): _text(m.string) for m in read_po(fh) if m.id}
    with (TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.mo").open("rb") as fh:
        compiled = {_text(m.id): _text(m.string) for m in read_mo(fh) if m.id}
    assert compiled == source, "run: pybabel compile -d edge_app/web/translations"


def _text(value: object) -> str:
    """A message's text; a plural one's forms (a tuple read from the .po file, a list from the .mo) alike."""
    return str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


def test_no_template_shows_text_that_is_not_translated() -> None:
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        text = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", text, flags=re.S)
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S)
        text = re.sub(r"<[^>]*>", " ", text)
        words = {w for w in re.findall(r"[^\W\d_][\w'-]*", text)} - UNTRANSLATED
        assert not words, f"{template.name}: text outside _(): {sorted(words)}"


def _catalogue() -> dict[str, list[str]]:
    """The tablet's messages: each English form (singular, plural) to the French forms."""
    with (TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        messages = [m for m in read_po(fh) if m.id]
    forms = {}
    for m in messages:
        french = [str(t) for t in (m.string if isinstance(m.string, tuple) else [m.string])]
        forms |= {str(form): french for form in (m.id if isinstance(m.id, tuple) else [m.id])}
    return forms


def _quoted(guide: str, pattern: str) -> list[str]:
    text = " ".join((ROOT / "docs" / guide).read_text(encoding="utf-8").split())
    return re.findall(pattern, text)


def _shown_as(quote: str, messages: list[str]) -> bool:
    """Whether the tablet shows `quote`: part of a message, or a whole one with its placeholders filled in."""
    for message in messages:
        pieces = re.split(r"%\(\w+\)[.\d]*\w", message)
        if quote in message or re.fullmatch(".+?".join(map(re.escape, pieces)), quote):
            return True
    return False


def test_the_clinician_guides_quote_the_tablet_s_own_words() -> None:
    """docs/clinician.md (in "quotes") and docs/clinician.fr.md (in « guillemets ») name buttons, labels and
    messages as the tablet shows them in their language, and the French guide names every control the English one
    names: a renamed button or a changed translation makes the guide follow."""
    catalogue = _catalogue()
    english = _quoted("clinician.md", r'"([^"]+)"')
    french = _quoted("clinician.fr.md", r"«\s*(.+?)\s*»")
    assert len(english) > 40 and len(french) > 40, "the guides quote the tablet"
    assert [q for q in english if not _shown_as(q, list(catalogue))] == []
    assert [q for q in french if not _shown_as(q, [t for ts in catalogue.values() for t in ts])] == []
    missing = {q: catalogue[q][0] for q in english if q in catalogue and catalogue[q][0] not in french}
    assert missing == {}, "the French guide names these controls too"
