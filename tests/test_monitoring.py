"""The model watched in the field: clinicians' agreement with its findings per week, over its service and by patient
group, beside the bundle's validation, counted from reviews made through the store's review API; a group with planted
disagreement flagged, one without not; each flag raised, cleared and acknowledged in the audit log."""

from __future__ import annotations

import io
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.findings import Finding
from edge_app.config import Settings
from edge_app.imaging.header import ImageHeader, read_header
from edge_app.outputs.performance import Expected, figures
from edge_app.outputs.shares import Share
from edge_app.service import Service
from edge_app.store import ModelResult, Outcome
from edge_app.store.monitoring import Monitoring
from support.dicom import dicom_bytes, dicom_file
from support.pdf import pdf_lines

pytestmark = pytest.mark.integration

BUNDLE = load_bundle(Settings().model.bundle)
MODEL = {"name": "cxr-reference", "version": "1", "precision": "fp32", "runner": "onnxruntime"}
_uids = count(1)


def _arrive(svc: Service, sex: str, age: str, station: str, status: str = "ok", positive: bool = True) -> int:
    """An image of a patient of this sex and age ("040Y") from this station, diagnosed as the worker records it
    (Abnormal positive or not, Effusion negative); the result's id."""
    n = next(_uids)
    header = ImageHeader(
        "dicom", f"1.2.9.{n}", f"1.2.9.{n}.1", f"1.2.9.{n}.1.1", modality="CR", patient_id=f"P{n}",
        patient_sex=sex, age_years=int(age[:3]), manufacturer="ACME", device_model="X1", station=station,
    )  # fmt: skip
    digest, size = svc.store.put_stream(io.BytesIO(f"image {n}".encode()))
    added = svc.store.add_image(digest, size, "a.dcm", "api", header)
    job = svc.store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None and job.image_id == added.image_id
    abnormal = Finding("Abnormal", 0.9 if positive else 0.1, 0.5645)
    findings = [abnormal.as_dict(), Finding("Effusion", 0.0, 0.2654).as_dict()]
    result = ModelResult(status, MODEL, BUNDLE.sha256, findings=findings if status == "ok" else [])  # type: ignore[arg-type]
    svc.store.finish_job(job, Outcome("done" if status == "ok" else "outside", results=[result]))  # type: ignore[arg-type]
    return int(svc.store.query("SELECT max(id) FROM results")[0][0])


@pytest.fixture
def front(service: Callable[..., Service], make_settings: Callable[..., Settings]) -> Service:
    """The front alone (no worker: the test records results as the worker would), small groups counted."""
    settings = make_settings(monitoring={"min_reviews": 10, "min_group_size": 5, "margin": 0.10})
    return service(settings, role="front")


def _review(svc: Service, result_id: int, abnormal: str, **more: str) -> None:
    svc.reviews.add(result_id, "dr-a", {"Abnormal": abnormal, "Effusion": "agree", **more})


def _plant(svc: Service) -> None:
    """Women: 60 reviewed positives, 58 agreed; 5 more images refused by the guard. Men: 20 reviewed positives, 10
    agreed. Over all: 68 of 80."""
    for i in range(60):
        _review(svc, _arrive(svc, "F", "040Y", "ROOM-1"), "agree" if i >= 2 else "disagree")
    for _ in range(5):
        _arrive(svc, "F", "040Y", "ROOM-1", status="outside")
    for i in range(20):
        _review(svc, _arrive(svc, "M", "040Y", "ROOM-1"), "agree" if i >= 10 else "disagree")


@pytest.mark.parametrize(
    ("age", "birth", "years"),
    [
        ("045Y", "", 45.0),
        ("006M", "", 0.5),
        ("010W", "", 0.19),
        ("005D", "", 0.01),
        ("45Y", "19800601", 20.0),  # not an AS value: the birth date
        ("", "19800601", 20.0),
        ("", "", None),
    ],
)
def test_the_header_keeps_what_the_groups_need(tmp_path: Any, age: str, birth: str, years: float | None) -> None:
    """Sex, age (Patient Age, else Study Date less Patient's Birth Date) and the unit apart, from a real CR file."""
    import pydicom

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.PatientSex, ds.PatientAge, ds.PatientBirthDate, ds.StudyDate = "f", age, birth, "20000601"
    ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = "ACME", "X1", "ROOM-1"
    (tmp_path / "a.dcm").write_bytes(dicom_bytes(ds))
    header = read_header(tmp_path / "a.dcm", "test")
    unit = (header.manufacturer, header.device_model, header.station)
    assert header.patient_sex == "F" and unit == ("ACME", "X1", "ROOM-1")
    assert header.age_years == (pytest.approx(years, abs=0.01) if years is not None else None)
    assert ImageHeader.from_dict(header.as_dict()) == header, "as the store keeps it"


def test_wilson_interval_matches_a_hand_computation() -> None:
    low, high = Share(10, 20).interval or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.2993, 0.7007)
    low, high = Share(0, 10).interval or (1, 1)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert Share(0, 0).interval is None and Share(0, 0).value is None


def test_validation_figures_at_the_validation_prevalence() -> None:
    """Abnormal: sensitivity 0.601, specificity 0.656 on 168 positive and 32 negative images."""
    expected = Expected.of(BUNDLE.manifest, "Abnormal")
    tp, fp, fn, tn = 0.601 * 168, 0.344 * 32, 0.399 * 168, 0.656 * 32
    assert expected.ppv == pytest.approx(tp / (tp + fp)) and expected.missed == pytest.approx(fn / (fn + tn))
    assert not Expected.of(BUNDLE.manifest, "Infiltration").validated


def test_a_group_with_planted_disagreement_is_flagged_and_one_without_is_not(front: Service) -> None:
    _plant(front)
    assert front.monitor is not None
    (bundle,) = front.monitor.run_once()
    assert bundle.sha256 == BUNDLE.sha256 and bundle.name == "cxr-reference"
    lines = {(line.label, line.dimension, line.group): line for line in bundle.lines}
    women, men, whole = lines["Abnormal", "sex", "F"], lines["Abnormal", "sex", "M"], lines["Abnormal", "all", ""]
    assert (women.ppv.k, women.ppv.n, women.state) == (58, 60, "ok")
    assert (men.ppv.k, men.ppv.n, men.state) == (10, 20, "flagged")
    assert "agreement with positive findings 50% (validation 90%)" in men.reason
    assert (whole.ppv.k, whole.ppv.n, whole.state) == (68, 80, "ok"), "85 % is within 10 points of 90 %"
    assert women.refused is not None and (women.refused.k, women.refused.n) == (5, 65)
    assert men.refused is not None and (men.refused.k, men.refused.n) == (0, 20)
    effusion = lines["Effusion", "all", ""]
    assert (effusion.missed.k, effusion.missed.n, effusion.ppv.n) == (0, 80, 0)
    (week,) = bundle.of("week")[:1]
    assert week.label == "Abnormal" and week.ppv.n == 80
    assert lines["Abnormal", "station", "ACME / X1 / ROOM-1"].state == "ok"

    (flag,) = Monitoring(front.store).flags()
    assert flag.kind == "fairness" and flag.key == f"{BUNDLE.sha256[:12]}:Abnormal:sex=M"
    audit = front.store.audit_trail()
    assert [(a["action"], a["subject"]) for a in audit[:1]] == [("monitor.flag", flag.key)]
    front.monitor.run_once()
    assert len(Monitoring(front.store).flags()) == 1, "a flag is raised once while it holds"

    assert Monitoring(front.store).acknowledge(flag.id, "admin")
    assert not Monitoring(front.store).acknowledge(flag.id, "admin"), "once"
    (seen,) = Monitoring(front.store).flags()
    assert seen.acknowledged_by == "admin" and not Monitoring(front.store).flags(include_acknowledged=False)
    assert front.store.audit_trail()[0]["action"] == "monitor.acknowledge"


def test_the_newest_review_counts_and_a_flag_clears_when_agreement_returns(front: Service) -> None:
    _plant(front)
    assert front.monitor is not None
    front.monitor.run_once()
    men = front.store.query(
        "SELECT result_id FROM monitor_verdicts WHERE label = 'Abnormal' AND clinician_positive = 0 AND result_id IN "
        "(SELECT result_id FROM monitor_results WHERE sex = 'M')"
    )
    for row in men[:8]:  # second thoughts: 18 of 20 agreed now
        _review(front, int(row[0]), "agree")
    (bundle,) = front.monitor.run_once()
    men_line = next(x for x in bundle.of("sex") if x.label == "Abnormal" and x.group == "M")
    assert (men_line.ppv.k, men_line.ppv.n, men_line.state) == (18, 20, "ok")
    assert not Monitoring(front.store).flags()
    assert front.store.audit_trail()[0]["action"] == "monitor.clear"


def test_small_groups_and_too_few_reviews_say_so(front: Service) -> None:
    for _ in range(4):
        _review(front, _arrive(front, "F", "008Y", "ROOM-2"), "disagree")
    for _ in range(5):
        _review(front, _arrive(front, "M", "070Y", "ROOM-2"), "disagree")
    assert front.monitor is not None
    (bundle,) = front.monitor.run_once()
    bands = {x.group: x for x in bundle.of("band") if x.label == "Abnormal"}
    assert bands["child"].state == "small" and bands["child"].counts.tp + bands["child"].counts.fp == 0, "hidden"
    assert bands["older"].state == "too_few" and bands["older"].ppv.n == 5
    assert not Monitoring(front.store).flags(), "9 reviews in all: too few to tell"


def test_figures_are_counted_in_sql_once_caught_up(front: Service) -> None:
    """What `figures` reads is what `catch_up` counted: a review added since shows after the next catch-up."""
    settings: Any = front.settings.monitoring
    rid = _arrive(front, "F", "040Y", "ROOM-1")
    Monitoring(front.store).catch_up()
    _review(front, rid, "agree")
    (before,) = figures(front.store, settings, front.lifecycle.manifest_of)
    assert next(x for x in before.lines if x.label == "Abnormal" and x.dimension == "all").ppv.n == 0
    Monitoring(front.store).catch_up()
    (after,) = figures(front.store, settings, front.lifecycle.manifest_of)
    assert next(x for x in after.lines if x.label == "Abnormal" and x.dimension == "all").ppv.n == 1


def test_the_page_the_health_check_the_devices_page_and_the_csv_show_the_flags(front: Service) -> None:
    """Through the web app, as an administrator: the flag on /api/v1/health (degraded, with the reason) until it is
    acknowledged on the "Model performance" page; the figures as CSV, a small group's left empty."""
    import csv

    from edge_app.web import create_app
    from support.web import AuthActions

    _plant(front)
    for _ in range(3):
        _review(front, _arrive(front, "O", "040Y", "ROOM-1"), "agree")
    app = create_app(front)
    app.config.update(TESTING=True)
    browser = app.test_client()
    auth = AuthActions(app, browser)
    assert auth.login("admin,technician").status_code == 302

    page = browser.get("/admin/performance?count=now").get_data(as_text=True)
    assert "Model performance" in page and "<svg" in page and "https://" not in page.split("<main", 1)[-1]
    assert "58/60" in page and "10/20" in page and "Below validation" in page
    assert "Fewer than 5 images: not shown" in page, "3 images of sex O"
    health = browser.get("/api/v1/health").get_json()
    assert health["status"] == "degraded" and "model monitoring: cxr-reference" in health["problem"]
    assert "sex M: agreement with positive findings 50% (validation 90%)" in health["problem"]
    assert health["monitoring"] == [
        {"kind": "fairness", "reason": health["monitoring"][0]["reason"], "acknowledged": False}
    ]
    assert "Model monitoring: cxr-reference" in browser.get("/devices").get_data(as_text=True)

    rows = list(csv.DictReader(browser.get("/admin/performance.csv").get_data(as_text=True).splitlines()))
    men = next(r for r in rows if r["label"] == "Abnormal" and r["dimension"] == "sex" and r["group"] == "M")
    assert (men["agreed"], men["ai_positive_reviewed"], men["ppv"], men["state"]) == ("10", "20", "0.5000", "flagged")
    assert (men["ppv_low"], men["ppv_high"]) == ("0.2993", "0.7007")
    other = next(r for r in rows if r["label"] == "Abnormal" and r["dimension"] == "sex" and r["group"] == "O")
    assert other["state"] == "small" and other["images"] == other["agreed"] == other["ppv"] == ""

    (flag,) = Monitoring(front.store).flags()
    token = auth.csrf("/admin/performance")
    assert (
        browser.post(f"/admin/performance/flags/{flag.id}/acknowledge", data={"csrf_token": token}).status_code == 302
    )
    health = browser.get("/api/v1/health").get_json()
    assert health["monitoring"][0]["acknowledged"] is True, health["problem"]
    assert "model monitoring" not in (health["problem"] or ""), "an acknowledged flag degrades no more"
    assert "acknowledged by admin-technician" in browser.get("/devices").get_data(as_text=True)
    actions = [a["action"] for a in front.store.audit_trail()]
    assert "monitor.acknowledge" in actions and "performance.export" in actions


def test_the_page_speaks_french(front: Service) -> None:
    from edge_app.web import create_app
    from support.web import AuthActions

    _plant(front)
    app = create_app(front)
    app.config.update(TESTING=True)
    auth = AuthActions(app, app.test_client())
    auth.user("admin-fr", "admin", language="fr")
    auth.login("admin", name="admin-fr")
    page = auth.client.get("/admin/performance?count=now").get_data(as_text=True)
    assert "Performance du modèle" in page and "Sous la validation" in page and "Par tranche d'âge" in page


@pytest.mark.parametrize("language", ["en", "fr"])
def test_the_supervisors_pdf_holds_aggregates_and_group_sizes_only(front: Service, language: str) -> None:
    """The one-page summary linked from the page, read back as text: each group's size and figures (checked by hand:
    women 5 of 65 refused, 58 of 60 agreed), the group of 3 images under the minimum of 5 without its size, the flag,
    nothing of any patient; audited like the CSV; in the administrator's language."""
    from pypdf import PdfReader

    from edge_app.web import create_app
    from support.web import AuthActions

    _plant(front)
    for _ in range(3):
        _review(front, _arrive(front, "O", "040Y", "ROOM-1"), "agree")
    app = create_app(front)
    app.config.update(TESTING=True)
    auth = AuthActions(app, app.test_client())
    auth.user("admin-x", "admin", language=language)
    auth.login("admin", name="admin-x")
    page = auth.client.get("/admin/performance").get_data(as_text=True)
    assert 'href="/admin/performance.pdf"' in page
    answer = auth.client.get("/admin/performance.pdf")
    assert answer.mimetype == "application/pdf" and len(PdfReader(io.BytesIO(answer.data)).pages) == 1
    text = pdf_lines(answer.data)
    fr = language == "fr"
    assert text[0] == ("Performance du modèle : résumé" if fr else "Model performance: summary")
    abnormal = "Anormal" if fr else "Abnormal"
    by_sex = text.index("Par sexe" if fr else "By sex")
    ok, below = ("Comme validé", "Sous la validation") if fr else ("As validated", "Below validation")
    assert text[by_sex + 1] == f"F 65 8 % (3-17, 5/65) {abnormal} 97 % (89-99, 58/60) - {ok}"
    assert text[by_sex + 5] == f"M 20 0 % (0-16, 0/20) {abnormal} 50 % (30-70, 10/20) - {below}"
    hidden = "Moins de 5 images : non affiché" if fr else "Fewer than 5 images: not shown"
    assert text[by_sex + 9] == f"O {hidden}", "3 images: neither their count nor their figures"
    flag = (
        f"{'équité' if fr else 'fairness'}: cxr-reference 1.1.1, Abnormal, sex M: agreement with positive findings 50%"
    )
    assert any(flag in line for line in text), "the flag, its reason in English as the store keeps it"
    blob = "\n".join(text)
    assert "P1" not in blob and "1.2.9." not in blob and "a.dcm" not in blob, "no patient, study or file"
    audit = front.store.audit_trail()
    assert (audit[0]["action"], audit[0]["detail"], audit[0]["actor"]) == ("performance.export", "pdf", "admin-x")


def test_the_supervisors_pdf_stays_one_page_and_counts_what_it_leaves_out(tmp_path: Any) -> None:
    """120 stations of 20 images each: the page holds what fits and says how many lines the CSV has besides."""
    from pypdf import PdfReader

    from edge_app.config import MonitoringSettings
    from edge_app.outputs.performance import BundleFigures, Line
    from edge_app.outputs.summary import performance_summary
    from edge_app.store.monitoring import Arrivals, Counts

    stations = [
        Line("Abnormal", "station", f"ROOM-{n:03d}", Counts(tp=9, fp=1), Arrivals(20, 1, 10), "ok", "")
        for n in range(120)
    ]
    bundle = BundleFigures("b" * 64, "cxr", "1", "2026-11-01", "2026-11-30", {"Abnormal": Expected(0.9, 0.1, True)},
                           tuple(stations))  # fmt: skip
    pdf = performance_summary([bundle], [], MonitoringSettings(), "2026-12-01T10:00", lambda s, **v: s % v if v else s)
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1
    text = pdf_lines(pdf)
    shown = [line for line in text if line.startswith("ROOM-")]
    assert shown[0] == "ROOM-000 20 5 % (1-24, 1/20) Abnormal 90 % (60-98, 9/10) - As validated"
    assert 50 < len(shown) < 120 and text[-2] == f"{120 - len(shown)} more lines: see the CSV export."
