"""The tablet's pages through the Flask client: the worklist's triage, the study, the review, the PDF report, the
devices, the administration, the French pages."""

from __future__ import annotations

import csv
import html
import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.service import Service
from edge_app.store.accounts import parse_roles
from edge_app.web import compile_templates, create_app, services
from support.data import NIH
from support.dicom import dicom_file
from support.web import AuthActions

pytestmark = pytest.mark.unit


def _post(client: FlaskClient, data: bytes, filename: str) -> dict[str, Any]:
    resp = client.post(f"/api/v1/studies?filename={filename}", data=data)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def _positives(study: dict[str, Any]) -> list[str]:
    return [f["label"] for f in study["images"][0]["results"][0]["findings"] if f["positive"]]


@pytest.fixture
def studies(client: FlaskClient, nih_png: Path) -> list[dict[str, Any]]:
    """NIH images until one has no positive finding and one has two or more (the reference model's decisions)."""
    found: dict[bool, dict[str, Any]] = {}
    for path in sorted((NIH / "images").glob("*.png")):
        study = _post(client, path.read_bytes(), path.name)
        if len(_positives(study)) != 1:
            found.setdefault(bool(_positives(study)), study)
        if len(found) == 2:
            return [found[False], found[True]]
    pytest.skip("no NIH image without a positive finding")


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-uid="([^"]+)"', page)


def test_the_worklist_puts_unreviewed_positives_first(auth: Any, browser: FlaskClient, studies: list[Any]) -> None:
    negative, positive = studies
    auth.login("clinician")
    page = browser.get("/").get_data(as_text=True)
    rows = _rows(page)
    assert rows.index(positive["uid"]) < rows.index(negative["uid"]), "positive first, though it came later"
    assert ", ".join(_positives(positive)) in page and "AI positive" in page
    body = browser.get("/worklist/rows", headers={"X-Background": "1"}).get_data(as_text=True)
    assert _rows(body) == rows and "<html" not in body, "the refresh gets the rows alone"


def test_the_worklist_shows_each_status_with_its_reason(auth: Any, browser: FlaskClient, client: FlaskClient) -> None:
    client.post("/api/v1/studies?filename=junk.bin", data=b"\x00" * 300)
    auth.login("technician")
    page = browser.get("/").get_data(as_text=True)
    assert "rejected" in page and "This file is not an image the box can open." in page
    assert "/studies/" not in page, "a technician sees the list, not the studies"


def test_the_worklist_names_the_patient_from_the_dicom(auth: Any, browser: FlaskClient, client: FlaskClient) -> None:
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    _post(client, dicom_file("RG1_UNCR.dcm").read_bytes(), "rg1.dcm")
    auth.login("clinician")
    page = browser.get("/").get_data(as_text=True)
    name = " ".join(str(ds.PatientName).replace("^", " ").split())
    assert name in page and str(ds.PatientID) in page and ">CR<" in page


def test_the_study_page_shows_what_a_clinician_needs(
    app: Flask, auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    _, study = studies
    auth.login("clinician")
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    assert "AI result: to be confirmed by a clinician" in page
    result = study["images"][0]["results"][0]
    assert "cxr-reference 1.1.1 · fp32 · onnxruntime" in page
    for f in result["findings"]:
        assert f'width="{f["probability"] * 100:.1f}"' in page, "the bar is the probability"
        assert f'x1="{f["threshold"] * 100:.1f}"' in page, "the threshold is marked on it"
    view = re.search(r'<img class="preview" src="([^"]+)"', page)
    heat = re.search(r'<img class="heatmap" src="([^"]+)"', page)
    assert view and heat
    picture = browser.get(view.group(1))
    assert picture.mimetype == "image/jpeg" and picture.data[:3] == b"\xff\xd8\xff"
    assert 'class="heatmap-toggle"' in page and "the model's local probability, 0 to 1" in page, "with its legend"
    # One heatmap per positive finding, the most probable shown first; the clinician picks another.
    positive = sorted((f for f in result["findings"] if f["positive"]), key=lambda f: -f["probability"])
    assert len(positive) >= 2
    options = re.findall(r'<option value="([^"]+)" data-label="([^"]+)">([^<]+)</option>', page)
    assert [label for _, label, _ in options] == [f["label"] for f in positive]
    assert [text for _, _, text in options] == [f"{f['label']} ({f['probability']:.2f})" for f in positive]
    assert html.unescape(heat.group(1)) == html.unescape(options[0][0])
    store = services.get_from(app).store
    for (url, label, _), stored in zip(options, result["heatmaps"], strict=True):
        served = browser.get(html.unescape(url))
        assert served.mimetype == "image/png" and served.data == store.read_file(stored["sha256"])
        assert stored["label"] == label
    assert options[0][0] != options[1][0] and result["heatmaps"][0]["sha256"] != result["heatmaps"][1]["sha256"]
    base = f"/studies/{study['uid']}/results/{result['id']}/heatmap.png"
    assert browser.get(f"{base}?label=Hernia").status_code == 404, "no heatmap of a finding that is not positive"
    pdf = browser.get(f"/studies/{study['uid']}/report.pdf?heatmap={positive[1]['label']}")
    text = _pdf_text(pdf.data)
    assert f"Heatmap of {positive[1]['label']}: the model's local probability, 0 to 1." in text, "the one picked"
    assert f"other positive findings on the tablet: {positive[0]['label']}" in " ".join(text.split())
    assert ("clinician", "study.view", study["uid"]) in [
        (e["actor"], e["action"], e["subject"]) for e in services.get_from(app).store.audit_trail()
    ]


def test_a_study_page_shows_the_exposure_and_the_device(app: Flask, auth: Any, browser: FlaskClient) -> None:
    """The serial link's exposure report travels with the next image (the capture issue); the page shows it."""
    from edge_app.ingest import Event

    svc = services.get_from(app)
    svc.ingest.event(Event("exposure", {"kvp": "85", "mas": "4.0"}, "xray-generator"))
    with dicom_file("RG1_UNCR.dcm").open("rb") as fh:
        added = svc.ingest.submit(fh, "rg1.dcm", "dicom")
    assert added is not None
    svc.store.wait_for(added.image_id, 60)
    auth.login("clinician")
    page = browser.get(f"/studies/{added.study_uid}").get_data(as_text=True)
    assert "kvp 85, mas 4.0 (xray-generator)" in page
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert str(ds.Manufacturer) in page


def test_another_study_s_image_is_not_served_under_this_one(
    auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    first, second = studies
    auth.login("clinician")
    image_id = second["images"][0]["id"]
    assert browser.get(f"/studies/{first['uid']}/images/{image_id}/view.jpg").status_code == 404
    result_id = second["images"][0]["results"][0]["id"]
    assert browser.get(f"/studies/{first['uid']}/results/{result_id}/heatmap.png").status_code == 404
    assert browser.get("/studies/1.2.3.4/report.pdf").status_code == 404


def _review(browser: FlaskClient, auth: Any, study: dict[str, Any], **form: Any) -> Any:
    """Post the study's review form as the page would (its CSRF token and the results it showed), with `form`."""
    token = auth.csrf(f"/studies/{study['uid']}")
    shown = [str(result["id"]) for image in study["images"] for result in image["results"][-1:]]
    data = {"csrf_token": token, "result": shown, "state": "read", **form}
    return browser.post(f"/studies/{study['uid']}/review", data=data)


def test_agree_with_all_is_one_post_that_reviews_the_study(
    app: Flask, auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    _, study = studies
    result = study["images"][0]["results"][0]
    auth.login("clinician", name="dr-ade")
    resp = _review(browser, auth, study, all="1", note="As the AI says.")
    assert resp.status_code == 302 and resp.location.endswith(f"/studies/{study['uid']}#review"), "back to it"
    (review,) = services.get_from(app).reviews.of_study(study["uid"])
    assert (review.author, review.state, review.note) == ("dr-ade", "read", "As the AI says.")
    assert review.verdicts == {result["id"]: {f["label"]: "agree" for f in result["findings"]}}
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    assert "Review saved." in page and "Agrees with all the AI's findings." in page
    assert '<details class="review-form">' in page, "the saved review shown, the form folded away"
    rows = browser.get("/").get_data(as_text=True)
    assert 'class="badge state-read">read<' in rows
    assert _rows(rows).index(study["uid"]) == len(_rows(rows)) - 1, "reviewed: no longer first"
    (entry,) = [e for e in services.get_from(app).store.audit_trail() if e["action"] == "review.add"]
    assert (entry["actor"], entry["detail"]) == ("dr-ade", f"review={review.id} state=read result={result['id']}")


def test_a_disagreement_on_one_finding_and_a_referral(
    app: Flask, auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    _, study = studies
    result = study["images"][0]["results"][0]
    label = result["findings"][-1]["label"]
    auth.login("clinician", name="dr-ade")
    resp = _review(browser, auth, study, disagree=f"{result['id']}:{label}", state="referred", note="To surgery.")
    assert resp.status_code == 302
    (review,) = services.get_from(app).reviews.of_study(study["uid"])
    assert review.state == "referred" and review.disagreements() == [(result["id"], label)]
    assert sum(v == "agree" for v in review.verdicts[result["id"]].values()) == len(result["findings"]) - 1
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    assert f"Disagrees with:\n      {label}" in page and "To surgery." in page
    assert 'class="badge state-referred">referred<' in browser.get("/").get_data(as_text=True)


def test_a_review_not_saved_keeps_what_was_entered(
    app: Flask, auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    """A note too long, results changed since: nothing saved, and the page comes back with the ticks and the note as
    entered. A forged CSRF token: refused, nothing saved."""
    _, study = studies
    result = study["images"][0]["results"][0]
    tick = f"{result['id']}:{result['findings'][0]['label']}"
    auth.login("clinician")
    forged = _review(browser, auth, study, csrf_token="forged", all="1")
    assert forged.status_code == 400 and "The CSRF token is invalid." in forged.get_data(as_text=True)
    for form, status, message in (
        ({"note": "kept 2" + "x" * 2000}, 400, "The review could not be saved"),
        ({"note": "kept 3", "result": ["999"]}, 409, "The AI&#39;s results changed since the page was opened"),
    ):
        resp = _review(browser, auth, study, disagree=tick, **form)
        page = resp.get_data(as_text=True)
        assert resp.status_code == status and message in page
        assert f'value="{tick}" checked' in page and form["note"] in page
    assert services.get_from(app).reviews.of_study(study["uid"]) == []


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1, "one printable page"
    return reader.pages[0].extract_text()


def test_the_report_is_one_page_with_findings_model_and_review(
    app: Flask, auth: Any, browser: FlaskClient, studies: list[Any]
) -> None:
    _, study = studies
    auth.login("clinician", name="dr-ade")
    result = study["images"][0]["results"][0]
    resp = browser.get(f"/studies/{study['uid']}/report.pdf")
    assert resp.mimetype == "application/pdf"
    text = _pdf_text(resp.data)
    assert "AI result: to be confirmed by a clinician" in text and "Not reviewed yet." in text
    assert "cxr-reference 1.1.1 (fp32, onnxruntime)" in text
    for f in result["findings"]:
        assert f"{f['label']}: {f['probability']:.2f} (threshold {f['threshold']:.2f}" in text
    _review(browser, auth, study, all="1", note="Agreed, refer.")
    text = _pdf_text(browser.get(f"/studies/{study['uid']}/report.pdf").data)
    assert "dr-ade" in text and "Agreed, refer." in text and "clinician: agrees" in text
    from pypdf import PdfReader

    images = PdfReader(io.BytesIO(browser.get(f"/studies/{study['uid']}/report.pdf").data)).pages[0].images
    assert len(images) == 2, "the image and the image with its heatmap"
    assert ("dr-ade", "report.export") in [
        (e["actor"], e["action"]) for e in services.get_from(app).store.audit_trail()
    ]


def test_a_refused_study_offers_no_report(auth: Any, browser: FlaskClient, client: FlaskClient) -> None:
    """No model read it: no "Report (PDF)" on its page, and the report's address answers 409 saying why, never a
    page headed "No findings"."""
    resp = client.post("/api/v1/studies?filename=junk.bin", data=b"\x00" * 300)
    auth.login("clinician")
    uid = resp.get_json()["study"]["uid"]
    page = browser.get(f"/studies/{uid}").get_data(as_text=True)
    assert "Report (PDF)" not in page and "Not read by the AI: the image was refused" in page
    report = browser.get(f"/studies/{uid}/report.pdf")
    assert report.status_code == 409 and report.mimetype == "text/plain"
    assert report.get_data(as_text=True) == "No report: no model has read this study (see the study page for why)."


def test_a_worker_behind_is_said_on_every_page_until_it_catches_up(
    service: Callable[..., Service],
    make_settings: Callable[..., Any],
    api_client: Callable[[Flask], FlaskClient],
    nih_png: Path,
) -> None:
    """An image waiting past `worker.behind_s` (the worker held between two jobs): a banner on the worklist and the
    study; gone once it is read."""
    svc = service(make_settings(worker={"behind_s": 0.01}, server={"result_wait_s": 0.1}))
    app = create_app(svc)
    app.config.update(TESTING=True)
    browser = app.test_client()
    AuthActions(app, browser).login("clinician")
    assert svc.worker is not None
    with svc.worker.between_jobs():
        resp = api_client(app).post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes())
        assert resp.status_code == 202
        time.sleep(0.05)
        for path in ("/", f"/studies/{resp.get_json()['uid']}"):
            page = browser.get(path).get_data(as_text=True)
            assert "The AI is behind: 1 image waits, the oldest for 0 min." in page, path
    deadline = time.monotonic() + 30
    while svc.store.queued():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 'id="worker-banner"' not in browser.get("/").get_data(as_text=True)


def test_the_patient_s_age_from_the_dicom_and_no_other_study_for_no_patient_id(
    auth: Any, browser: FlaskClient, client: FlaskClient, nih_png: Path
) -> None:
    """PatientAge as given ("003W": 3 weeks); images without a patient ID are not one patient's studies."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.PatientAge, ds.PatientSex = "003W", "M"
    buf = io.BytesIO()
    ds.save_as(buf)
    dicom = _post(client, buf.getvalue(), "baby.dcm")
    first, second = (_post(client, nih_png.read_bytes(), f"{n}.png") for n in "ab")
    auth.login("clinician")
    page = browser.get(f"/studies/{dicom['uid']}").get_data(as_text=True)
    assert "Age <strong>3 wk</strong>" in page and "Sex <strong>male</strong>" in page
    page = browser.get(f"/studies/{second['uid']}").get_data(as_text=True)
    assert first["uid"] not in page and "Other studies of this patient" not in page


def test_the_devices_page(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("technician")
    page = browser.get("/devices").get_data(as_text=True)
    assert "cxr-reference 1.1.1" in page and "runner <strong>onnxruntime</strong>" in page
    assert "Images waiting for the model: 0" in page and re.search(r"Free disk: [\d.]+ GB", page)
    assert "No capture source is configured" in page
    assert "Capture a frame" not in page, "no video source: no button"


def test_users_are_added_changed_and_disabled_by_an_administrator(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("admin", name="boss")
    token = auth.csrf("/admin/users")
    data = {
        "csrf_token": token,
        "username": "nurse.amina",
        "password": "a long password!",
        "confirm": "a long password!",
        "clinician": "y",
        "technician": "y",
        "language": "fr",
    }
    assert browser.post("/admin/users", data=data).status_code == 302
    accounts = services.get_from(app).accounts
    user = accounts.user("nurse.amina")
    assert user.roles == {"clinician", "technician"} and user.language == "fr"
    assert browser.post("/admin/users", data=data).status_code == 400, "the name is taken"
    short = {**data, "username": "x2", "password": "short", "confirm": "short"}
    assert browser.post("/admin/users", data=short).status_code == 400
    browser.post("/admin/users/nurse.amina/roles", data={"csrf_token": token, "role-admin": "1"})
    assert accounts.user("nurse.amina").roles == {"admin"}
    browser.post("/admin/users/nurse.amina/roles", data={"csrf_token": token})
    assert accounts.user("nurse.amina").roles == {"admin"}, "no role at all is refused"
    browser.post("/admin/users/nurse.amina/disable", data={"csrf_token": token})
    assert accounts.user("nurse.amina").disabled
    browser.post("/admin/users/boss/disable", data={"csrf_token": token})
    assert not accounts.user("boss").disabled, "an administrator cannot lock themselves out"
    actions = [(e["actor"], e["action"], e["subject"]) for e in services.get_from(app).store.audit_trail()]
    assert ("boss", "user.add", "nurse.amina") in actions and ("boss", "user.disable", "nurse.amina") in actions


def test_a_token_is_shown_once_and_revoked_by_an_administrator(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("admin")
    token = auth.csrf("/admin/tokens")
    page = browser.post("/admin/tokens", data={"csrf_token": token, "name": "ris", "role": "technician"})
    secret = re.search(r'<code id="new-token">([^<]+)</code>', page.get_data(as_text=True))
    assert secret and secret.group(1).startswith("eat_")
    assert secret.group(1) not in browser.get("/admin/tokens").get_data(as_text=True), "shown once"
    api = app.test_client()
    assert api.get("/api/v1/studies", headers={"Authorization": f"Bearer {secret.group(1)}"}).status_code == 403
    browser.post("/admin/tokens/ris/revoke", data={"csrf_token": token})
    assert api.get("/api/v1/studies", headers={"Authorization": f"Bearer {secret.group(1)}"}).status_code == 401


def test_the_audit_log_as_csv_quotes_what_a_spreadsheet_would_run(
    app: Flask, auth: Any, browser: FlaskClient, formulas: Callable[[str], list[str]]
) -> None:
    """Names tried at the login form, a formula at the start or after a ';' (a French spreadsheet's separator):
    made inert in the download, whatever separator opens it."""
    auth.user("admin", "admin")  # with no account, the login page sends to the first-run page
    for name in ('=HYPERLINK("http://x")', "x;=1+1;"):
        browser.post("/login", data={"csrf_token": auth.csrf(), "username": name, "password": "not it"})
    auth.login("admin")
    page = browser.get("/admin/audit").get_data(as_text=True)
    assert "login.failure" in page
    resp = browser.get("/admin/audit.csv")
    assert resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert f"The chain of the audit log holds: {len(rows)} entries" in page
    assert f"Newest seal: {rows[-1]['hash']}" in page, "the seal to write down is the download's last"
    assert rows[0]["action"] == "service.start.all", "oldest first"
    failed = [r["actor"] for r in rows if r["action"] == "login.failure"]
    assert failed == ['\'=HYPERLINK("http://x")', "x;'=1+1;"]
    assert formulas(resp.get_data(as_text=True)) == []
    assert "audit.export" in [e["action"] for e in services.get_from(app).store.audit_trail()]


def test_the_models_page(auth: Any, browser: FlaskClient) -> None:
    auth.login("admin")
    page = browser.get("/admin/models").get_data(as_text=True)
    assert "cxr-reference 1.1.1" in page and "Cardiomegaly" in page


def test_french_for_a_french_user_and_on_the_login_page(
    app: Flask, auth: Any, browser: FlaskClient, client: FlaskClient, studies: list[Any]
) -> None:
    _, study = studies
    cr = _post(client, dicom_file("RG1_UNCR.dcm").read_bytes(), "rg1.dcm")
    services.get_from(app).accounts.add_user("dr-diallo", parse_roles("clinician"), auth.PASSWORD, "fr")
    auth.login("clinician", name="dr-diallo")
    page = browser.get("/").get_data(as_text=True)
    assert '<html lang="fr">' in page and "Liste de travail" in page and "IA positif" in page
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    assert "Résultat de l'IA : à confirmer par un clinicien" in page.replace("&#39;", "'")
    page = browser.get(f"/studies/{cr['uid']}").get_data(as_text=True)
    assert "Vue diagnostique (7,2 Mo)" in page, "a French decimal comma (1955 x 1841 x 2 bytes)"
    text = _pdf_text(browser.get(f"/studies/{study['uid']}/report.pdf").data)
    assert "Rapport de tri par IA" in text and "seuil" in text
    browser.post("/language?next=/", data={"csrf_token": auth.csrf("/"), "language": "en"})
    assert services.get_from(app).accounts.user("dr-diallo").language == "en"
    assert "Worklist" in browser.get("/").get_data(as_text=True)
    visitor = app.test_client()
    visitor.get("/lang/fr")
    assert "Se connecter" in visitor.get("/login").get_data(as_text=True)


def test_no_patient_name_or_id_reaches_the_application_log(
    app: Flask, auth: Any, browser: FlaskClient, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from edge_app.ingest import Event

    caplog.set_level(logging.DEBUG)
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    services.get_from(app).ingest.event(Event("patient_id", {"patient_id": "PID-7731-X"}, "barcode-reader"))
    png = _post(
        client, (NIH / "images" / sorted(p.name for p in (NIH / "images").glob("*.png"))[0]).read_bytes(), "a.png"
    )
    study = _post(client, dicom_file("RG1_UNCR.dcm").read_bytes(), "rg1.dcm")
    auth.login("clinician")
    for uid in (png["uid"], study["uid"]):
        browser.get(f"/studies/{uid}")
        browser.get(f"/studies/{uid}/report.pdf")
    assert "PID-7731-X" in browser.get("/").get_data(as_text=True), "the scanned ID went to the PNG's study"
    logged = caplog.text
    assert logged, "something was logged"
    for secret in ("PID-7731-X", str(ds.PatientID), str(ds.PatientName).split("^")[0]):
        assert secret not in logged


def test_the_administration_speaks_french_too(app: Flask, auth: Any, browser: FlaskClient) -> None:
    services.get_from(app).accounts.add_user("chef", parse_roles("admin"), auth.PASSWORD, "fr")
    auth.login("admin", name="chef")
    token = auth.csrf("/admin/users")
    form = {"csrf_token": token, "password": "a long password!", "confirm": "a long password!", "language": "fr"}
    for data, message in (
        ({**form, "username": "chef", "clinician": "y"}, "Un utilisateur nommé chef existe déjà."),
        ({**form, "username": "deux mots", "clinician": "y"}, "Un nom compte de 1 à 64 lettres"),
        ({**form, "username": "infirmier"}, "Choisissez au moins un rôle."),
    ):
        page = browser.post("/admin/users", data=data).get_data(as_text=True)
        assert message in page.replace("&#39;", "'"), data
    browser.post("/admin/users/chef/roles", data={"csrf_token": token})
    assert "Choisissez au moins un rôle." in browser.get("/admin/users").get_data(as_text=True)
    browser.post("/admin/tokens", data={"csrf_token": token, "name": "ris", "role": "technician"})
    page = browser.post("/admin/tokens", data={"csrf_token": token, "name": "ris", "role": "technician"})
    assert "Un jeton nommé ris existe" in page.get_data(as_text=True)


def test_an_administrator_cannot_lock_the_administration_out(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("admin", name="boss")
    token = auth.csrf("/admin/users")
    browser.post("/admin/users/boss/roles", data={"csrf_token": token, "role-clinician": "1"})
    assert "You cannot take away your own administrator role." in browser.get("/admin/users").get_data(as_text=True)
    assert services.get_from(app).accounts.user("boss").roles == {"admin"}
    browser.post("/admin/users/boss/roles", data={"csrf_token": token, "role-admin": "1", "role-clinician": "1"})
    assert services.get_from(app).accounts.user("boss").roles == {"admin", "clinician"}


def test_the_report_prints_the_review_of_the_result_it_prints(
    tmp_path: Path, api_client: Any, nih_png: Path, service: Callable[..., Service]
) -> None:
    """Two models read the image; the report shows the last one's findings: a review of the other's is not
    printed beside them."""
    from edge_app.config import EMBEDDED_BUNDLE
    from edge_app.web import create_app

    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "model": {"threads": 1, "extra_bundles": [str(EMBEDDED_BUNDLE)]},
            }
        )
    )
    study = api_client(app).post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json()
    first, second = study["images"][0]["results"]
    services.get_from(app).reviews.add(first["id"], "dr-ade", {"Effusion": "agree"}, "of the first model")
    auth = AuthActions(app, app.test_client())
    auth.login("clinician")
    text = _pdf_text(auth.client.get(f"/studies/{study['uid']}/report.pdf").data)
    assert "Not reviewed yet." in text and "of the first model" not in text
    services.get_from(app).reviews.add(second["id"], "dr-ade", {"Effusion": "agree"}, "of the second model")
    text = _pdf_text(auth.client.get(f"/studies/{study['uid']}/report.pdf").data)
    assert "of the second model" in text


def test_the_worklist_announces_new_studies_in_the_user_s_words_and_the_clinic_s_time(
    service: Callable[..., Service], make_settings: Callable[..., Any], api_client: Callable[[Flask], FlaskClient]
) -> None:
    """The refresh names what arrived after the page's newest study ("2 new studies", in French too) and changes
    no row; times are the clinic's (site.timezone), with the zone named."""
    from edge_app.web import create_app

    app = create_app(service(make_settings(site={"timezone": "Africa/Nairobi"})))
    app.config.update(TESTING=True)
    client, browser = api_client(app), app.test_client()
    auth = AuthActions(app, browser)
    first = client.post("/api/v1/studies?filename=junk.bin", data=b"\x00" * 300).get_json()["study"]
    auth.login("clinician")
    page = browser.get("/").get_data(as_text=True)
    newest = re.search(r'data-newest="(\d+)"', page)
    assert newest and "Times: Africa/Nairobi" in page and " EAT</time>" in page
    received = services.get_from(app).store.get_study(first["uid"]).created_at
    assert f'datetime="{received}"' in page, "the machine-readable time stays UTC"
    refresh = re.search(r'data-refresh-url="([^"]+)"', page)
    assert refresh
    url = html.unescape(refresh.group(1)) + "&since=" + newest.group(1)
    assert 'data-news=""' in browser.get(url, headers={"X-Background": "1"}).get_data(as_text=True)
    for n in range(2):
        client.post("/api/v1/studies?filename=junk.bin", data=b"\x01" * 300 + bytes([n]))
    body = browser.get(url, headers={"X-Background": "1"}).get_data(as_text=True)
    assert 'data-news="2 new studies"' in body and "1\u20133 of 3" in body
    services.get_from(app).accounts.add_user("dr-diallo", parse_roles("clinician"), auth.PASSWORD, "fr")
    auth.logout()
    auth.login("clinician", name="dr-diallo")
    body = browser.get(url, headers={"X-Background": "1"}).get_data(as_text=True)
    assert 'data-news="2 nouveaux examens"' in body


def test_every_template_is_compiled_before_a_first_visit(app: Flask) -> None:
    """What `edge-app serve` has done as it starts answering: each page's template compiled and cached, so that
    the first study page opened after a start does not wait for its compilation."""
    names = compile_templates(app.jinja_env)
    assert {"base.html", "study.html", "worklist.html", "admin/users.html"} <= set(names), names
    assert {key[1] for key in app.jinja_env.cache} >= set(names)
