"""The exception tree of `converters`: `ConversionError` is the root; `FidelityGateFailed` carries its numbers."""

from __future__ import annotations

from typing import Any


class ConversionError(Exception):
    """Root of every error the conversion stage raises on purpose; the message is for the engineer."""


class SpecError(ConversionError):
    """SPEC.toml is missing, malformed or inconsistent with the model."""


class ModelError(ConversionError):
    """The model file cannot be read, checked or converted."""


class FidelityGateFailed(ConversionError):
    """The candidate drifts from the original beyond the spec's tolerances; no bundle is written."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report
