"""The exception tree of `edge_app`.

`EdgeAppError` is the root. Its subclasses under `UserError` are problems of input or configuration that a
person can fix and that are reported in plain words; anything else is an internal bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


class ImageRejected(UserError):
    """An image cannot be used: not an image, unsupported, truncated, too large, or not what the model takes."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class NotAnImage(ImageRejected):
    """A well-formed object that holds no image (a DICOM without pixel data: a structured report, a worklist)."""


class IdentityConflict(ImageRejected):
    """An image that cannot join what its UIDs name: the study is another patient's, or its SOP Instance UID is
    held with other content. It is kept apart, in a study of its own, and not diagnosed."""


class RuntimeUnavailable(UserError):
    """An inference backend cannot run on this machine (no GPU, library missing, no engine built)."""


class DecoderUnavailable(EdgeAppError):
    """The image decoder's process could not be started (an internal failure, not the image's)."""


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
