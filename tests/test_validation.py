"""How good the model is, said where the result is shown: thresholds at a stated operating point, each label's
figures, labels their validation does not support never positive, one triage score per study."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from pydantic import ValidationError

from converters.validation import OperatingPoint, ValidationRule, auc_interval, figures, threshold_at, validate
from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from support.pdf import pdf_lines

pytestmark = pytest.mark.integration

MANIFEST = load_bundle(EMBEDDED_BUNDLE).manifest
# Ten images: scores of the five negatives 0.1-0.5, of the five positives 0.3-0.7.
Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.3, 0.4, 0.5, 0.6, 0.7])


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (OperatingPoint(specificity=0.8), 0.5),  # 0.5: four of five negatives below it, four positives at or above
        (OperatingPoint(specificity=0.6), 0.4),
        (OperatingPoint(sensitivity=1.0), 0.3),  # every positive found, the fewest negatives with it
        (OperatingPoint(sensitivity=0.6), 0.5),
        (OperatingPoint(youden=True), 0.6),  # every threshold from 0.3 to 0.6 ties at 0.4: the highest
        (OperatingPoint(), 0.77),  # no operating point: the spec's threshold
    ],
)
def test_the_threshold_is_chosen_at_the_operating_point(point: OperatingPoint, expected: float) -> None:
    assert threshold_at(Y, P, point, 0.77) == pytest.approx(expected)


def test_one_class_keeps_the_given_threshold_and_one_point_at_a_time() -> None:
    assert threshold_at(np.zeros(5), P[:5], OperatingPoint(specificity=0.8), 0.42) == 0.42
    with pytest.raises(ValidationError, match="give one of specificity, sensitivity or youden"):
        OperatingPoint(specificity=0.8, youden=True)
    assert OperatingPoint(specificity=0.8).describe() == "the highest sensitivity at specificity 0.80 or more"
    assert OperatingPoint(sensitivity=0.9).describe() == "the highest specificity at sensitivity 0.90 or more"


def test_a_label_is_validated_only_where_its_figures_support_it() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(40)].astype(int)
    strong = np.r_[rng.uniform(0, 0.6, 60), rng.uniform(0.4, 1.0, 40)]
    rule = ValidationRule(min_positives=10)
    good = figures("a", y, strong, 0.5, rule, seed=0)
    assert good.validated and good.why == "" and good.positives == 40 and good.negatives == 60
    assert good.auc is not None and good.auc_95ci is not None and good.auc_95ci[0] > 0.5
    decided = strong >= 0.5
    assert good.sensitivity == round(float(decided[y == 1].mean()), 3)
    assert good.specificity == round(float((~decided[y == 0]).mean()), 3)
    chance = figures("a", y, rng.uniform(0, 1, 100), 0.5, rule, seed=0)
    assert not chance.validated and chance.why.startswith("its AUC's 95 % interval does not lie above 0.50")
    few = figures("a", y, strong, 0.5, ValidationRule(min_positives=41), seed=0)
    assert few.why == "too few validation images (40 positive, 60 negative)"
    unclaimed = figures("a", y, strong, 0.5, ValidationRule(claimed=("b",)), seed=0)
    assert unclaimed.why == "not claimed by its makers"


def test_the_rule_is_frozen_and_its_auc_bound_anywhere_from_0_to_1() -> None:
    point = OperatingPoint(specificity=0.8)
    with pytest.raises(ValidationError, match="Instance is frozen"):
        point.specificity = 0.5  # type: ignore[misc]
    assert point.specificity == 0.8
    strict = ValidationRule(min_auc_lower=0.95, min_positives=1)
    assert strict.describe().startswith("AUC 95 % interval above 0.95")
    assert ValidationRule(min_auc_lower=1.0).min_auc_lower == 1.0
    for out_of_range in (-0.01, 1.01):
        with pytest.raises(ValidationError, match="min_auc_lower"):
            ValidationRule(min_auc_lower=out_of_range)


def test_the_auc_interval_resamples_every_image_alike_and_only_two_class_draws() -> None:
    """Two images, one of each class: the only resamples with both classes hold one positive and one negative, AUC 1;
    the one-class resamples (their AUC undefined) are left out, not counted as NaN."""
    assert auc_interval(np.array([0, 1]), np.array([0.2, 0.8]), seed=0, n_boot=100) == (1.0, (1.0, 1.0))
    assert auc_interval(np.array([1, 0]), np.array([0.8, 0.2]), seed=0, n_boot=100) == (1.0, (1.0, 1.0))
    # Ten negatives below ten positives but one, scored below them all: a resample's AUC falls with each copy of
    # that one. Drawn as often as any other image, it leaves the interval at 0.667-1 (2000 resamples, the default;
    # seeds 0-5, the image first or last alike); drawn twice as often, at about 0.55.
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    p = np.r_[np.linspace(0.3, 0.5, 10), np.linspace(0.6, 0.9, 9), [0.0]]
    assert auc_interval(y, p, seed=0) == (0.9, (0.667, 1.0))


def test_validate_chooses_on_one_set_or_measures_only() -> None:
    truth = {"a": Y}
    probs = np.stack([P, P], axis=1)
    chosen, figs = validate(("a", "b"), truth, probs, {"a": 0.9, "b": 0.9}, ValidationRule(min_positives=1), "ten")
    assert chosen == {"a": 0.9, "b": 0.9} and figs.data == "ten", "no operating point: the spec's thresholds"
    assert figs.labels["b"].why == "no ground truth given" and not figs.labels["b"].validated
    assert figs.operating_point == "the spec's thresholds"
    rule = ValidationRule(operating_point=OperatingPoint(specificity=0.8), min_positives=1)
    kept, measured = validate(("a",), truth, P[:, None], {"a": 0.35}, rule, "ten", chosen_on="85 others")
    assert kept == {"a": 0.35} and measured.labels["a"].threshold == 0.35
    assert measured.operating_point == "the highest sensitivity at specificity 0.80 or more on 85 others"


def test_the_reference_bundle_states_its_figures_and_operating_point() -> None:
    validation = MANIFEST.validation
    assert validation is not None
    assert validation.operating_point.startswith("the highest sensitivity at specificity 0.80 or more on 85 images")
    assert [label for label, v in validation.labels.items() if v.validated] == MANIFEST.metrics["claimed_findings"]
    assert not validation.labels["Infiltration"].validated
    for label, v in validation.labels.items():
        assert v.threshold == MANIFEST.thresholds[label] and v.positives + v.negatives == 200


def _png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


def test_the_study_page_shows_each_finding_s_figures_and_the_model_s_card(
    client: FlaskClient, auth: Any, browser: FlaskClient, nih_png: Path
) -> None:
    body = client.post("/api/v1/studies", data={"file": (io.BytesIO(_png(nih_png)), "chest.png")}).get_json()
    [result] = body["images"][0]["results"]
    infiltration = next(f for f in result["findings"] if f["label"] == "Infiltration")
    assert infiltration["validated"] is False and infiltration["positive"] is False
    assert result["triage"] >= 0.0
    auth.login("clinician")
    page = browser.get(f"/studies/{body['uid']}").get_data(as_text=True)
    assert page.count("not validated") == 1, "Infiltration alone"
    assert "Demonstration model: not for clinical use." in page and "About this model" in page
    v = MANIFEST.validation.labels["Effusion"]  # type: ignore[union-attr]
    assert f"AUC {v.auc:.2f} ({v.auc_95ci[0]:.2f}-{v.auc_95ci[1]:.2f})" in page  # type: ignore[index]
    assert "thresholds at the highest sensitivity at specificity 0.80 or more" in page
    pdf = browser.get(f"/studies/{body['uid']}/report.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    text = "\n".join(pdf_lines(pdf.data))
    assert "Demonstration model: not for clinical use." in text
    infiltration_line = next(line for line in text.splitlines() if line.startswith("Infiltration:"))
    assert "not validated" in infiltration_line and "positive" not in infiltration_line
    assert f"AUC {v.auc:.2f} ({v.auc_95ci[0]:.2f}-{v.auc_95ci[1]:.2f}), sens. {v.sensitivity:.2f}" in text  # type: ignore[index]
    assert "Made for: CR/DX CHEST PA/AP." in text
    positive = sorted((f for f in result["findings"] if f["positive"]), key=lambda f: -f["probability"])
    assert [m["label"] for m in result["heatmaps"]] == [f["label"] for f in positive], "each positive, no other"
    heat = positive[0]["label"]
    assert f"Heatmap of {heat}: the model's local probability, 0 to 1." in text, "the most probable by default"
    assert "the model's local probability, 0 to 1" in page, "the tablet's legend"


def test_no_heatmap_where_nothing_is_positive_and_the_page_says_why(
    client: FlaskClient, auth: Any, browser: FlaskClient, nih: Path
) -> None:
    from edge_app.inference.diagnoser import Diagnoser
    from edge_app.runtime import open_runner

    bundle = load_bundle(EMBEDDED_BUNDLE)
    diagnoser = Diagnoser(bundle, open_runner(bundle, threads=1))
    negative = next(
        p
        for p in sorted((nih / "images").glob("*.png"))
        if (d := diagnoser.diagnose(p)).status == "ok" and not any(f.positive for f in d.findings)
    )
    assert diagnoser.diagnose(negative).heatmaps == []
    body = client.post("/api/v1/studies", data={"file": (io.BytesIO(_png(negative)), "n.png")}).get_json()
    [result] = body["images"][0]["results"]
    assert result["heatmaps"] == [] and result["triage"] == 0.0
    auth.login("clinician")
    page = browser.get(f"/studies/{body['uid']}").get_data(as_text=True)
    assert "No heatmap: no finding is positive." in page and "heatmap-toggle" not in page


def test_the_worklist_puts_the_most_urgent_unreviewed_positive_first(
    client: FlaskClient, auth: Any, browser: FlaskClient, nih: Path
) -> None:
    """Two positive studies: the one whose finding is further past its threshold first, though it came first."""
    import re

    posted = []
    for path in sorted((nih / "images").glob("*.png"))[:12]:
        body = client.post("/api/v1/studies", data={"file": (io.BytesIO(_png(path)), path.name)}).get_json()
        result = body["images"][0]["results"][0] if body["images"][0]["results"] else None
        if result is not None and result["status"] == "ok" and result["triage"] > 0:
            posted.append((result["triage"], body["uid"]))
    assert len({t for t, _ in posted}) >= 2, "two positives of different urgency among twelve images"
    auth.login("clinician")
    rows = re.findall(r'<tr class="[^"]*" data-uid="([^"]+)"', browser.get("/").get_data(as_text=True))
    urgent = [uid for _, uid in sorted(posted, key=lambda p: -p[0])]
    assert rows[: len(urgent)] == urgent, "by triage score, highest first, before every other study"
