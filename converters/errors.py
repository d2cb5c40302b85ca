"""The exception tree of `converters`, under `edge_app`'s root (`EdgeAppError` > `UserError`).

`ConversionError` is bad usage (a missing option, a bad SPEC.toml, an output folder in the way: exit status 2);
`Refused` is a model the conversion stage will not turn into a bundle (it cannot be read or converted, or the
result drifts from the original: exit status 1), with its numbers where there are some.
"""

from __future__ import annotations

from typing import Any

from edge_app.errors import UserError


class ConversionError(UserError):
    """Root of every error the conversion stage raises on purpose; the message is for the engineer."""


class SpecError(ConversionError):
    """SPEC.toml is missing, malformed or inconsistent with the model."""


class Refused(ConversionError):
    """The model is refused: no bundle is written."""


class ModelError(Refused):
    """The model file cannot be read, checked or converted (a step of the conversion failed on it)."""


class FidelityGateFailed(Refused):
    """The candidate drifts from the original beyond the spec's tolerances; no bundle is written."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report
