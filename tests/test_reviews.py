"""One review per study: every finding of each image's latest result gets a verdict (agree unless the clinician
disagrees), the study is read or referred, and the per-result rows the monitoring counts are kept."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from edge_app.bundles.findings import Finding
from edge_app.errors import UserError
from edge_app.imaging.header import ImageHeader
from edge_app.store import ModelResult, Outcome, Store
from edge_app.store.monitoring import Monitoring
from edge_app.store.reviews import ResultsChanged, Reviews

pytestmark = pytest.mark.unit

MODEL = {"name": "m", "version": "1", "precision": "fp32", "runner": "onnxruntime"}


def _result(*findings: tuple[str, float]) -> ModelResult:
    return ModelResult("ok", MODEL, "b" * 64, findings=[Finding(label, p, 0.5).as_dict() for label, p in findings])


def _image(store: Store, sop: str, *results: ModelResult) -> int:
    """An image of study 1.2.3 read by the model (each result in turn, the last the latest); its id."""
    digest, size = store.put_stream(io.BytesIO(sop.encode()))
    header = ImageHeader("dicom", "1.2.3", "1.2.3.4", sop, modality="CR", body_part="CHEST", patient_id="P1")
    added = store.add_image(digest, size, "a.dcm", "api", header)
    job = store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None
    store.finish_job(job, Outcome("done", results=list(results)))
    return int(added.image_id)


@pytest.fixture
def two_images(tmp_path: Path) -> Store:
    """Study 1.2.3: a PA read twice (the second result the latest) and a lateral read once."""
    store = Store(tmp_path)
    _image(store, "1.2.3.4.1", _result(("Effusion", 0.1)), _result(("Effusion", 0.8), ("Nodule", 0.2)))
    _image(store, "1.2.3.4.2", _result(("Effusion", 0.7), ("Nodule", 0.1)))
    return store


def _latest(store: Store) -> dict[int, int]:
    """Image id -> its latest result's id."""
    return {i.id: i.latest_ok.id for i in store.get_study("1.2.3").images if i.latest_ok}


def test_agree_with_all_is_one_review_of_every_finding_of_every_image(two_images: Store) -> None:
    reviews = Reviews(two_images)
    saved = reviews.review_study("1.2.3", "dr-ade", "read", "all as the AI says")
    latest = _latest(two_images)
    assert saved.verdicts == {rid: {"Effusion": "agree", "Nodule": "agree"} for rid in latest.values()}
    assert reviews.of_study("1.2.3") == [saved] and saved.disagreements() == []
    for image_id, result_id in latest.items():
        (row,) = reviews.of_image(image_id)
        assert (row.result_id, row.author, row.note) == (result_id, "dr-ade", "all as the AI says")
    assert reviews.states(["1.2.3", "9.9"]) == {"1.2.3": "read"}


def test_a_disagreement_on_one_finding_and_a_referral(two_images: Store) -> None:
    reviews = Reviews(two_images)
    pa, lateral = _latest(two_images).values()
    reviews.review_study("1.2.3", "dr-a", "read")
    saved = reviews.review_study("1.2.3", "dr-b", "referred", "see the surgeon", disagree=[(lateral, "Nodule")])
    assert saved.verdicts[pa] == {"Effusion": "agree", "Nodule": "agree"}
    assert saved.verdicts[lateral] == {"Effusion": "agree", "Nodule": "disagree"}
    assert saved.disagreements() == [(lateral, "Nodule")]
    assert [(r.author, r.state) for r in reviews.of_study("1.2.3")] == [("dr-b", "referred"), ("dr-a", "read")]
    assert reviews.states(["1.2.3"]) == {"1.2.3": "referred"}, "the newest review's state"
    monitoring = Monitoring(two_images)
    monitoring.catch_up()
    counts = monitoring.weekly("b" * 64)
    assert sum(c.fn for c in counts.values()) == 1, "the AI-negative nodule the clinician marked positive"
    assert sum(c.tp + c.tn for c in counts.values()) == 3


def test_a_review_of_results_no_longer_the_latest_or_of_unknown_findings_is_refused(two_images: Store) -> None:
    reviews = Reviews(two_images)
    pa, lateral = _latest(two_images).values()
    with pytest.raises(ResultsChanged):
        reviews.review_study("1.2.3", "dr-a", "read", seen=[pa - 1, lateral])
    with pytest.raises(UserError, match="no finding"):
        reviews.review_study("1.2.3", "dr-a", "read", disagree=[(pa - 1, "Effusion")])
    with pytest.raises(UserError, match="state"):
        reviews.review_study("1.2.3", "dr-a", "seen")
    with pytest.raises(UserError, match="2000"):
        reviews.review_study("1.2.3", "dr-a", "read", "x" * 2001)
    assert reviews.of_study("1.2.3") == [] and reviews.states(["1.2.3"]) == {}
    assert reviews.review_study("1.2.3", "dr-a", "read", seen=[pa, lateral]).verdicts.keys() == {pa, lateral}


def test_a_study_no_model_read_can_be_marked_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest, size = store.put_stream(io.BytesIO(b"not an image"))
    header = ImageHeader("png", "7.7", "7.7.1", "7.7.1.1")
    store.add_image(digest, size, "a.png", "api", header, reason="not an image")
    saved = Reviews(store).review_study("7.7", "dr-a", "referred", "an ultrasound: to the sonographer")
    assert saved.verdicts == {} and Reviews(store).states(["7.7"]) == {"7.7": "referred"}


def test_version_13_makes_each_earlier_review_a_study_review_read(tmp_path: Path) -> None:
    """A version-12 database's reviews: each becomes a study review, read, with its id, author, time and note."""
    store = Store(tmp_path)
    _image(store, "1.2.3.4.1", _result(("Effusion", 0.8)))
    (result_id,) = _latest(store).values()
    store.close()
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    db.execute("ALTER TABLE outbox DROP COLUMN result_id")  # version 16's
    db.execute("DROP INDEX monitor_results_station")  # version 15's
    db.execute("DROP TABLE documents_due")  # version 14's
    db.execute("DROP INDEX reviews_study_review")
    db.execute("DROP TABLE study_reviews")
    db.execute("ALTER TABLE reviews DROP COLUMN study_review_id")
    db.execute(
        "INSERT INTO reviews (id, image_id, result_id, author, at, verdicts, note) "
        "SELECT 5, image_id, id, 'dr-old', '2025-01-02T03:04:05Z', '{\"Effusion\": \"disagree\"}', 'old note' "
        "FROM results WHERE id = ?",
        (result_id,),
    )
    db.execute("PRAGMA user_version = 12")
    db.commit()
    db.close()
    store = Store(tmp_path)
    (old,) = Reviews(store).of_study("1.2.3")
    assert (old.id, old.author, old.at, old.state) == (5, "dr-old", "2025-01-02T03:04:05Z", "read")
    assert old.note == "old note"
    assert old.verdicts == {result_id: {"Effusion": "disagree"}}
