"""The printable report prints names beyond Latin-1 as they are (the system's Unicode TrueType fonts, embedded), and a
character no font has is never a silent '?': it shows as its code point, the page says the name is not printed in
full and prints the patient ID large. Read back with poppler's `pdftotext`, as a person reading the page would."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from babel.support import Translations

from edge_app.outputs.fonts import CANDIDATES, FONT_DIR, HELVETICA, Fonts, fonts, visual
from edge_app.outputs.report import study_report
from edge_app.store.reviews import Review
from edge_app.store.rows import Image, Result, StoredFinding, Study

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="poppler's pdftotext is not installed (apt-get install poppler-utils)"
)
TITLE, WARNING = "AI triage report", "AI result: to be confirmed by a clinician. Not a diagnosis."
NAME_NOTICE = "The name could not be printed in full: use the patient ID."
NOTICE = "Characters shown as <U+code> could not be printed: this appliance has no font for them."
FOOTER = "Made by the clinic's AI appliance. Not for use as the sole basis of care."
STUDY = "Study: 1.2.840.99 Received: 2026-11-25 10:00:00 UTC"
NOT_LATIN1 = "\U0010fffd"  # plane 16, private use: in no font


def _english(text: str, **values: Any) -> str:
    return text % values if values else text


def _system() -> Fonts:
    found = fonts()
    if not found.truetype:
        pytest.skip(f"no DejaVu Sans or Noto Sans under {FONT_DIR} (apt-get install fonts-dejavu-core)")
    return found


def _study(name: str, note: str | None = None) -> tuple[Study, dict[int, list[Review]]]:
    """A study of one DX image of the patient P-123: without a result, or with one finding and a review's note."""
    results: tuple[Result, ...] = ()
    if note is not None:
        results = (
            Result(
                id=7,
                created_at="2026-11-25T10:00:01",
                status="ok",
                model={"name": "cxr", "version": "1", "precision": "fp32", "runner": "onnxruntime"},
                bundle_sha256="b" * 64,
                findings=(StoredFinding("Cardiomegaly", 0.8, 0.5, True),),
                timings_ms={},
                guard={"score": -3.0, "component": "density", "outside": False},
                triage=0.6,
                reason=None,
                heatmaps=(),
            ),
        )
    image = Image(
        id=1,
        sop_instance_uid="1.2.840.99.1.1",
        series_uid="1.2.840.99.1",
        status="no_model",
        reason="no model in service",
        reason_kind="no_model",
        source="api",
        filename="a.dcm",
        sha256="a" * 64,
        size=1,
        view_sha256=None,
        purged_at=None,
        received_at="2026-11-25T10:00:00.5",
        metadata={"patient_name": name, "modality": "DX"},
        results=results,
        outputs=(),
    )
    study = Study("1.2.840.99", "2026-11-25T10:00:00.5", "api", "P-123", (image,))
    review = Review(1, 1, 7, "dr-ade", "2026-11-25T11:00:00", {"Cardiomegaly": "agree"}, note or "")
    return study, {1: [review] if note is not None else []}


def _pdf(tmp_path: Path, name: str, note: str | None = None, typeface: Fonts | None = None, _: Any = _english) -> Path:
    study, reviews = _study(name, note)
    path = tmp_path / "report.pdf"
    path.write_bytes(study_report(study, {}, {}, reviews, _, typeface))
    return path


def _lines(pdf: Path) -> list[str]:
    """The page's lines as `pdftotext -layout` reads them, each line's runs of spaces as one."""
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return [" ".join(line.split()) for line in out.splitlines() if line.strip()]


def _runs(pdf: Path) -> list[tuple[str, str, float]]:
    """Each text run drawn: its text, its font (the subset's prefix dropped) and its size."""
    from pypdf import PdfReader

    runs: list[tuple[str, str, float]] = []

    def seen(text: str, cm: Any, tm: Any, font: Any, size: float) -> None:
        if text.strip():
            runs.append((text, str(font["/BaseFont"]).split("+")[-1].lstrip("/"), size))

    PdfReader(pdf).pages[0].extract_text(visitor_text=seen)
    return runs


def _page(patient: str, notices: bool = False) -> list[str]:
    """The lines of the page of `_study(name)` (no result), with the notices where a character could not print."""
    top = [NAME_NOTICE, "Patient ID: P-123"] if notices else []
    bottom = [NOTICE] if notices else []
    middle = [f"Patient: {patient}", STUDY, "Image: DX", "Not read by the AI: no model in service"]
    return [TITLE, WARNING, *top, *middle, *bottom, FOOTER]


@needs_pdftotext
@pytest.mark.parametrize("name", ["ƐSI ƆKƆ ŊOZI", "Ƙƙ Ɗɗ ɛɔŋ", "Françoise Lefèvre-Noël", "Œdipe Ğül Łódź"])
def test_names_beyond_latin1_print_as_they_are(tmp_path: Path, name: str) -> None:
    system = _system()
    pdf = _pdf(tmp_path, name)
    assert _lines(pdf) == _page(f"{name} (P-123)")
    embedded = {font for _, font, _ in _runs(pdf)}
    assert embedded == {system.regular[0].name, system.bold[0].name}, "the system's fonts only, no Helvetica"


@needs_pdftotext
def test_an_arabic_name_prints_its_letters_in_their_order(tmp_path: Path) -> None:
    if _system().missing("محمد علي"):
        pytest.skip("no font found here has Arabic (apt-get install fonts-dejavu-core or fonts-noto-core)")
    lines = _lines(_pdf(tmp_path, "محمد علي"))
    patient = next(line for line in lines if line.startswith("Patient"))
    # Drawn unshaped, in visual order; pdftotext reads it back right to left and marks the embedding (U+202B/C).
    assert re.findall(r"[\u0600-\u06ff]+", patient) == ["محمد", "علي"]
    assert set(patient) - {"\u202b", "\u202c"} == set("Patient: محمد علي (P-123)")
    assert lines == _page(patient.removeprefix("Patient: "))


@needs_pdftotext
def test_a_character_no_font_has_is_named_and_the_patient_id_printed_large(tmp_path: Path) -> None:
    system = _system()
    if system.regular[0].name != "DejaVuSans":
        pytest.skip("DejaVu Sans is not installed (apt-get install fonts-dejavu-core)")
    assert system.missing(f"ƐSI {NOT_LATIN1}") == NOT_LATIN1
    pdf = _pdf(tmp_path, f"ƐSI {NOT_LATIN1} OZI")
    lines = _lines(pdf)
    assert lines == _page("ƐSI <U+10FFFD> OZI (P-123)", notices=True)
    assert "?" not in "".join(lines) and "\ufffd" not in "".join(lines)
    assert _runs(pdf)[2:5] == [
        (NAME_NOTICE, "DejaVuSans-Bold", 11),
        ("Patient ID: P-123", "DejaVuSans-Bold", 14),  # larger than the name's line, and bold
        ("Patient: ƐSI <U+10FFFD> OZI (P-123)", "DejaVuSans", 10),
    ]
    assert _runs(pdf)[-2:] == [(FOOTER, "DejaVuSans", 7), (NOTICE, "DejaVuSans-Bold", 8)]


@needs_pdftotext
def test_a_character_no_font_has_in_the_review_note_is_named_there(tmp_path: Path) -> None:
    _system()
    lines = _lines(_pdf(tmp_path, "ƐSI ƆKƆ", note="Revoir \U00013000 dans 2 semaines"))
    assert lines[2] == "Patient: ƐSI ƆKƆ (P-123)" and NAME_NOTICE not in lines
    assert lines[3:] == [
        STUDY,
        "Image: DX",
        "Model: cxr 1 (fp32, onnxruntime)",
        "Findings",
        "Cardiomegaly: 0.80 (threshold 0.50, positive) clinician: agrees",
        "Review",
        "dr-ade, 2026-11-25 11:00 UTC",
        "Revoir <U+13000> dans 2 semaines",
        NOTICE,
        FOOTER,
    ]


@needs_pdftotext
@needs_pdftotext
def test_a_character_no_font_has_in_a_translation_is_named_too(tmp_path: Path) -> None:
    _system()

    def _(text: str, **values: Any) -> str:
        return f"{text} {NOT_LATIN1}" if text == FOOTER else _english(text, **values)

    assert _lines(_pdf(tmp_path, "ƐSI", _=_))[-2:] == [NOTICE, f"{FOOTER} <U+10FFFD>"]


@needs_pdftotext
def test_the_notices_in_french(tmp_path: Path) -> None:
    _system()
    french = Translations.load(str(ROOT / "edge_app" / "web" / "translations"), ["fr"])

    def _(text: str, **values: Any) -> str:
        return french.gettext(text) % values if values else french.gettext(text)

    lines = _lines(_pdf(tmp_path, f"Aïssata {NOT_LATIN1}", _=_))
    assert lines[2:5] == [
        "Le nom n'a pas pu être imprimé en entier : utilisez l'identifiant du patient.",
        "Identifiant du patient: P-123",
        "Patient: Aïssata <U+10FFFD> (P-123)",
    ]
    notice = "Les caractères notés <U+code> n'ont pas pu être imprimés : cet appareil n'a pas de police pour eux."
    assert lines[-2] == notice


@needs_pdftotext
def test_without_a_truetype_font_latin1_prints_and_the_rest_is_named(tmp_path: Path) -> None:
    helvetica = fonts(tmp_path)  # a folder with no font in it
    assert helvetica is HELVETICA and not helvetica.truetype and fonts(tmp_path, ()) is HELVETICA
    assert _lines(_pdf(tmp_path, "Françoise Lefèvre-Noël", typeface=helvetica)) == _page(
        "Françoise Lefèvre-Noël (P-123)"
    )
    assert _lines(_pdf(tmp_path, "ƐSI ƆKƆ ŊOZI", typeface=helvetica)) == _page(
        "<U+0190>SI <U+0186>K<U+0186> <U+014A>OZI (P-123)", notices=True
    )
    fonts_used = subprocess.run(["pdffonts", str(tmp_path / "report.pdf")], capture_output=True, text=True).stdout
    assert "Helvetica" in fonts_used and "DejaVu" not in fonts_used


def test_a_damaged_font_file_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "bad.ttf").write_bytes(b"\x00\x01\x00\x00 not a font" * 10)
    assert fonts(tmp_path, [("bad.ttf", "bad.ttf")]) is HELVETICA


def test_helvetica_prints_latin1_only() -> None:
    printable = " ~\xa0\xff"
    assert HELVETICA.runs(printable) == ([("Helvetica", printable)], "")
    assert HELVETICA.runs(f"é{chr(0x1F)}\x7f\x9f\u0100", bold=True) == (
        [("Helvetica-Bold", "é<U+001F><U+007F><U+009F><U+0100>")],
        "\x1f\x7f\x9f\u0100",
    )
    assert HELVETICA.missing("Ɛ é Ŋ") == "ƐŊ"


def test_the_system_fonts_are_found_once_dejavu_first() -> None:
    found = fonts()
    assert fonts() is found and fonts(FONT_DIR, list(CANDIDATES)) is found
    if not (FONT_DIR / CANDIDATES[0][0]).is_file():
        pytest.skip(f"DejaVu Sans is not installed (apt-get install fonts-dejavu-core): {FONT_DIR / CANDIDATES[0][0]}")
    assert (found.regular[0].name, found.bold[0].name) == ("DejaVuSans", "DejaVuSans-Bold")
    assert found.runs("ƐSI ƆKƆ ŊOZI Ƙƙ Ɗɗ ɛɔŋ", bold=True) == ([("DejaVuSans-Bold", "ƐSI ƆKƆ ŊOZI Ƙƙ Ɗɗ ɛɔŋ")], "")


def test_each_character_takes_the_first_font_that_has_it(tmp_path: Path) -> None:
    noto = [("noto/NotoSans-Regular.ttf", "noto/NotoSans-Bold.ttf"), ("noto/NotoSansArabic-Regular.ttf", "none.ttf")]
    if not all((FONT_DIR / regular).is_file() for regular, _ in noto) or not (FONT_DIR / noto[0][1]).is_file():
        pytest.skip(f"Noto Sans and Noto Sans Arabic are not under {FONT_DIR} (apt-get install fonts-noto-core)")
    both = fonts(FONT_DIR, noto)
    study, reviews = _study("Ali محمد")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(study_report(study, {}, {}, reviews, _english, both))
    runs = _runs(pdf)
    line = runs[2 : next(n for n, run in enumerate(runs) if run[0].startswith("Study"))]  # pypdf splits it its way
    assert {c: (font, size) for text, font, size in line for c in text if c != " "} == {
        **{c: ("NotoSans-Regular", 10) for c in "Patient:Ali(P-123)"},
        **{c: ("NotoSansArabic-Regular", 10) for c in "محمد"},
    }
    assert sorted("".join(text for text, _, _ in line)) == sorted("Patient: Ali محمد (P-123)")
    assert both.truetype and [f.name for f in both.regular] == ["NotoSans-Regular", "NotoSansArabic-Regular"]
    assert both.runs("Ali محمد Ɛ") == (
        [("NotoSans-Regular", "Ali "), ("NotoSansArabic-Regular", "دمحم"), ("NotoSans-Regular", " Ɛ")],
        "",
    )
    # Bold: the bold fonts first, then the regular ones; a missing bold file leaves its regular one.
    assert [f.name for f in both.bold] == ["NotoSans-Bold", "NotoSansArabic-Regular"]
    assert both.runs(f"Ali محمد {NOT_LATIN1}", bold=True) == (
        [("NotoSans-Bold", "Ali "), ("NotoSansArabic-Regular", "دمحم"), ("NotoSans-Bold", " <U+10FFFD>")],
        NOT_LATIN1,
    )


def test_a_font_file_of_the_same_name_elsewhere_is_registered_under_its_own_name(tmp_path: Path) -> None:
    system = _system()
    if system.regular[0].name != "DejaVuSans":
        pytest.skip("DejaVu Sans is not installed (apt-get install fonts-dejavu-core)")
    (tmp_path / "dejavu").mkdir()
    shutil.copy(FONT_DIR / CANDIDATES[0][0], tmp_path / "dejavu")
    copy = fonts(tmp_path, CANDIDATES[:1])
    assert copy.regular[0].name not in {f.name for f in system.regular + system.bold}
    assert copy.regular[0].name.startswith("DejaVuSans-") and copy.bold == copy.regular
    assert copy.runs("Ɛ") == ([(copy.regular[0].name, "Ɛ")], "")


def test_right_to_left_text_is_drawn_in_visual_order() -> None:
    assert visual("Patient: محمد علي (P-123)") == "Patient: يلع دمحم (P-123)"
    assert visual("علي 12 محمد") == "دمحم 12 يلع"  # the number keeps its own order
    assert visual("علي (بن) محمد x") == "دمحم (نب) يلع x"  # brackets mirrored within the stretch
    assert visual("ƐSI ƆKƆ 12") == "ƐSI ƆKƆ 12"


@needs_pdftotext
def test_a_result_of_a_model_without_an_input_guard_says_its_image_was_not_checked(tmp_path: Path) -> None:
    study, reviews = _study("ADE", "fine")
    unchecked = "This model has no input check: nothing confirmed that the image is one it was made for."
    path = tmp_path / "checked.pdf"
    path.write_bytes(study_report(study, {}, {}, reviews, _english))
    assert unchecked not in _lines(path)
    (image,) = study.images
    study = replace(study, images=(replace(image, results=(replace(image.results[0], guard=None),)),))
    path.write_bytes(study_report(study, {}, {}, reviews, _english))
    assert unchecked in _lines(path)
