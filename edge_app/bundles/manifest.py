"""The model bundle's manifest: what a model takes, what it answers, and where it came from.

The schema is the contract between `converters` (which writes it) and the service (which obeys it). Preprocessing
is declared here, never implied: see `Preprocessing` and the README's examples for the torchxrayvision, Keras,
ImageNet and MONAI styles.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's image input tensor."""

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 1
    dtype: Literal["float32", "float16"] = "float32"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's dimensions in the tensor, the batch left out: (C, H, W) or (H, W, C) by the layout."""
        if self.layout == "NCHW":
            return self.channels, self.height, self.width
        return self.height, self.width, self.channels


class Preprocessing(_Strict):
    """How decoded pixels (in [0, 1], as a viewer shows them) become the input tensor, step by step.

    1. intensity: "window" keeps the decoder's display intensities (DICOM VOI LUT/window, a robust percentile
       window where none is given, PNG/JPEG divided by their maximum); "minmax" stretches each image's own
       minimum and maximum to [0, 1] (MONAI's ScaleIntensity).
    2. channels: grey images are repeated to 3 channels, colour images turned grey (ITU-R 601 luma) for 1.
    3. geometry: "stretch" resizes to height x width ignoring aspect; "center_crop" keeps the central square
       (times `crop_fraction`) and resizes it; "letterbox" fits the whole image and pads with zeros.
    4. interpolation: Pillow's filters ("area" is Pillow's box filter).
    5. scale: [0, 1] is mapped linearly onto [scale[0], scale[1]].
    6. mean/std: per channel, (x - mean) / std, after scaling.
    """

    intensity: Literal["window", "minmax"] = "window"
    geometry: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    crop_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    scale: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _mean_std(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.scale[0] == self.scale[1]:
            raise ValueError("scale must map [0, 1] onto a range of non-zero width")
        return self


class OutputSpec(_Strict):
    """The model's outputs: scores per label and, optionally, a class activation map."""

    name: str
    activation: Literal["sigmoid", "softmax", "none"]
    heatmap: str | None = Field(default=None, description="output name of a (N, labels, h, w) class activation map")


class IntendedUse(_Strict):
    """What the model was made for: DICOM modalities, one body part, views (each empty: any)."""

    modality: tuple[str, ...] = ()
    body_part: str = ""
    views: tuple[str, ...] = ()
    description: str = ""

    def refuses(self, modality: str, body_part: str, view: str) -> str | None:
        """Why an image whose header says these is not one the model was made for; None where it is. Case is
        ignored; what the image does not say (a PNG says nothing) excludes nothing, nor what this leaves open."""
        modality, body_part, view = modality.strip().upper(), body_part.strip().upper(), view.strip().upper()
        if modality and self.modality and modality not in {m.upper() for m in self.modality}:
            return f"modality {modality} is not one this model reads ({', '.join(self.modality)})"
        if body_part and self.body_part and body_part != self.body_part.upper():
            return f"body part {body_part} is not what this model reads ({self.body_part})"
        if view and self.views and view not in {v.upper() for v in self.views}:
            return f"view {view} is not one this model reads ({', '.join(self.views)})"
        return None

    def admits(self, modality: str, body_part: str, view: str) -> bool:
        """Whether an image whose header says these is one the model was made for (`refuses` says why not)."""
        return self.refuses(modality, body_part, view) is None


class Provenance(_Strict):
    source_sha256: str
    created_by: str
    created_at: str
    method: str
    calibration: str | None = None
    validation: str | None = None


class GuardComponent(_Strict):
    """One score of the input guard: an image whose score is above `threshold` is outside what the model reads."""

    name: str = Field(min_length=1)
    method: str = Field(min_length=1, description="how the score is computed, in a sentence")
    threshold: float


GUARD_PREFIX = "guard_"  # the name of every node and constant the guard adds: kept in FP32 at every precision


class InputGuard(_Strict):
    """The out-of-distribution check that runs with the model: an output of the same graph, one column per
    component, fitted by `edge-convert build` on the calibration (or training) images alone; its nodes are named
    `GUARD_PREFIX`..."""

    output: str = Field(min_length=1, description="output name of the (N, components) guard scores")
    components: tuple[GuardComponent, ...] = Field(min_length=1)
    fitted_on: str = Field(description="which images, how many")
    rates: dict[str, Any] = Field(default_factory=dict, description="refusal rates measured when it was fitted")


class LabelValidation(_Strict):
    """One label's validation figures, shown beside its finding: a label not `validated` is never a positive
    finding (the tablet shows it greyed, "not validated")."""

    auc: float | None = Field(default=None, ge=0.0, le=1.0)
    auc_95ci: tuple[float, float] | None = None
    sensitivity: float | None = Field(default=None, ge=0.0, le=1.0, description="at the threshold")
    specificity: float | None = Field(default=None, ge=0.0, le=1.0, description="at the threshold")
    threshold: float = Field(ge=0.0, le=1.0)
    positives: int = Field(ge=0)
    negatives: int = Field(ge=0)
    validated: bool
    why: str = Field(default="", description="why a label is not validated, in plain words")


class Validation(_Strict):
    """How good the model is, per label, and how its thresholds were chosen."""

    data: str = Field(min_length=1, description="the images the figures were measured on")
    operating_point: str = Field(min_length=1, description="how each threshold was chosen")
    rule: str = Field(min_length=1, description="what a label needs to be validated")
    labels: dict[str, LabelValidation]


class Fingerprint(_Strict):
    """What the images a bundle was calibrated and validated on looked like, compactly: the box compares each
    station's latest arrivals with it and flags a station whose images moved away (drift). Written by the conversion
    stage from the validation images (else the calibration images)."""

    images: int = Field(gt=0, description="how many images it was taken from")
    data: str = Field(min_length=1, description="which images")
    guard_quantiles: tuple[float, ...] | None = Field(
        default=None,
        min_length=2,
        description="the input guard's score (its largest margin over a threshold, as each result records it) at "
        "evenly spaced quantiles from 0 to 1; None where the bundle has no guard",
    )
    intensity: tuple[float, ...] = Field(
        min_length=2, description="the images' mean share of pixels in each equal step of display intensity [0, 1]"
    )
    bits: dict[str, int] = Field(description="bits stored -> images")
    photometric: dict[str, int] = Field(description="photometric interpretation -> images")
    sizes: dict[str, int] = Field(description="the longer side in pixels -> images")


class SiteValidation(_Strict):
    """A bundle measured on a clinic's own reviewed cases (`edge-app export --reviewed`, then `edge-convert validate
    --record`): the box whose export it was shows the figure on its model-update page."""

    site: str = Field(min_length=1, description="the exporting box's site id (its data directory's `site_id`)")
    export: str = Field(min_length=1, description="the export's own id, from its `site-export.json`")
    exported_at: str = Field(min_length=1)
    measured_at: str = Field(min_length=1)
    images: int = Field(gt=0, description="reviewed images the figures were measured on")
    decisions: int = Field(gt=0, description="(image, label) decisions compared with the clinicians' labels")
    agreement: float = Field(ge=0.0, le=1.0, description="share of those decisions the clinicians' labels agree with")
    per_label: dict[str, float] = Field(default_factory=dict, description="each label's agreement")


class Code(_Strict):
    """A coded concept (DICOM PS3.3 8.8): how the box's Structured Report names a label's finding. A standard scheme
    (SCT for SNOMED CT, RADLEX) where one has the concept; a private one (designator beginning "99") otherwise."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16, description="coding scheme designator: SCT, RADLEX, 99...")
    meaning: str = Field(min_length=1, max_length=64)


class Manifest(_Strict):
    """A bundle's `manifest.json`."""

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    task: Literal["binary", "multiclass", "multilabel"]
    labels: tuple[str, ...] = Field(min_length=1)
    thresholds: dict[str, float]
    codes: dict[str, Code] = Field(
        default_factory=dict, description="per label, its finding's code in the SR; a label without one: a private code"
    )
    label_names: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='per language ("fr"), each label\'s name as clinicians read it; the label itself where none',
    )
    input: InputSpec
    preprocessing: Preprocessing
    output: OutputSpec
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    intended_use: IntendedUse = IntendedUse()
    provenance: Provenance
    metrics: dict[str, Any] = Field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    guard: InputGuard | None = None
    validation: Validation | None = None
    fingerprint: Fingerprint | None = None
    site_validations: tuple[SiteValidation, ...] = ()
    attribution: str = ""
    not_for_clinical_use: bool = True
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        if "model.onnx" not in files:
            raise ValueError("must list model.onnx")
        for name, digest in files.items():
            if name.startswith(("/", "..")) or "/../" in name or "\\" in name:
                raise ValueError(f"file name {name!r} leaves the bundle")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"sha256 of {name!r} is not 64 lowercase hex digits")
        return files

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if set(self.thresholds) != set(self.labels):
            raise ValueError("thresholds must give exactly one value per label")
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds.values()):
            raise ValueError("thresholds are probabilities in [0, 1]")
        if unknown := sorted(set(self.codes) - set(self.labels)):
            raise ValueError(f"codes name labels the model does not have: {', '.join(unknown)}")
        for language, names in self.label_names.items():
            if unknown := sorted(set(names) - set(self.labels)):
                raise ValueError(f"label_names.{language} names labels the model does not have: {', '.join(unknown)}")
        if self.task == "binary" and len(self.labels) != 1:
            raise ValueError("a binary task has exactly one label (the positive class)")
        if self.task == "multiclass" and len(self.labels) < 2:
            raise ValueError("a multiclass task has at least two labels")
        if self.task == "multiclass" and self.output.activation == "sigmoid":
            raise ValueError("a multiclass task takes softmax (or none for probabilities already)")
        if self.task != "multiclass" and self.output.activation == "softmax":
            raise ValueError(f"a {self.task} task takes sigmoid (or none for probabilities already)")
        if self.validation is not None and set(self.validation.labels) != set(self.labels):
            raise ValueError("validation must give figures for exactly the model's labels")
        if self.guard is not None and self.guard.output in (self.output.name, self.output.heatmap):
            raise ValueError("the guard's output must be an output of its own")
        n = self.input.channels
        for key in ("mean", "std"):
            values = getattr(self.preprocessing, key)
            if values is not None and len(values) not in (1, n):
                raise ValueError(f"preprocessing.{key} needs 1 or {n} values for {n} input channel(s)")
        return self

    def label_name(self, label: str, language: str) -> str:
        """`label` as clinicians read it in `language` (the label, the model's own key, where not given)."""
        return self.label_names.get(language, {}).get(label, label)

    def validated(self, label: str) -> bool:
        """Whether `label` may be shown as a positive finding: its validation supports it. A bundle that says
        nothing of its validation supports none."""
        return self.validation is not None and self.validation.labels[label].validated

    def validated_at(self, site: str) -> SiteValidation | None:
        """The newest measure of this bundle on the reviewed cases of the box `site` names; None where there is none."""
        return next((v for v in reversed(self.site_validations) if v.site == site), None)

    def output_names(self) -> list[str]:
        """Every output a runner must give: the scores, then the heatmap and the guard where there are."""
        guard = self.guard.output if self.guard is not None else None
        return [n for n in (self.output.name, self.output.heatmap, guard) if n]

    def reads(self) -> str:
        """What the model reads, in words: "frontal chest X-ray", from its intended use."""
        use = self.intended_use
        frontal = "frontal " if use.views and {v.upper() for v in use.views} <= {"PA", "AP"} else ""
        xray = {m.upper() for m in use.modality} <= {"CR", "DX", "DR", "RG"} and bool(use.modality)
        what = f"{frontal}{use.body_part.lower()} {'X-ray' if xray else 'image'}".strip()
        return what if what != "image" else "image of the kind"
