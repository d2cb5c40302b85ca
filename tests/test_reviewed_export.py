"""Back to the conversion stage: `edge-app export --reviewed` writes the clinic's reviewed images with their
clinicians' labels; the real `edge-convert validate` measures a bundle on them and records the figure; the
model-update page of that box (and of no other) shows it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.service import Service
from edge_app.web import create_app, services
from support.data import NIH
from support.dicom import dicom_file
from support.tools import EDGE_CONVERT
from support.web import AuthActions

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]
# Per study posted (one image each): None left unreviewed, "partial" a one-finding review of the result alone,
# else the labels the clinician disagreed with (agreeing with the rest).
PLAN: list[set[str] | str | None] = [set(), {"Effusion", "Cardiomegaly"}, None, {"Abnormal"}, "partial", set()]


def _reviewed_box(data: Path, api_client: Callable[[Flask], FlaskClient]) -> list[dict[str, int]]:
    """Post PLAN's NIH PNGs, then the CR DICOM (its patient named in its header), review them through the store's
    review API; the labels expected of each fully reviewed image, in the order they arrived, by hand."""
    pngs = sorted((NIH / "images").glob("*.png"))[: len(PLAN)]
    expected = []
    with Service(Settings.model_validate({"storage": {"data_dir": str(data)}, "model": {"threads": 1}})) as svc:
        client = api_client(create_app(svc))
        posted = [client.post(f"/api/v1/studies?filename={p.name}", data=p.read_bytes()).get_json() for p in pngs]
        dicom = client.post("/api/v1/studies?filename=rg1.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes())
        for study, plan in [*zip(posted, PLAN, strict=True), (dicom.get_json(), {"Effusion"})]:
            result = study["images"][0]["results"][0]
            if plan == "partial":
                svc.reviews.add(result["id"], "dr-ade", {"Effusion": "agree"})
            elif isinstance(plan, set):
                disagree = {(result["id"], label) for label in plan}
                svc.reviews.review_study(study["uid"], "dr-ade", "read", disagree=disagree)
                expected.append({f["label"]: int(f["positive"] != (f["label"] in plan)) for f in result["findings"]})
    return expected


def test_reviewed_cases_measure_a_bundle_and_the_models_page_shows_it(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    data, out = tmp_path / "data", tmp_path / "reviewed"
    expected = _reviewed_box(data, api_client)
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(data)}
    (out / "other").mkdir(parents=True)
    refused = cli("export", "--reviewed", str(out), env=env)
    assert refused.returncode == 2 and "not an empty folder" in refused.stderr
    made = cli("export", "--reviewed", "--force", str(out), env=env)
    assert made.returncode == 0, made.stderr
    assert "1 reviewed image(s) left out" in made.stdout, "the partial review: a finding without a verdict"

    rows = list(csv.DictReader((out / "labels.csv").open(encoding="utf-8")))
    labels = sorted(expected[0])
    assert [r["file"] for r in rows] == [f"case-000{n}.png" for n in range(1, 5)] + ["case-0005.dcm"]
    assert [{k: int(r[k]) for k in labels} for r in rows] == expected
    assert (out / "images" / "case-0005.dcm").read_bytes() == dicom_file("RG1_UNCR.dcm").read_bytes()
    name = str(pydicom.dcmread(dicom_file("RG1_UNCR.dcm")).PatientName)
    assert not any(name.split("^")[0].lower() in p.name.lower() for p in (out / "images").iterdir())
    marker = json.loads((out / "site-export.json").read_text())
    assert marker["images"] == 5 and marker["site"] == (data / "site_id").read_text()

    bundle = tmp_path / "usb" / "models" / "measured"
    shutil.copytree(EMBEDDED_BUNDLE, bundle)
    assert subprocess.run([*EDGE_CONVERT, "keygen", str(tmp_path / "key")], capture_output=True).returncode == 0
    assert subprocess.run([*EDGE_CONVERT, "sign", str(bundle), "--key", str(tmp_path / "key")]).returncode == 0
    validate = [*EDGE_CONVERT, "validate", str(bundle), "--reference", str(EMBEDDED_BUNDLE / "model.onnx")]
    validate += ["--data", str(out / "images"), "--labels", str(out / "labels.csv"), "--record"]
    done = subprocess.run(validate, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figure = json.loads(done.stdout)["agreement_with_labels"]
    # By hand: 5 images x 5 findings, 4 of them disagreed with (2 on the second, 1 on the fourth, 1 on the DICOM),
    # and the bundle measured is the one whose decisions the clinicians saw.
    assert (figure["decisions"], figure["agreed"]) == (25, 21) and len(labels) == 5
    assert figure["per_label"]["Effusion"] == pytest.approx(3 / 5) and figure["per_label"]["Emphysema"] == 1.0
    recorded = load_bundle(bundle).manifest.validated_at(marker["site"])
    assert recorded is not None and (recorded.images, recorded.agreement) == (5, 0.84)
    assert not (bundle / "manifest.sig").exists(), "the signature of the manifest before no longer holds"

    (tmp_path / "tampered").mkdir()
    shutil.copy(out / "site-export.json", tmp_path / "tampered")
    (tmp_path / "tampered" / "labels.csv").write_text((out / "labels.csv").read_text().replace(",1", ",0"))
    validate[-2] = str(tmp_path / "tampered" / "labels.csv")
    tampered = subprocess.run(validate, capture_output=True, text=True, timeout=300)
    assert tampered.returncode == 2 and "is not the labels file" in tampered.stderr

    for box, shown in ((data, True), (tmp_path / "another-box", False)):
        config = {"storage": {"data_dir": str(box)}, "model": {"threads": 1, "import_dir": str(tmp_path / "usb")}}
        app = create_app(service(config))
        auth = AuthActions(app, app.test_client())
        auth.login("admin", name="boss")
        auth.client.post("/admin/models/import", data={"csrf_token": auth.csrf("/admin/models"), "path": str(bundle)})
        page = auth.client.get("/admin/models").get_data(as_text=True)
        assert "verified and imported" in page
        sentence = "Validated on this clinic's 5 reviewed cases"
        assert (f"{sentence} (export of {marker['exported_at'][:10]}): agreement 84.0 %" in page) is shown
        actions = [(e["action"], e["detail"]) for e in services.get_from(app).store.audit_trail()]
        assert (("export.reviewed", f"5 images, export {marker['export']}") in actions) is shown, "audited"
