"""How good a model is, per label: thresholds at a stated operating point, AUC with its 95 % interval,
sensitivity and specificity at the threshold, and whether the figures support showing the label as a finding."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_app.bundles.manifest import LabelValidation, Validation

Array = NDArray[Any]


class OperatingPoint(BaseModel):
    """How each label's threshold is chosen on the validation images: at a specificity, at a sensitivity, or
    where sensitivity + specificity is highest (Youden). None of them: the spec's thresholds are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specificity: float | None = Field(default=None, gt=0.0, lt=1.0)
    sensitivity: float | None = Field(default=None, gt=0.0, le=1.0)
    youden: bool = False

    @model_validator(mode="after")
    def _one(self) -> OperatingPoint:
        if sum((self.specificity is not None, self.sensitivity is not None, self.youden)) > 1:
            raise ValueError("give one of specificity, sensitivity or youden")
        return self

    def describe(self) -> str:
        if self.specificity is not None:
            return f"the highest sensitivity at specificity {self.specificity:.2f} or more"
        if self.sensitivity is not None:
            return f"the highest specificity at sensitivity {self.sensitivity:.2f} or more"
        return "the highest sensitivity + specificity (Youden)" if self.youden else "the spec's thresholds"

    @property
    def chooses(self) -> bool:
        return self.specificity is not None or self.sensitivity is not None or self.youden


class ValidationRule(BaseModel):
    """SPEC.toml's [validation]: the operating point and what a label needs to be shown as a finding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operating_point: OperatingPoint = OperatingPoint()
    min_auc_lower: float = Field(0.5, ge=0.0, le=1.0, description="the AUC's 95 % interval must lie above this")
    min_positives: int = Field(10, ge=1, description="fewer positive validation images: not validated")
    claimed: tuple[str, ...] | None = Field(None, description="only these labels may be validated (default: all)")

    def describe(self) -> str:
        claim = f"; claimed: {', '.join(self.claimed)}" if self.claimed is not None else ""
        return (
            f"AUC 95 % interval above {self.min_auc_lower:.2f}, at least {self.min_positives} positive and "
            f"{self.min_positives} negative images{claim}"
        )


def threshold_at(y: Array, p: Array, point: OperatingPoint, default: float) -> float:
    """The label's threshold at the operating point, on validation truth `y` (0/1) and probabilities `p`."""
    from sklearn.metrics import roc_curve

    if not point.chooses or not 0 < y.sum() < len(y):
        return default
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if point.specificity is not None:
        ok = 1.0 - fpr >= point.specificity - 1e-9  # 1 - 0.2 is not 0.8 in floating point
        best = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
    elif point.sensitivity is not None:
        ok = tpr >= point.sensitivity - 1e-9
        best = int(np.flatnonzero(ok)[np.argmin(fpr[ok])])
    else:
        best = int(np.argmax(tpr - fpr))
    return round(float(thresholds[best]), 4)


def auc_interval(y: Array, p: Array, seed: int, n_boot: int = 2000) -> tuple[float, tuple[float, float]] | None:
    """AUC with a 95 % percentile bootstrap interval over images; None without both classes."""
    from sklearn.metrics import roc_auc_score

    if not 0 < y.sum() < len(y):
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            stats.append(roc_auc_score(y[idx], p[idx]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return round(float(roc_auc_score(y, p)), 3), (round(float(lo), 3), round(float(hi), 3))


def figures(label: str, y: Array, p: Array, threshold: float, rule: ValidationRule, seed: int) -> LabelValidation:
    """One label's figures at `threshold` and whether they support showing it as a finding."""
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    decided = p >= threshold
    auc = auc_interval(y, p, seed)
    why = []
    if rule.claimed is not None and label not in rule.claimed:
        why.append("not claimed by its makers")
    if min(positives, negatives) < rule.min_positives:
        why.append(f"too few validation images ({positives} positive, {negatives} negative)")
    if auc is None or auc[1][0] <= rule.min_auc_lower:
        lower = "none" if auc is None else f"{auc[1][0]:.2f}"
        why.append(f"its AUC's 95 % interval does not lie above {rule.min_auc_lower:.2f} (lower bound {lower})")
    return LabelValidation(
        auc=auc[0] if auc else None,
        auc_95ci=auc[1] if auc else None,
        sensitivity=round(float(decided[y == 1].mean()), 3) if positives else None,
        specificity=round(float((~decided[y == 0]).mean()), 3) if negatives else None,
        threshold=threshold,
        positives=positives,
        negatives=negatives,
        validated=not why,
        why="; ".join(why),
    )


def validate(
    labels: tuple[str, ...],
    truth: dict[str, Array],
    probs: Array,
    thresholds: dict[str, float],
    rule: ValidationRule,
    data: str,
    chosen_on: str | None = None,
) -> tuple[dict[str, float], Validation]:
    """Thresholds at the operating point and each label's figures. `truth` holds the labels with ground truth (the
    others are not validated); `chosen_on` names other images where the thresholds were chosen (given, the
    thresholds are the caller's and `probs`/`truth` only measure)."""
    chosen = dict(thresholds)
    out: dict[str, LabelValidation] = {}
    for j, label in enumerate(labels):
        if label not in truth:
            out[label] = LabelValidation(
                threshold=chosen[label], positives=0, negatives=0, validated=False, why="no ground truth given"
            )
            continue
        y = np.asarray(truth[label], dtype=np.int64)
        if chosen_on is None:
            chosen[label] = threshold_at(y, probs[:, j], rule.operating_point, chosen[label])
        out[label] = figures(label, y, probs[:, j], chosen[label], rule, seed=j)
    where = f" on {chosen_on}" if chosen_on is not None else " on the same images"
    point = rule.operating_point.describe() + (where if rule.operating_point.chooses else "")
    return chosen, Validation(data=data, operating_point=point, rule=rule.describe(), labels=out)
