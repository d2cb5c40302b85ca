"""From raw outputs to findings: the decision rule at the threshold, each activation, the heatmap of any label."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.findings import Finding, findings, heatmap, probabilities
from edge_app.bundles.manifest import OutputSpec
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
    with pytest.raises(InferenceError, match="non-finite"):
        probabilities(OutputSpec(name="s", activation="none"), 2, np.array([[np.nan, 0.0]], np.float32))


def test_findings_follow_the_manifest_label_order_and_thresholds() -> None:
    n = len(MANIFEST.labels)
    logits = np.linspace(-2.0, 2.0, n, dtype=np.float32)[np.newaxis]
    found = findings(MANIFEST, {"logits": logits, "cam": np.zeros((1, n, 4, 4), np.float32)})
    assert [f.label for f in found] == list(MANIFEST.labels)
    assert [f.threshold for f in found] == [MANIFEST.thresholds[label] for label in MANIFEST.labels]
    assert np.allclose([f.probability for f in found], 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64))))


def test_the_heatmap_is_the_asked_labels_local_probability_never_scaled_per_image() -> None:
    n = len(MANIFEST.labels)
    cam = np.random.default_rng(0).normal(size=(2, n, 4, 4)).astype(np.float32)
    outputs = {"logits": np.zeros((2, n), np.float32), "cam": cam}
    for index in (0, 1):
        for k, label in enumerate(MANIFEST.labels):
            hm = heatmap(MANIFEST, outputs, label, index=index)
            assert hm is not None and hm.label == label and hm.values.dtype == np.float32
            assert np.allclose(hm.values, 1.0 / (1.0 + np.exp(-cam[index, k].astype(np.float64))), atol=1e-6)
    faint = {"logits": np.zeros((1, n), np.float32), "cam": np.full((1, n, 4, 4), -4.0, np.float32)}
    faint["cam"][0, 1, 0, 0] = -3.0  # the strongest place of an image with nothing there is still faint
    hm = heatmap(MANIFEST, faint, MANIFEST.labels[1])
    assert hm is not None and hm.values.max() < 0.05, "not stretched to full strength"


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        ("softmax", np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()),  # across the labels at each place
        ("none", np.array([1.0, 1.0])),  # probabilities already: clipped to [0, 1]
    ],
)
def test_the_heatmap_follows_the_output_s_activation(activation: str, expected: np.ndarray) -> None:
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
    cam = np.array([[[[1.0]], [[3.0]]]], np.float32)  # (1, labels, 1, 1)
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
