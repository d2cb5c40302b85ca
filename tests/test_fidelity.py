"""The fidelity gate's criteria, each alone, on outputs built to sit either side of its tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from converters.fidelity import compare
from converters.spec import Tolerance

LABELS = ("a", "b")
THRESHOLDS = {"a": 0.5, "b": 0.5}
# Loose everywhere but the criterion under test.
LOOSE = {"min_agreement": 0.0, "max_abs_diff": 1.0, "mean_abs_diff": 1.0, "max_auc_drop": 1.0}


def _reference(n: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.uniform(0.05, 0.95, (n, 2)), 0.0, 1.0)


def _gate(reference: np.ndarray, candidate: np.ndarray, truth: dict | None = None, **tolerance: float) -> dict:
    return compare(LABELS, THRESHOLDS, reference, candidate, Tolerance(**{**LOOSE, **tolerance}), truth)


def test_identical_outputs_pass_every_default_criterion() -> None:
    ref = _reference()
    report = compare(LABELS, THRESHOLDS, ref, ref.copy(), Tolerance())
    assert report["passed"] and report["failures"] == []
    assert report["decision_agreement"] == 1.0 and report["max_abs_diff"] == 0.0


def test_mean_difference_alone() -> None:
    ref = _reference()
    shifted = ref + 0.02  # every probability moves a little: the mean moves 0.02, the max too
    assert not _gate(ref, shifted, mean_abs_diff=0.019)["passed"]
    report = _gate(ref, shifted, mean_abs_diff=0.021)
    assert report["passed"], report["failures"]
    (failure,) = _gate(ref, shifted, mean_abs_diff=0.019)["failures"]
    assert failure.startswith("mean |probability difference| 0.0200 > 0.019")


def test_max_difference_alone() -> None:
    ref = _reference()
    one_outlier = ref.copy()
    one_outlier[3, 1] += 0.04
    assert _gate(ref, one_outlier, max_abs_diff=0.041)["passed"]
    (failure,) = _gate(ref, one_outlier, max_abs_diff=0.039)["failures"]
    assert failure.startswith("max |probability difference| 0.0400 > 0.039")


def test_decision_agreement_alone() -> None:
    ref = np.full((100, 2), 0.6)
    flipped = ref.copy()
    flipped[:2, 0] = 0.4  # 2 of 200 decisions change: agreement 0.99
    assert _gate(ref, flipped, min_agreement=0.99)["passed"]
    (failure,) = _gate(ref, flipped, min_agreement=0.991)["failures"]
    assert failure == "decision agreement 0.9900 < 0.991"


def test_auc_drop_fails_and_auc_gain_passes() -> None:
    y = np.array([0, 1] * 50, dtype=np.int8)
    good = np.where(y == 1, 0.8, 0.2) + np.linspace(0, 0.01, 100)  # perfect ranking: AUC 1
    noisy = good.copy()
    noisy[:20] = noisy[:20][::-1]  # some pairs swapped: AUC drops
    ref = np.stack([good, good], axis=1)
    worse = np.stack([noisy, good], axis=1)
    truth = {"a": y, "b": y}
    report = _gate(ref, worse, truth, max_auc_drop=0.001)
    assert not report["passed"]
    assert report["per_label"]["a"]["auc_reference"] == 1.0 and report["per_label"]["a"]["auc_diff"] < 0
    assert report["failures"][0].startswith("a: AUC drops by ")
    assert _gate(ref, worse, truth, max_auc_drop=0.5)["passed"]
    better = _gate(worse, ref, truth, max_auc_drop=0.0)
    assert better["passed"], "a candidate that ranks better is not refused for it"
    assert better["per_label"]["a"]["auc_diff"] > 0


@pytest.mark.parametrize("offset", [0.0, 1e-9])
def test_decisions_at_the_threshold_count_as_positive(offset: float) -> None:
    ref = np.full((4, 2), 0.5)
    cand = ref + offset
    assert _gate(ref, cand, min_agreement=1.0)["decision_agreement"] == 1.0
