"""The printable report of a study: one A4 page (reportlab) with the patient, the image and its heatmap, the
findings, the model and the clinician's review. Its text is in the system's Unicode TrueType fonts, embedded
(`fonts.py`: DejaVu Sans, then Noto; Helvetica and Latin-1 only where none is installed). A character no font has is
never printed as '?': it shows as its code point (<U+13000>), the page says the text is not printed in full, and where
it is in the patient's name, the patient ID is printed large near the top."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_app.bundles.manifest import Manifest
from edge_app.imaging.encode import heatmap_overlay, jpeg
from edge_app.outputs.fonts import Fonts, draw, fonts
from edge_app.store import Study
from edge_app.store.reviews import Review

Translate = Callable[..., str]
_INK, _RED, _GREY = (0.1, 0.1, 0.1), (0.75, 0.05, 0.05), (0.45, 0.45, 0.45)


def study_report(
    study: Study,
    pictures: Mapping[int, bytes],
    heatmaps: Mapping[int, tuple[str, bytes]],
    reviews: Mapping[int, Sequence[Review]],
    _: Translate,
    typeface: Fonts | None = None,
    cards: Mapping[str, Manifest | None] | None = None,
    language: str = "en",
) -> bytes:
    """The PDF of the study's first image with findings (else its first image) and, beside it, the heatmap in
    `heatmaps` (result id -> finding, PNG) of its result, in the language of `_`, its text in
    `typeface` (default: the system's fonts, `fonts()`); `cards`: the manifest of each result's bundle (by sha256),
    for the model's card, each finding's validation figures and its name in `language`, where the bundle is still
    on the box."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas

    images = study.images
    image = next((i for i in images if i.latest_ok is not None), images[0] if images else None)
    buf = io.BytesIO()
    pdf = Canvas(buf, pagesize=A4, pageCompression=1, invariant=1)
    pdf.setTitle(_("AI triage report"))
    width, height = A4
    left, y = 18 * mm, height - 20 * mm
    typeface = typeface or fonts()
    unprinted: list[str] = []  # characters no font has, on any line

    def line(text: str, size: float = 10, bold: bool = False, color: tuple[float, float, float] = _INK) -> None:
        nonlocal y
        unprinted.append(draw(pdf, typeface, left, y, text, size, bold, color))
        y -= size * 1.45

    t = {  # the words of the page, each its own message (the extractor does not look inside f-strings)
        "patient": _("Patient"),
        "study": _("Study"),
        "received": _("Received"),
        "image": _("Image"),
        "exposure": _("Exposure"),
        "no_findings": _("Not read by the AI"),  # never "No findings": nothing was read
        "model": _("Model"),
        "clinician": _("clinician"),
        "threshold": _("threshold"),
        "patient_id": _("Patient ID"),
    }
    line(_("AI triage report"), 16, bold=True)
    line(_("AI result: to be confirmed by a clinician. Not a diagnosis."), 11, bold=True, color=_RED)
    shown = [c for c in (cards or {}).values() if c is not None]
    if any(c.not_for_clinical_use for c in shown):
        line(_("Demonstration model: not for clinical use."), 11, bold=True, color=_RED)
    meta = image.metadata if image else {}
    if typeface.missing(meta.get("patient_name") or ""):  # the name as printed could be another patient's
        line(_("The name could not be printed in full: use the patient ID."), 11, bold=True, color=_RED)
        line(f"{t['patient_id']}: {study.patient_id or '-'}", 14, bold=True)
    patient = " ".join(
        x for x in (meta.get("patient_name", ""), f"({study.patient_id})" if study.patient_id else "") if x
    )
    line(f"{t['patient']}: {patient or '-'}")
    line(f"{t['study']}: {study.uid}   {t['received']}: {study.created_at[:19].replace('T', ' ')} UTC")
    if image is not None:
        details = [meta.get("modality", ""), meta.get("body_part", ""), meta.get("view", ""), meta.get("device", "")]
        line(f"{t['image']}: {' '.join(d for d in details if d) or image.filename}")
        exposure = meta.get("exposure")
        if exposure:
            line(f"{t['exposure']}: " + ", ".join(f"{k} {v}" for k, v in exposure.items() if k != "source"))
    y -= 4 * mm
    result = image.latest_ok if image else None
    picture = pictures.get(image.id) if image else None
    if picture is not None:
        heat = heatmaps.get(result.id) if result else None
        y = _pictures(pdf, picture, heat[1] if heat else None, left, y, width - 2 * left, _)
        if heat is not None and result is not None:
            card = (cards or {}).get(result.bundle_sha256)

            def named(label: str) -> str:
                return card.label_name(label, language) if card is not None else label

            others = [named(m.label) for m in result.heatmaps if m.label != heat[0]]
            _legend(pdf, typeface, left + 2 * mm, y + 2)
            caption = _("Heatmap of %(label)s: the model's local probability, 0 to 1.", label=named(heat[0]))
            unprinted.append(draw(pdf, typeface, left + 38 * mm, y + 3, caption, 8, False, _GREY))
            y -= 8 * 1.45
            if others:
                line(
                    _("Heatmaps of the other positive findings on the tablet: %(labels)s.", labels=", ".join(others)),
                    8,
                    color=_GREY,
                )
    if image is None or result is None:
        why = (image.reason or image.status) if image else _("the study holds no image")
        line(f"{t['no_findings']}: {why}", 11, bold=True)
    else:
        model = result.model
        line(
            f"{t['model']}: {model.get('name', '')} {model.get('version', '')} "
            f"({model.get('precision', '')}, {model.get('runner', '')})",  # a Triton hub's address: not for print
            color=_GREY,
        )
        if result.guard is None:  # a bundle of before the input guard
            line(_("This model has no input check: nothing confirmed that the image is one it was made for."), 9)
        y -= 2 * mm
        line(_("Findings"), 12, bold=True)
        latest = [r for r in reviews.get(image.id, []) if r.result_id == result.id]  # of this model's result
        verdicts = latest[0].verdicts if latest else {}
        said = {"agree": _("agrees"), "disagree": _("disagrees")}
        card = (cards or {}).get(result.bundle_sha256)
        checked = card.validation.labels if card is not None and card.validation is not None else {}
        for f in sorted(result.findings, key=lambda f: -f.probability):
            unvalidated = not f.validated
            mark = _("not validated") if unvalidated else _("positive") if f.positive else _("negative")
            verdict = f"   {t['clinician']}: {said[verdicts[f.label]]}" if f.label in verdicts else ""
            name = card.label_name(f.label, language) if card is not None else f.label
            line(
                f"{name}: {f.probability:.2f} ({t['threshold']} {f.threshold:.2f}, {mark}){verdict}",
                bold=f.positive,
                color=_GREY if unvalidated else _INK,
            )
            v = checked.get(f.label)
            if v is not None and v.auc is not None and v.auc_95ci is not None:
                figures = f"{_('AUC')} {v.auc:.2f} ({v.auc_95ci[0]:.2f}-{v.auc_95ci[1]:.2f})"
                if v.sensitivity is not None and v.specificity is not None:
                    figures += f", {_('sens.')} {v.sensitivity:.2f} / {_('spec.')} {v.specificity:.2f}"
                line("      " + figures + ", " + _("%(count)d images", count=v.positives + v.negatives), 8, color=_GREY)
        if card is not None:
            use = card.intended_use
            made_for = " ".join(x for x in ("/".join(use.modality), use.body_part, "/".join(use.views)) if x)
            line(f"{_('Made for')}: {made_for}. {use.description}", 8, color=_GREY)
            if card.validation is not None:
                text = _(
                    "Figures measured on %(data)s; thresholds at %(point)s.",
                    data=card.validation.data,
                    point=card.validation.operating_point,
                )
                for chunk in _wrap(text, 120):
                    line(chunk, 8, color=_GREY)
        y -= 2 * mm
        line(_("Review"), 12, bold=True)
        if latest:
            line(f"{latest[0].author}, {latest[0].at[:16].replace('T', ' ')} UTC")
            for chunk in _wrap(latest[0].note, 95):
                line(chunk)
        else:
            line(_("Not reviewed yet."), color=_RED)
    if len(images) > 1:
        line(_("%(count)d more image(s) in this study: see the tablet.", count=len(images) - 1), color=_GREY)
    footer = _("Made by the clinic's AI appliance. Not for use as the sole basis of care.")
    unprinted.append(draw(pdf, typeface, left, 10 * mm, footer, 7, False, _GREY))
    if any(unprinted):
        notice = _("Characters shown as <U+code> could not be printed: this appliance has no font for them.")
        draw(pdf, typeface, left, 14 * mm, notice, 8, True, _RED)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _pictures(
    pdf: Any, picture: bytes, heatmap: bytes | None, x: float, top: float, width: float, _: Translate
) -> float:
    """The image, and beside it the image with its heatmap; return the y below them."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader

    base = np.asarray(Image.open(io.BytesIO(picture)).convert("L"))
    panels = [base]
    if heatmap is not None:
        heat = np.asarray(Image.open(io.BytesIO(heatmap)).convert("L"), dtype=np.float32) / 255.0
        panels.append(heatmap_overlay(base, heat))
    gap = 6.0
    side = min((width - gap) / 2, 80 * 72 / 25.4)
    h, w = base.shape[:2]
    scale = side / max(h, w)
    for n, panel in enumerate(panels):
        # As JPEG: the PDF carries it as it is (DCT), a fraction of the raw pixels' size.
        picture = ImageReader(io.BytesIO(jpeg(panel, quality=85)))
        pdf.drawImage(picture, x + n * (side + gap), top - h * scale, w * scale, h * scale)
    return float(top - h * scale - 14)


def _legend(pdf: Any, typeface: Fonts, x: float, y: float) -> None:
    """The heatmap's scale: a bar from clear (0) to full red (1), as `heatmap_overlay` lays it over a mid grey."""
    from reportlab.lib.units import mm

    steps = 20
    for n in range(steps):
        overlay = heatmap_overlay(np.full((1, 1), 128, np.uint8), np.full((1, 1), n / (steps - 1), np.float32))
        pdf.setFillColorRGB(*(overlay[0, 0] / 255.0))
        pdf.rect(x + n * 30 * mm / steps, y, 30 * mm / steps + 0.2, 3 * mm, stroke=0, fill=1)
    draw(pdf, typeface, x - 5, y + 1, "0", 7, False, _GREY)
    draw(pdf, typeface, x + 30 * mm + 2, y + 1, "1", 7, False, _GREY)


def _wrap(text: str, width: int) -> list[str]:
    """The note as lines, at most 8 (the page has room for no more)."""
    return [line for paragraph in text.splitlines() for line in textwrap.wrap(paragraph, width) or [""]][:8]
