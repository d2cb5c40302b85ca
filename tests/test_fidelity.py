"""The fidelity gate's criteria, each alone, on outputs built to sit either side of its tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.fidelity import compare
from converters.spec import Tolerance

pytestmark = pytest.mark.unit

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
    exact = np.array([[0.5]]), np.array([[0.25]])  # a difference of exactly 0.25, in binary as in decimal
    report = compare(("x",), {"x": 0.9}, *exact, Tolerance(max_abs_diff=0.25, mean_abs_diff=1.0))
    assert report["max_abs_diff"] == 0.25 and report["passed"], "at the tolerance is within it"
    report = compare(("x",), {"x": 0.9}, *exact, Tolerance(max_abs_diff=1.0, mean_abs_diff=0.25))
    assert report["mean_abs_diff"] == 0.25 and report["passed"], "at the tolerance is within it"


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


def test_per_label_agreement_sensitivity_specificity_and_the_auc_message() -> None:
    """Counted by hand: 6 images, one label; the candidate flips a positive (index 1) to negative and a negative
    (index 3) to positive."""
    truth = {"x": np.array([1, 1, 1, 0, 0, 0], np.int8)}
    reference = np.array([[0.9], [0.8], [0.3], [0.2], [0.6], [0.1]])
    candidate = np.array([[0.9], [0.2], [0.3], [0.7], [0.6], [0.1]])
    report = compare(("x",), {"x": 0.5}, reference, candidate, Tolerance(min_agreement=0.0), truth)
    entry = report["per_label"]["x"]
    assert entry["decision_agreement"] == pytest.approx(4 / 6) and report["decision_agreement"] == pytest.approx(4 / 6)
    assert entry["sensitivity_reference"] == pytest.approx(2 / 3) and entry["sensitivity_candidate"] == pytest.approx(
        1 / 3
    )
    assert entry["specificity_reference"] == pytest.approx(2 / 3) and entry["specificity_candidate"] == pytest.approx(
        1 / 3
    )
    drop = entry["auc_reference"] - entry["auc_candidate"]
    assert drop > 0.01
    assert f"x: AUC drops by {drop:.4f} > 0.01" in report["failures"]


def test_sensitivity_and_specificity_where_one_class_is_missing() -> None:
    reference = np.array([[0.9], [0.2]])
    only_positives = {"x": np.array([1, 1], np.int8)}
    entry = compare(("x",), {"x": 0.5}, reference, reference, Tolerance(), only_positives)["per_label"]["x"]
    assert entry["sensitivity_reference"] == 0.5 and entry["specificity_reference"] is None
    assert entry["auc_reference"] is None and entry["auc_diff"] is None
    only_negatives = {"x": np.array([0, 0], np.int8)}
    entry = compare(("x",), {"x": 0.5}, reference, reference, Tolerance(), only_negatives)["per_label"]["x"]
    assert entry["sensitivity_reference"] is None and entry["specificity_reference"] == 0.5
    assert entry["auc_reference"] is None and entry["auc_diff"] is None


def test_the_auc_of_a_single_positive_is_computed() -> None:
    """One positive among four is enough for an AUC (the positive against each negative)."""
    reference = np.array([[0.9], [0.2], [0.95], [0.1]])
    candidate = np.array([[0.9], [0.2], [0.3], [0.1]])
    truth = {"x": np.array([1, 0, 0, 0], np.int8)}
    entry = compare(("x",), {"x": 0.5}, reference, candidate, Tolerance(min_agreement=0.0), truth)["per_label"]["x"]
    assert entry["auc_reference"] == pytest.approx(2 / 3) and entry["auc_candidate"] == 1.0
    assert entry["auc_diff"] == pytest.approx(1 / 3)


def test_latency_is_measured_in_milliseconds_of_the_run_itself(tmp_path: Path) -> None:
    import time

    from converters.fidelity import latency
    from edge_app.config import EMBEDDED_BUNDLE

    x = np.zeros((4, 1, 64, 64), np.float32)
    t0 = time.perf_counter()
    got = latency(EMBEDDED_BUNDLE / "model.onnx", "image", x, runs=20, threads=1)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert 0 < got["p50_ms"] <= got["p95_ms"] and got["p50_ms"] * 20 < wall_ms, "each run's own time, in ms"
    assert got["p50_ms"] * 20 > wall_ms / 20, "milliseconds, not seconds: the runs are much of the wall time"
    assert got["images_per_s"] == pytest.approx(4 * 1e3 / got["p50_ms"], rel=0.5), "4 images a run"
    assert got["images_per_s"] > 4 * 1e3 / wall_ms


def test_latency_times_each_run_from_its_own_start() -> None:
    """With a clock that reads 1.0 s at each run's start and 3.5 s at its end (a machine just booted), every
    run took 2.5 s: the median says 2500 ms."""
    import itertools

    from converters.fidelity import latency
    from edge_app.config import EMBEDDED_BUNDLE

    clock = itertools.cycle([1.0, 3.5])
    x = np.zeros((2, 1, 64, 64), np.float32)
    got = latency(EMBEDDED_BUNDLE / "model.onnx", "image", x, runs=5, threads=1, clock=lambda: next(clock))
    assert got == {"p50_ms": 2500.0, "p95_ms": 2500.0, "images_per_s": 0.8}


def test_the_cpu_speed_up_decides_only_where_the_cpu_runs_the_model() -> None:
    from converters.fidelity import GateReport
    from converters.spec import Tolerance

    tolerance = Tolerance(min_speedup=1.1)
    for gated, speedup, passed in ((True, 1.09, False), (True, 1.1, True), (True, 1.5, True), (False, 0.5, True)):
        report = GateReport(passed=True, failures=[])
        report.check_speedup(speedup, tolerance, gated)
        assert report["speedup_batch1"] == speedup and report["speedup_gated"] is gated
        assert report["passed"] is passed, (gated, speedup)
        if not passed:
            assert report["failures"] == ["INT8 is not faster: speed-up 1.09x < 1.1x"]
    report = GateReport(passed=True, failures=[])
    report.check_quantized(3)
    assert report["passed"]
    report.check_quantized(0)
    assert not report["passed"] and "no node is left in INT8" in report["failures"][0]
