"""Plain words on the tablet: every kind of reason the code records has a clinician's sentence and what to do, in
English and French, with the technical reason one tap away; no network address; a refused image keeps its
patient's name; finding names in the clinician's language; an administrator alone lands on the admin pages."""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.bundles.findings import Finding
from edge_app.config import Settings
from edge_app.errors import ReasonKind
from edge_app.service import Service
from edge_app.store import ModelResult, Outcome
from edge_app.web import create_app, services, words
from support.dicom import dicom_file
from support.web import AuthActions

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
KINDS = set(get_args(ReasonKind))


def _kinds_written() -> set[str]:
    """Every reason kind a literal in edge_app names where a reason is made: `ImageRejected(source, reason, KIND)`,
    `reason_kind=KIND`, `Outcome(status, reason, KIND)`, `reason_kind = 'KIND'` in SQL, and `_kept`'s pairs."""
    found: set[str] = set()
    for path in (ROOT / "edge_app").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r"reason_kind = '(\w+)'", text))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("ImageRejected", "Outcome") and len(node.args) == 3:
                    found |= {node.args[2].value} if isinstance(node.args[2], ast.Constant) else set()
                found |= {
                    k.value.value
                    for k in node.keywords
                    if k.arg == "reason_kind" and isinstance(k.value, ast.Constant) and k.value.value
                }
            pair = isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Constant)
            if pair and node.elts[0].value in KINDS and isinstance(node.elts[1], ast.JoinedStr):  # type: ignore[attr-defined]
                found.add(node.elts[0].value)  # type: ignore[attr-defined]
    return found | {"no_image", "identity"}  # NotAnImage and IdentityConflict carry theirs


def test_every_reason_kind_the_code_writes_has_words_in_english_and_french(app: Flask) -> None:
    written = _kinds_written()
    assert written <= KINDS and written == set(words.REASONS) == KINDS, "one sentence per kind, none left over"
    with app.test_request_context():
        from flask_babel import force_locale

        english = {k: (str(w.what), str(w.todo)) for k, w in words.REASONS.items()}
        with force_locale("fr"):
            french = {k: (str(w.what), str(w.todo)) for k, w in words.REASONS.items()}
    for kind in KINDS:
        assert all(french[kind]) and french[kind][0] != english[kind][0], f"{kind}: no French"
    assert words.reason_words(None) is words.UNKNOWN and words.reason_words("gone") is words.UNKNOWN


def test_a_truncated_dicom_shows_its_patient_plain_words_and_the_reason_under_details(
    auth: Any, browser: FlaskClient, client: FlaskClient
) -> None:
    data = dicom_file("RG1_UNCR.dcm").read_bytes()
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    study = client.post("/api/v1/studies?filename=cut.dcm", data=data[: len(data) - 5000]).get_json()["study"]
    image = study["images"][0]
    assert image["status"] == "rejected" and image["reason_kind"] == "damaged"
    assert image["reason"].startswith("truncated DICOM file")
    auth.login("clinician")
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    name = " ".join(str(ds.PatientName).replace("^", " ").split())
    assert f"<h1>{name} <small>{ds.PatientID}</small>" in page, "the header's name, not (no name)"
    refusal = re.search(r'<div class="refusal warn" data-reason-kind="damaged">(.*?)</div>', page, re.S)
    assert refusal and "The image arrived incomplete or damaged." in refusal.group(1)
    assert re.search(r"<details><summary>Details</summary><small>truncated DICOM file", refusal.group(1))
    assert "flash error" not in page, "not an alarm"
    assert "Sent by a program" in page


def test_a_clinician_never_sees_where_an_image_came_from_by_address(
    app: Flask, auth: Any, browser: FlaskClient
) -> None:
    svc = services.get_from(app)
    with dicom_file("CT_small.dcm").open("rb") as fh:  # the receiver's source: its AE title at its address
        added = svc.ingest.submit(fh, "ct.dcm", "dicom:XRAY1@10.20.30.40")
    assert added is not None
    svc.store.wait_for(added.image_id, 60)
    auth.login("clinician")
    page = browser.get(f"/studies/{added.study_uid}").get_data(as_text=True)
    assert "Imaging unit XRAY1" in page and "10.20.30.40" not in page and "dicom:" not in page
    auth.logout()
    auth.login("technician", name="tech")
    assert "10.20.30.40" not in browser.get("/").get_data(as_text=True)


def test_a_triton_hub_s_address_is_shown_to_administrators_only_and_never_printed(
    service: Callable[..., Service], make_settings: Callable[..., Settings], nih_png: Path
) -> None:
    """A result read on a Triton hub records the hub's address: the study page names the model to a clinician
    without it, shows it to an administrator who reads studies, and the printed report never has it."""
    svc = service(make_settings(), "front")  # no worker: the result is recorded below, as a worker on a hub does
    app = create_app(svc)
    app.config.update(TESTING=True)
    with nih_png.open("rb") as fh:
        added = svc.ingest.submit(fh, "a.png", "api")
    assert added is not None
    job = svc.store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None and job.image_id == added.image_id
    hub = "http://10.9.8.7:8000"
    model = {"name": "cxr-reference", "version": "1.1.1", "precision": "fp32", "runner": "triton", "server": hub}
    finding = Finding("Effusion", 0.8, 0.5).as_dict()
    svc.store.finish_job(job, Outcome("done", results=[ModelResult("ok", model, "b" * 64, findings=[finding])]))
    study = f"/studies/{added.study_uid}"
    shown = {}
    for roles in ("clinician", "clinician,admin"):
        browser = app.test_client()
        AuthActions(app, browser).login(roles)
        page = browser.get(study).get_data(as_text=True)
        line = re.search(r'<p class="model">(.*?)</p>', page, re.S)
        assert line is not None, page
        shown[roles] = (line.group(1), page)
    assert shown["clinician"][0] == "Model: cxr-reference 1.1.1 · fp32 · triton"
    assert "10.9.8.7" not in shown["clinician"][1]
    assert shown["clinician,admin"][0] == f"Model: cxr-reference 1.1.1 · fp32 · triton ({hub})"
    from pypdf import PdfReader

    pdf = PdfReader(io.BytesIO(browser.get(f"{study}/report.pdf").data))
    text = " ".join(pdf.pages[0].extract_text().split())
    assert "Model: cxr-reference 1.1.1 (fp32, triton)" in text and "10.9.8.7" not in text


def test_finding_names_in_the_clinician_s_language_on_the_page_and_in_the_report(
    app: Flask, auth: Any, browser: FlaskClient, client: FlaskClient
) -> None:
    from support.data import NIH

    pngs = sorted((NIH / "images").glob("*.png"))[:1] if NIH.is_dir() else []
    if not pngs:
        pytest.skip("the NIH sample is absent ($EDGE_SHARED_DATA)")
    uid = client.post("/api/v1/studies?filename=a.png", data=pngs[0].read_bytes()).get_json()["uid"]
    services.get_from(app).store.wait_for(client.get(f"/api/v1/studies/{uid}").get_json()["images"][0]["id"], 60)
    study = {"uid": uid}
    auth.user("dr-fr", "clinician", "fr")
    auth.login(name="dr-fr")
    page = browser.get(f"/studies/{study['uid']}").get_data(as_text=True)
    assert "Cardiomégalie" in page and "Épanchement pleural" in page and ">Cardiomegaly<" not in page
    assert ':Cardiomegaly"' in page, "the code label stays the key"
    from pypdf import PdfReader

    pdf = PdfReader(io.BytesIO(browser.get(f"/studies/{study['uid']}/report.pdf").data))
    text = " ".join(pdf.pages[0].extract_text().split())
    assert "Cardiomégalie:" in text and "Cardiomegaly:" not in text


def test_the_ai_summary_names_findings_in_the_clinician_s_language_for_the_study_and_its_priors(
    app: Flask, auth: Any, browser: FlaskClient, nih: Path
) -> None:
    """Two studies of one patient, each with positive findings: a French clinician's study page says them in
    French in the one-line summary of the image and in that of the patient's other study."""
    svc = services.get_from(app)
    png = (nih / "images" / "00000442_000.png").read_bytes()  # three positive findings
    uids = []
    for body in (png, png[:-1] + b"\x01"):  # two studies: the second's bytes differ in the end chunk's CRC
        added = svc.ingest.submit(io.BytesIO(body), "chest.png", "api", patient_id="P-FR")
        assert added is not None
        svc.store.wait_for(added.image_id, 60)
        uids.append(added.study_uid)
    auth.user("dr-fr", "clinician", "fr")
    auth.login(name="dr-fr")
    page = browser.get(f"/studies/{uids[1]}").get_data(as_text=True)
    summary = re.search(r'<p class="ai-summary[^"]*">(.*?)</p>', page, re.S)
    prior = re.search(r'<section class="priors card">.*?<small>(.*?)</small>', page, re.S)
    assert summary and prior, page
    for uid, shown in ((uids[1], summary.group(1)), (uids[0], prior.group(1))):
        result = svc.store.get_study(uid).images[0].latest_ok
        assert result is not None
        card = svc.lifecycle.manifest_of(result.bundle_sha256)
        assert card is not None
        positive = [f.label for f in result.findings if f.positive]
        french = {label: card.label_name(label, "fr") for label in positive}
        assert positive and any(label != name for label, name in french.items()), french
        for label, name in french.items():
            assert f"{name} " in shown, (name, shown)
            assert label == name or f"{label} " not in shown, (label, shown)


def test_an_administrator_alone_lands_on_the_admin_pages(auth: Any, browser: FlaskClient) -> None:
    login = auth.login("admin")
    assert login.status_code == 302 and login.headers["Location"].endswith("/admin/users")
    landing = browser.get("/")
    assert landing.status_code == 302 and landing.headers["Location"].endswith("/admin/users")
    refused = browser.get("/studies/1.2.3")
    page = refused.get_data(as_text=True)
    assert refused.status_code == 403 and 'href="/admin/users"' in page and 'href="/"' not in page.split("<main>")[1]
