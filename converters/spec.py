"""SPEC.toml: what the manifest needs that a model file does not say (task, labels, preprocessing, tolerances)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from converters.errors import SpecError
from converters.validation import ValidationRule
from edge_app.bundles.manifest import Code, InputSpec, IntendedUse, OutputSpec, Preprocessing
from edge_app.errors import format_validation_error
from edge_app.system.fileio import read_toml


class Tolerance(BaseModel):
    """The fidelity gate: how far a converted model may drift from the original on the validation images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_agreement: float = Field(0.99, ge=0.0, le=1.0, description="share of decisions that must not change")
    max_abs_diff: float = Field(0.10, ge=0.0, le=1.0, description="largest probability change on any image")
    mean_abs_diff: float = Field(0.01, ge=0.0, le=1.0, description="mean probability change")
    max_auc_drop: float = Field(0.01, ge=0.0, le=1.0, description="largest AUC loss per label (labels given)")
    min_speedup: float = Field(1.1, ge=0.0, description="INT8 only: batch-1 latency ratio FP32 / INT8 on this CPU")


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["minmax", "entropy", "percentile", "per_tensor"] = Field(
        "minmax",
        description="how activation ranges are calibrated (onnxruntime's calibrators); per_tensor: each tensor's "
        "range from whichever of minmax, entropy and percentile quantizes it with the highest SQNR on the "
        "calibration images",
    )
    bias_correction: bool = Field(
        False,
        description="before quantizing, each Conv's and Gemm's bias less the mean output shift its INT8 weights "
        "cause on the calibration images",
    )
    target: Literal["tensorrt", "onnxruntime"] = Field(
        "tensorrt",
        description="tensorrt: symmetric signed INT8, zero points 0, float biases (what TensorRT's explicit "
        "quantization takes); onnxruntime: UInt8 activations and INT32 biases (the CPU's fast path)",
    )
    max_fallback_rounds: int = Field(
        3,
        ge=0,
        le=10,
        description="gated tries after the first: 1, 2, 4... of the ranked nodes kept in FP32, the last try the "
        "whole budget",
    )
    max_fallback_share: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="the fallback's budget: at most this share of the nodes the INT8 graph computes on quantized "
        "inputs may be kept in FP32 (so it follows the graph's size); twice as many are ranked by decision flips",
    )


class Spec(BaseModel):
    """The parsed SPEC.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    task: Literal["binary", "multiclass", "multilabel"]
    labels: tuple[str, ...] = Field(min_length=1)
    thresholds: dict[str, float] | float = 0.5
    codes: dict[str, Code] = Field(default_factory=dict, description="per label, its finding's code in the SR")
    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    output: OutputSpec
    intended_use: IntendedUse = IntendedUse()
    tolerance: Tolerance = Tolerance()
    calibration: Calibration = Calibration()
    validation: ValidationRule = ValidationRule()
    attribution: str = ""
    not_for_clinical_use: bool = True

    def threshold_map(self) -> dict[str, float]:
        if isinstance(self.thresholds, float):
            return dict.fromkeys(self.labels, self.thresholds)
        return dict(self.thresholds)


def load_spec(path: Path | str) -> Spec:
    path = Path(path)
    raw = read_toml(path, f"spec {path}", SpecError)
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"spec {path} is invalid: {format_validation_error(exc)}") from None
