"""From raw outputs to findings: the decision rule at the threshold, each activation, the heatmap of any label."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.findings import Diagnosis, Finding, GuardCheck, findings, guard_check, heatmap, probabilities
from edge_app.bundles.manifest import GuardComponent, OutputSpec
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import InferenceError

pytestmark = pytest.mark.unit

MANIFEST = load_bundle(EMBEDDED_BUNDLE).manifest


def test_findings_and_heatmaps_are_values_rounded_for_reading() -> None:
    """Probabilities to 6 decimals in JSON; a heatmap, like a finding, cannot be changed once made."""
    import dataclasses

    from edge_app.bundles.findings import Heatmap

    assert Finding("Effusion", 0.123456789, 0.5).as_dict()["probability"] == 0.123457
    with pytest.raises(dataclasses.FrozenInstanceError):
        Heatmap("Effusion", np.zeros((2, 2), np.float32)).label = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        GuardCheck(0.5, "density").score = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Finding("Effusion", 0.1, 0.5).probability = 0.9  # type: ignore[misc]


def test_a_probability_at_its_threshold_is_positive() -> None:
    assert Finding("Effusion", 0.25, 0.25).positive
    assert not Finding("Effusion", np.nextafter(0.25, 0.0), 0.25).positive
    assert Finding("Effusion", 0.9, 0.25).as_dict() == {
        "label": "Effusion",
        "probability": 0.9,
        "threshold": 0.25,
        "positive": True,
        "validated": True,
    }


def test_a_label_its_validation_does_not_support_is_never_positive() -> None:
    """Infiltration's AUC interval reaches below 0.5 in the reference bundle: shown, never positive."""
    unvalidated = Finding("Infiltration", 0.99, 0.25, validated=False)
    assert not unvalidated.positive and unvalidated.as_dict()["validated"] is False
    assert unvalidated.as_dict()["positive"] is False
    assert MANIFEST.validation is not None and not MANIFEST.validated("Infiltration") and MANIFEST.validated("Effusion")
    logits = np.full((1, len(MANIFEST.labels)), 8.0, np.float32)  # every probability near 1
    found = {f.label: f for f in findings(MANIFEST, {"logits": logits})}
    assert not found["Infiltration"].positive and found["Effusion"].positive
    assert not MANIFEST.model_copy(update={"validation": None}).validated("Effusion"), "no validation: none"


@pytest.mark.parametrize(
    ("found", "score"),
    [
        ([], 0.0),
        ([Finding("a", 0.4, 0.5)], 0.0),  # nothing positive
        ([Finding("a", 0.75, 0.5), Finding("b", 0.6, 0.2)], 0.5),  # (0.75 - 0.5) / 0.5 and (0.6 - 0.2) / 0.8
        ([Finding("a", 0.9, 0.5, validated=False), Finding("b", 0.6, 0.2)], 0.5),  # the unvalidated one not counted
        ([Finding("a", 1.0, 1.0)], 0.0),
        ([Finding("a", 0.55, 0.1)], 0.5),
    ],
)
def test_the_triage_score_is_the_largest_share_past_a_threshold(found: list[Finding], score: float) -> None:
    from edge_app.bundles.findings import triage_score

    assert triage_score(found) == pytest.approx(score)


def test_the_triage_score_is_kept_to_four_decimals() -> None:
    from edge_app.bundles.findings import triage_score

    assert triage_score([Finding("a", 0.123456, 0.0)]) == 0.1235


def test_sigmoid() -> None:
    scores = np.array([[0.0, 2.0, -2.0]], dtype=np.float32)
    probs = probabilities(OutputSpec(name="s", activation="sigmoid"), 3, scores)
    assert np.allclose(probs, 1.0 / (1.0 + np.exp(-scores.astype(np.float64))))


def test_softmax_sums_to_one_per_image() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    probs = probabilities(OutputSpec(name="s", activation="softmax"), 3, scores)
    assert np.allclose(probs.sum(axis=1), 1.0)
    e = np.exp([1.0, 2.0, 3.0])
    assert np.allclose(probs[0], e / e.sum())
    assert np.allclose(probs[1], [1.0, 0.0, 0.0]), "stable for large scores"


def test_none_passes_probabilities_through() -> None:
    scores = np.array([[0.1, 0.7]], dtype=np.float32)
    assert np.allclose(probabilities(OutputSpec(name="s", activation="none"), 2, scores), scores)


def test_wrong_score_count_and_non_finite_scores_are_inference_errors() -> None:
    with pytest.raises(InferenceError, match="the model gave 3 scores for 2 labels"):
        probabilities(OutputSpec(name="s", activation="sigmoid"), 2, np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceError, match="the model gave 1 scores for 2 labels"):
        probabilities(OutputSpec(name="s", activation="sigmoid"), 2, np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceError, match="non-finite"):
        probabilities(OutputSpec(name="s", activation="none"), 2, np.array([[np.nan, 0.0]], np.float32))


def test_a_thousand_labels_are_counted_by_value() -> None:
    """An ImageNet-sized head: the count of scores and of labels compared as numbers, past CPython's small ints."""
    probs = probabilities(OutputSpec(name="s", activation="softmax"), 1000, np.zeros((1, 1000), np.float32))
    assert probs.shape == (1, 1000) and np.allclose(probs, 0.001)


def test_findings_follow_the_manifest_label_order_and_thresholds() -> None:
    """Of a batch's first image unless told which."""
    n = len(MANIFEST.labels)
    logits = np.stack([np.linspace(-2.0, 2.0, n, dtype=np.float32), np.full(n, 3.0, np.float32)])
    found = findings(MANIFEST, {"logits": logits, "cam": np.zeros((2, n, 4, 4), np.float32)})
    assert [f.label for f in found] == list(MANIFEST.labels)
    assert [f.threshold for f in found] == [MANIFEST.thresholds[label] for label in MANIFEST.labels]
    assert np.allclose([f.probability for f in found], 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64))))


def test_the_heatmap_is_the_asked_labels_local_probability_never_scaled_per_image() -> None:
    """Of a batch's first image unless told which."""
    n = len(MANIFEST.labels)
    cam = np.random.default_rng(0).normal(size=(2, n, 4, 4)).astype(np.float32)
    outputs = {"logits": np.zeros((2, n), np.float32), "cam": cam}
    for index in (0, 1):
        for k, label in enumerate(MANIFEST.labels):
            hm = heatmap(MANIFEST, outputs, label, index=index)
            assert hm is not None and hm.label == label and hm.values.dtype == np.float32
            assert np.allclose(hm.values, 1.0 / (1.0 + np.exp(-cam[index, k].astype(np.float64))), atol=1e-6)
    first = heatmap(MANIFEST, outputs, MANIFEST.labels[0])
    assert first is not None and np.allclose(first.values, 1.0 / (1.0 + np.exp(-cam[0, 0].astype(np.float64))))
    faint = {"logits": np.zeros((1, n), np.float32), "cam": np.full((1, n, 4, 4), -4.0, np.float32)}
    faint["cam"][0, 1, 0, 0] = -3.0  # the strongest place of an image with nothing there is still faint
    hm = heatmap(MANIFEST, faint, MANIFEST.labels[1])
    assert hm is not None and hm.values.max() < 0.05, "not stretched to full strength"


@pytest.mark.parametrize(
    ("activation", "scores", "expected"),
    [
        ("softmax", [1.0, 3.0], np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()),  # across the labels at each place
        ("softmax", [1000.0, 0.0], [1.0, 0.0]),  # stable for large scores
        ("none", [1.0, 3.0], [1.0, 1.0]),  # probabilities already: clipped to [0, 1]
        ("none", [-0.5, 0.3], [0.0, 0.3]),
        ("sigmoid", [np.nan, 0.0], [0.0, 0.5]),  # a place the model gave no number for shows nothing
    ],
)
def test_the_heatmap_follows_the_output_s_activation(
    activation: str, scores: list[float], expected: list[float]
) -> None:
    task = "multiclass" if activation == "softmax" else "multilabel"
    manifest = MANIFEST.model_copy(
        update={
            "labels": ("a", "b"),
            "task": task,
            "thresholds": {"a": 0.5, "b": 0.5},
            "validation": None,
            "output": OutputSpec(name="s", activation=activation, heatmap="m"),  # type: ignore[arg-type]
        }
    )
    cam = np.array(scores, np.float32).reshape(1, 2, 1, 1)  # (1, labels, 1, 1)
    for k, label in enumerate(("a", "b")):
        hm = heatmap(manifest, {"s": np.zeros((1, 2), np.float32), "m": cam}, label)
        assert hm is not None and np.allclose(hm.values, expected[k])


def test_the_heatmap_png_spans_the_grey_range() -> None:
    import io

    from PIL import Image

    from edge_app.bundles.findings import Heatmap, heatmap_png

    values = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    png = Image.open(io.BytesIO(heatmap_png(Heatmap("Effusion", values))))
    assert png.mode == "L" and png.size == (2, 2)
    assert np.array_equal(np.asarray(png), [[0, 128], [64, 255]])


GUARDED = {
    "logits": np.zeros((2, len(MANIFEST.labels)), np.float32)
}  # the reference bundle's guard: density, orientation


@pytest.mark.parametrize(("score", "outside"), [(0.5, True), (0.0, False), (-0.5, False)])
def test_an_image_is_outside_only_past_a_guard_threshold(score: float, outside: bool) -> None:
    assert GuardCheck(score, "density").outside is outside


def test_the_guard_s_verdict_is_its_largest_margin_of_the_batch_s_first_image_unless_told_which() -> None:
    """Density 7.0 over its threshold 6.493807, orientation -2.0 under its -1.124334: outside, by density."""
    assert MANIFEST.guard is not None and [c.threshold for c in MANIFEST.guard.components] == [6.493807, -1.124334]
    outputs = {**GUARDED, "input_guard": np.array([[7.0, -2.0], [0.0, 0.0]], np.float32)}
    check = guard_check(MANIFEST, outputs)
    assert check is not None and check.as_dict() == {"score": 0.5062, "component": "density", "outside": True}
    assert guard_check(MANIFEST, outputs, 1) == GuardCheck(1.124334, "orientation")
    assert guard_check(MANIFEST.model_copy(update={"guard": None}), GUARDED) is None, "an older bundle: no guard"


@pytest.mark.parametrize(
    ("scores", "verdict"),
    [
        ([np.nan, 0.0], GuardCheck(1e9, "density")),  # no evidence the image is what the model reads: outside
        ([0.0, np.inf], GuardCheck(1e9, "orientation")),
        ([-np.inf, -np.inf], GuardCheck(-1e9, "density")),  # far inside
    ],
)
def test_a_guard_score_not_a_number_or_infinite_is_a_margin_of_a_billion(
    scores: list[float], verdict: GuardCheck
) -> None:
    assert guard_check(MANIFEST, {**GUARDED, "input_guard": np.array([scores], np.float32)}) == verdict


@pytest.mark.parametrize("count", [1, 3])
def test_a_guard_giving_another_count_of_scores_is_an_inference_error(count: int) -> None:
    with pytest.raises(InferenceError, match=f"^the guard gave {count} scores for 2 components$"):
        guard_check(MANIFEST, {**GUARDED, "input_guard": np.zeros((1, count), np.float32)})


def test_a_guard_of_many_components_is_counted_by_value() -> None:
    """The count of scores and of components compared as numbers, past CPython's small ints."""
    assert MANIFEST.guard is not None
    components = tuple(GuardComponent(name=f"c{i}", method="m", threshold=0.0) for i in range(300))
    manifest = MANIFEST.model_copy(update={"guard": MANIFEST.guard.model_copy(update={"components": components})})
    assert guard_check(manifest, {"input_guard": np.zeros((1, 300), np.float32)}) == GuardCheck(0.0, "c0")


MODEL = {"name": "cxr-reference", "version": "1.1.1", "precision": "fp32", "runner": "onnxruntime"}


def test_a_diagnosis_s_record_says_what_its_status_has() -> None:
    """Findings, positives and triage for "ok" alone; the guard's verdict for "ok" and "outside" (None: not
    checked); the reason where there is one; timings to 0.01 ms."""
    guard = GuardCheck(-0.25, "density")
    found = [Finding("Effusion", 0.75, 0.5), Finding("Nodule", 0.25, 0.5)]
    ok = Diagnosis("a.png", "ok", MODEL, guard=guard, triage=0.5, findings=found, timings_ms={"infer": 1.23456})
    assert ok.as_dict() == {
        "file": "a.png",
        "status": "ok",
        "model": MODEL,
        "guard": {"score": -0.25, "component": "density", "outside": False},
        "findings": [f.as_dict() for f in found],
        "positive": ["Effusion"],
        "triage": 0.5,
        "timings_ms": {"infer": 1.23},
    }
    assert Diagnosis("a.png", "ok", MODEL).as_dict() == {
        "file": "a.png",
        "status": "ok",
        "model": MODEL,
        "guard": None,
        "findings": [],
        "positive": [],
        "triage": 0.0,
        "timings_ms": {},
    }
    outside = Diagnosis("a.png", "outside", MODEL, reason="not a chest", guard=GuardCheck(2.0, "orientation"))
    assert outside.as_dict() == {
        "file": "a.png",
        "status": "outside",
        "reason": "not a chest",
        "model": MODEL,
        "guard": {"score": 2.0, "component": "orientation", "outside": True},
        "timings_ms": {},
    }
    for status in ("rejected", "failed"):
        refused = Diagnosis("a.png", status, MODEL, reason="why", findings=found)
        assert refused.as_dict() == {
            "file": "a.png",
            "status": status,
            "reason": "why",
            "model": MODEL,
            "timings_ms": {},
        }
