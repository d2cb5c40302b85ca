"""What the tablet says to a clinician in place of technical details: a sentence and what to do for each kind of
reason an image was not diagnosed (`edge_app.errors.ReasonKind`, recorded beside the reason), where an image came
from without its network address, and a finding's name in the clinician's language (the bundle's manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flask_babel import get_locale
from flask_babel import lazy_gettext as _l

from edge_app.bundles.manifest import Manifest
from edge_app.errors import ReasonKind


@dataclass(frozen=True)
class Words:
    what: object  # what happened, for a clinician (a lazy string: in the page's language when shown)
    todo: object  # what to do
    tone: Literal["info", "warn"]  # "warn": someone should act (send again, call the technician); never an alarm


_SEND_AGAIN = _l("Send the image again from the imaging unit; if it happens again, call the technician.")
_READ_YOURSELF = _l("Read the image yourself, as without AI.")
REASONS: dict[ReasonKind, Words] = {
    "unreadable": Words(_l("This file is not an image the box can open."), _SEND_AGAIN, "warn"),
    "damaged": Words(_l("The image arrived incomplete or damaged."), _SEND_AGAIN, "warn"),
    "too_large": Words(
        _l("The image is too large for the box."),
        _l("Read it on the imaging unit or the PACS; ask the technician about the box's limits."),
        "warn",
    ),
    "unsupported": Words(
        _l("The image is in a format the box cannot read."), _l("Read it on the imaging unit or the PACS."), "warn"
    ),
    "decoder": Words(_l("The box could not open this image."), _SEND_AGAIN, "warn"),
    "no_image": Words(
        _l("This is not a picture: a report or a note sent with the study."), _l("Nothing to do."), "info"
    ),
    "ours": Words(_l("This is a result the box made, sent back with the study."), _l("Nothing to do."), "info"),
    "identity": Words(
        _l("The patient details do not match the study this image names: it is kept apart, not analysed."),
        _l("Check the patient's name and ID with the technician before reading it."),
        "warn",
    ),
    "not_intended": Words(_l("The AI model does not read this kind of image."), _READ_YOURSELF, "info"),
    "no_model": Words(_l("No AI model on the box reads this kind of image."), _READ_YOURSELF, "info"),
    "outside": Words(
        _l("The image does not look like the images the AI model was made for: no AI result."), _READ_YOURSELF, "info"
    ),
    "internal": Words(
        _l("The box failed while analysing this image."),
        _l("Read the image yourself, and tell the technician."),
        "warn",
    ),
}
UNKNOWN = Words(_l("The image was not analysed."), _READ_YOURSELF, "info")  # a reason recorded before kinds were


def reason_words(kind: str | None) -> Words:
    """The words for a reason of `kind` (general ones for a reason recorded before kinds were)."""
    return REASONS.get(kind, UNKNOWN) if kind else UNKNOWN  # type: ignore[call-overload]


_UNITS = {"CR": _l("X-ray unit"), "DX": _l("X-ray unit"), "US": _l("Ultrasound unit"), "MG": _l("X-ray unit")}


def source_words(source: str, modality: str = "") -> str:
    """Where an image came from, without its network address or path: "dicom:XRAY1@10.0.0.5" is "X-ray unit
    XRAY1" (the devices page shows the details to technicians)."""
    kind, _, rest = source.partition(":")
    if kind == "dicom":
        unit = _UNITS.get(modality.upper(), _l("Imaging unit"))
        return f"{unit} {rest.rpartition('@')[0] or rest}"
    if kind == "serial":
        return f"{_l('Device')} {rest}"
    named = {"api": _l("Sent by a program"), "folder": _l("Shared folder"), "video": _l("Video capture")}
    if kind in named:
        return str(named[kind])
    return source if not any(c in source for c in ":@/") else str(_l("Other source"))  # a device's name as is


def finding_name(card: Manifest | None, label: str) -> str:
    """A finding's name in the page's language, from its bundle's manifest; the label itself where none is given."""
    return card.label_name(label, str(get_locale())) if card is not None else label


def label_of(bundle_sha256: str, label: str) -> str:
    """A finding's name in the page's language, from the manifest of the bundle that found it."""
    from edge_app.web import services

    return finding_name(services.get().lifecycle.manifest_of(bundle_sha256), label)
