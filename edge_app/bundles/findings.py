"""From a model's raw outputs to findings: probabilities, decisions at the manifest's thresholds, a heatmap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.manifest import Manifest, OutputSpec
from edge_app.errors import InferenceError, ReasonKind


@dataclass(frozen=True)
class Finding:
    """One label's answer. Positive only where the label is validated and the probability reaches its threshold;
    a label the bundle does not validate is shown, greyed, and never positive."""

    label: str
    probability: float
    threshold: float
    validated: bool = True

    @property
    def positive(self) -> bool:
        return self.validated and self.probability >= self.threshold

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "probability": round(self.probability, 6),
            "threshold": self.threshold,
            "positive": self.positive,
            "validated": self.validated,
        }


def triage_score(found: list[Finding]) -> float:
    """One number a worklist sorts by: how far the most urgent validated finding is past its threshold, as a
    share of the room above it ((p - t) / (1 - t), in [0, 1]); 0 where no finding is positive."""
    margins = [(f.probability - f.threshold) / max(1e-9, 1.0 - f.threshold) for f in found if f.positive]
    return round(max(margins, default=0.0), 4)


@dataclass(frozen=True)
class Heatmap:
    """A class activation map for one label as each location's probability, in [0, 1], never scaled per image: a
    faint map is a low probability (low resolution: the viewer upsamples it)."""

    label: str
    values: NDArray[np.float32]


@dataclass(frozen=True)
class GuardCheck:
    """The input guard's verdict on one image: its largest margin over a component's threshold (above 0: outside
    what the model reads) and which component that is."""

    score: float
    component: str

    @property
    def outside(self) -> bool:
        return self.score > 0.0

    def as_dict(self) -> dict[str, object]:
        return {"score": round(self.score, 4), "component": self.component, "outside": self.outside}


def guard_check(manifest: Manifest, outputs: dict[str, NDArray[np.float32]], index: int = 0) -> GuardCheck | None:
    """The guard's verdict on image `index` of a batch; None where the bundle has no guard (an older bundle)."""
    guard = manifest.guard
    if guard is None:
        return None
    values = np.asarray(outputs[guard.output][index], dtype=np.float64).reshape(-1)
    if len(values) != len(guard.components):
        raise InferenceError(f"the guard gave {len(values)} scores for {len(guard.components)} components")
    thresholds = np.asarray([c.threshold for c in guard.components], dtype=np.float64)
    # A score that is not a number, or infinite, is no evidence the image is what the model reads: outside.
    margins = np.nan_to_num(values - thresholds, nan=1e9, posinf=1e9, neginf=-1e9)
    worst = int(np.argmax(margins))
    return GuardCheck(float(margins[worst]), guard.components[worst].name)


def probabilities(manifest_output: OutputSpec, n_labels: int, scores: NDArray[np.float32]) -> NDArray[np.float64]:
    """(N, labels) probabilities from a batch of raw scores, by the output's declared activation."""
    rows = scores.reshape(scores.shape[0], -1).astype(np.float64)
    if rows.shape[1] != n_labels:
        raise InferenceError(f"the model gave {rows.shape[1]} scores for {n_labels} labels")
    activation = manifest_output.activation
    if activation == "sigmoid":
        probs = 0.5 * (1.0 + np.tanh(0.5 * rows))  # the numerically stable logistic
    elif activation == "softmax":
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = rows
    if not np.isfinite(probs).all():
        raise InferenceError("the model gave non-finite scores")
    return np.asarray(probs, dtype=np.float64)


def findings(manifest: Manifest, outputs: dict[str, NDArray[np.float32]], index: int = 0) -> list[Finding]:
    """The findings of image `index` of a batch, in the manifest's label order."""
    probs = probabilities(manifest.output, len(manifest.labels), outputs[manifest.output.name])[index]
    return [
        Finding(label, float(p), manifest.thresholds[label], manifest.validated(label))
        for label, p in zip(manifest.labels, probs, strict=True)
    ]


def heatmap(manifest: Manifest, outputs: dict[str, NDArray[np.float32]], label: str, index: int = 0) -> Heatmap | None:
    """The class activation map of `label` as local probabilities, or None where the bundle has no heatmap output.

    The map holds each location's score (its spatial mean is the image's score): through the output's own
    activation, a location gives the probability the model would give an image that looked like it everywhere.
    The same scale for every image and label, so the map's strength is the finding's, not the image's contrast."""
    if manifest.output.heatmap is None:
        return None
    cam = outputs[manifest.output.heatmap][index].astype(np.float64)  # (labels, h, w)
    k = manifest.labels.index(label)
    activation = manifest.output.activation
    if activation == "sigmoid":
        local = 0.5 * (1.0 + np.tanh(0.5 * cam[k]))
    elif activation == "softmax":  # across the labels, at each location
        e = np.exp(cam - cam.max(axis=0, keepdims=True))
        local = (e / e.sum(axis=0, keepdims=True))[k]
    else:
        local = np.clip(cam[k], 0.0, 1.0)
    return Heatmap(label=label, values=np.nan_to_num(local, nan=0.0).astype(np.float32))


def heatmap_png(hm: Heatmap) -> bytes:
    """The heatmap as an 8-bit grey PNG at its own (low) resolution."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(hm.values * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


# "ok"; "outside" (the input guard says the image is not what the model reads: no findings); "rejected" (the
# image cannot be used); "failed" (an internal error)
ResultStatus = Literal["ok", "outside", "rejected", "failed"]


@dataclass
class Diagnosis:
    """The outcome for one image: findings, or the reason it was rejected."""

    source: str
    status: ResultStatus
    model: dict[str, str]
    reason: str | None = None
    reason_kind: ReasonKind | None = None  # set with `reason`
    guard: GuardCheck | None = None  # None: the bundle has no guard, the image was not checked
    triage: float = 0.0  # how urgent: `result.triage_score` (0 where no validated finding is positive)
    findings: list[Finding] = field(default_factory=list)
    heatmaps: list[Heatmap] = field(default_factory=list)  # one per positive finding, the most probable first
    metadata: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    preview: NDArray[np.uint8] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.source, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        out["model"] = self.model
        if self.status in ("ok", "outside"):
            out["guard"] = self.guard.as_dict() if self.guard is not None else None
        if self.status == "ok":
            out["findings"] = [f.as_dict() for f in self.findings]
            out["positive"] = [f.label for f in self.findings if f.positive]
            out["triage"] = self.triage
        out["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        return out
