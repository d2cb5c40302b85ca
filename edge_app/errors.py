"""The exception tree of `edge_app`.

`EdgeAppError` is the root. Its subclasses under `UserError` are problems of input or configuration that a
person can fix and that are reported in plain words; anything else is an internal bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pydantic import ValidationError


class EdgeAppError(Exception):
    """Root of every error this package raises on purpose."""


class UserError(EdgeAppError):
    """Bad input or configuration: reported to the person, never a traceback."""


class ConfigError(UserError):
    """The configuration is invalid or insecure; the service refuses to start."""


class BundleError(UserError):
    """A model bundle is missing, incomplete, tampered with or malformed."""


# Why an image was not diagnosed, as a kind recorded beside the reason's words (images.reason_kind); the tablet
# shows a clinician's sentence per kind (edge_app/web/words.py), the technical reason one tap away.
ReasonKind = Literal[
    "unreadable",  # not a DICOM, PNG or JPEG file; empty; cannot be read
    "damaged",  # truncated, a damaged header, pixel data that does not decode
    "too_large",  # over the decoding limits (pixels, memory, an inflating data set)
    "unsupported",  # a well-formed image of a kind the box cannot read (bit depth, samples, frames)
    "decoder",  # the contained decoder crashed or was stopped on this file
    "no_image",  # a DICOM object that holds no image (a report, a presentation state)
    "ours",  # made by this box (a result a PACS sent back): kept with the study
    "identity",  # its UIDs name another patient's study or other content: kept apart
    "not_intended",  # the model does not read this modality, body part or view
    "no_model",  # no model on the box reads it
    "outside",  # the input guard: it does not look like what the model was made for
    "internal",  # an internal error, or given up after the service stopped on it each time
]


class ImageRejected(UserError):
    """An image cannot be used: not an image, unsupported, truncated, too large, or not what the model takes.
    `patient_name`/`patient_id`: what its header said of the patient, where it was read before the refusal."""

    def __init__(self, source: str, reason: str, kind: ReasonKind) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind: ReasonKind = kind
        self.patient_name = ""
        self.patient_id = ""


class NotAnImage(ImageRejected):
    """A well-formed object that holds no image (a DICOM without pixel data: a structured report, a worklist)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason, "no_image")


class IdentityConflict(ImageRejected):
    """An image that cannot join what its UIDs name: the study is another patient's, or its SOP Instance UID is
    held with other content. It is kept apart, in a study of its own, and not diagnosed."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason, "identity")


class RuntimeUnavailable(UserError):
    """An inference backend cannot run on this machine (no GPU, library missing, no engine built)."""


class DecoderUnavailable(EdgeAppError):
    """An image not read for want of a decoder process or a model: one that could not be started, or was stopped
    under it (an internal failure, not the image's: it is queued again)."""


class LeaseLost(EdgeAppError):
    """A worker's claim on a job no longer holds it (its lease ran out and another claim took it): its outcome is
    not recorded."""


class InferenceError(EdgeAppError):
    """The model failed on an input it had accepted."""


class NotFound(UserError):
    """A study, image or result that does not exist was asked for."""


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem of a settings file, manifest or profile, with the field path, in plain words."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)
