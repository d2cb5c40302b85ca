"""Back to the conversion stage: `edge-app export --reviewed` writes the clinic's reviewed images with their
clinicians' labels; the real `edge-convert validate` measures a bundle on them and records the figure; the
model-update page of that box (and of no other) shows it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.ops.reviewed import MARKER
from edge_app.service import Service
from edge_app.store import Image, Store
from edge_app.system.clock import utc_text
from edge_app.web import create_app, services
from support.data import NIH
from support.dicom import dicom_file
from support.tools import EDGE_APP, EDGE_CONVERT
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


# -- a stranger's run: a damaged store, awkward targets -------------------------------------------------------------

# A patient named with path characters and letters beyond ASCII, sent under such a file name too.
HOSTILE = "../../Ødegård/Xavière^Zoë/..\\"


@pytest.fixture(scope="module")
def reviewed_store(tmp_path_factory: pytest.TempPathFactory, nih: Path) -> Path:
    """A box's data directory with six images, each reviewed (agreed with): five NIH PNGs, the first purged by
    retention (its review kept), then the CR DICOM with its patient named HOSTILE. Copy it before changing it."""
    data = tmp_path_factory.mktemp("reviewed") / "data"
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.PatientName = HOSTILE
    dicom = io.BytesIO()
    ds.save_as(dicom)
    files = [(p.name, p.read_bytes()) for p in sorted((nih / "images").glob("*.png"))[:5]]
    cut = ""
    with Service(Settings.model_validate({"storage": {"data_dir": str(data)}, "model": {"threads": 1}})) as svc:
        for name, content in [*files, (f"{HOSTILE}.dcm", dicom.getvalue())]:
            added = svc.ingest.submit(io.BytesIO(content), name, "test")
            assert added is not None and svc.store.wait_for(added.image_id, 120)[0] == "done"
            svc.reviews.review_study(added.study_uid, "dr-ade", "read")
            cut = cut or utc_text("milliseconds")
            time.sleep(0.01)
        assert svc.store.purge_images(cut) == 1
    return data


def _stored(data: Path) -> list[Image]:
    """The box's images, oldest first."""
    store = Store(data)
    try:
        return [i for s in reversed(store.list_studies(-1)) for i in s.images]
    finally:
        store.close()


def _path(data: Path, image: Image) -> Path:
    """Where the store keeps an image's file (named by its sha256 under files/)."""
    return data / "files" / image.sha256[:2] / image.sha256


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in (data / "files").rglob("*") if p.is_file()}


def _validate(tmp_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The real `edge-convert validate --record` on the export `out`, with a copy of the embedded bundle."""
    bundle = tmp_path / "bundle"
    shutil.copytree(EMBEDDED_BUNDLE, bundle)
    validate = [*EDGE_CONVERT, "validate", str(bundle), "--reference", str(EMBEDDED_BUNDLE / "model.onnx")]
    validate += ["--data", str(out / "images"), "--labels", str(out / "labels.csv"), "--record"]
    return subprocess.run(validate, capture_output=True, text=True, timeout=300)


def test_a_damaged_store_exports_what_it_can_says_why_of_each_other_and_is_left_as_it_was(
    cli: Cli, tmp_path: Path, reviewed_store: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "reviewed"
    shutil.copytree(reviewed_store, data)
    purged, missing, truncated, changed, _, _ = _stored(data)
    _path(data, missing).unlink()
    path = _path(data, truncated)
    path.write_bytes(path.read_bytes()[:1000])
    path = _path(data, changed)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    before = _files(data)

    made = cli("export", "--reviewed", str(out), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)})
    assert made.returncode == 0, made.stderr
    assert "Traceback" not in made.stderr and "2 reviewed image(s) written" in made.stdout
    said = {
        i: next((line for line in made.stderr.splitlines() if f"left out: image {i}:" in line), "")
        for i in (purged.id, missing.id, truncated.id, changed.id)
    }
    assert "removed by retention" in said[purged.id]
    assert "is missing" in said[missing.id] and "backup" in said[missing.id]
    assert "does not match its sha256" in said[truncated.id] and "does not match its sha256" in said[changed.id]
    assert "4 reviewed image(s) left out" in made.stdout
    assert _files(data) == before, "an export changes nothing stored, damaged files included"

    assert sorted(p.name for p in (out / "images").iterdir()) == ["case-0001.png", "case-0002.dcm"]
    done = _validate(tmp_path, out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_refused"] == 0


def test_an_earlier_export_in_the_folder_is_replaced_and_no_name_reaches_a_file_name(
    cli: Cli, tmp_path: Path, reviewed_store: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "reviewed"
    shutil.copytree(reviewed_store, data)
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(data)}
    assert cli("export", "--reviewed", str(out), env=env).returncode == 0
    assert len(list((out / "images").iterdir())) == 5
    _path(data, _stored(data)[1]).unlink()  # a file lost since: one case fewer

    again = cli("export", "--reviewed", "--force", str(out), env=env)
    assert again.returncode == 0, again.stderr
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"case-000{n}.png" for n in range(1, 4)] + ["case-0004.dcm"], "the earlier export's 5th case"
    rows = list(csv.DictReader((out / "labels.csv").open(encoding="utf-8")))
    assert [r["file"] for r in rows] == names
    done = _validate(tmp_path, out)
    assert done.returncode == 0, done.stderr

    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(data)]
    assert all(p.parts[0] in ("reviewed", "bundle") for p in written), "nothing beside the folder given"
    parts = {w for w in HOSTILE.replace("^", "/").replace("\\", "/").split("/") if w.strip(".")}
    assert not [p for p in written if any(w in str(p) for w in parts)], "no patient name in a file name"
    assert not any(w in (out / "labels.csv").read_text(encoding="utf-8") for w in parts)

    for inside in (data, data / "files" / "reviewed"):  # remove_orphans would delete what it found under files/
        refused = cli("export", "--reviewed", "--force", str(inside), env=env)
        assert refused.returncode == 2 and "inside the data directory" in refused.stderr, refused.stderr
    assert not (data / "images").exists() and not (data / "files" / "reviewed").exists()

    (out / "images" / "notes.txt").write_text("a technician's own file")
    refused = cli("export", "--reviewed", "--force", str(out), env=env)
    assert refused.returncode == 2 and "notes.txt" in refused.stderr, refused.stderr
    assert (out / "images" / "notes.txt").exists()


def _in_mount(options: str, folder: Path, *command: str) -> list[str]:
    """`command` run where `folder` is a tmpfs mounted with `options`, in a mount namespace of its own (nothing
    mounted outside it), then the files left in `folder` listed on stdout; skips where namespaces cannot be made."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no mount namespace here (unshare -rm)")
    script = 'mount -t tmpfs -o "$0" tmpfs "$1" || exit 99; dir=$1; shift; "$@"; rc=$?; find "$dir" -type f; exit $rc'
    return ["unshare", "-rm", "sh", "-c", script, options, str(folder), *command]


@pytest.mark.parametrize("full", [True, False], ids=["disk-full-midway", "read-only"])
def test_a_target_that_cannot_take_the_export_is_said_plainly_and_leaves_no_marker(
    tmp_path: Path, reviewed_store: Path, full: bool
) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    shutil.copytree(reviewed_store, data)
    usb.mkdir()
    before = _files(data)
    first = _path(data, _stored(data)[1]).stat().st_size  # the first case exported
    options = f"size={first // 1024 + 64}k" if full else "ro"
    failed = subprocess.run(
        _in_mount(options, usb, *EDGE_APP, "export", "--reviewed", str(usb / "reviewed")),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EDGE_APP_STORAGE_DATA_DIR": str(data)},
    )
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr and "internal error" not in failed.stderr
    said = "no space left on device" if full else "read-only file system"
    assert said in failed.stderr.lower() and str(usb / "reviewed") in failed.stderr, failed.stderr
    left = failed.stdout.split()
    assert (str(usb / "reviewed" / "images" / "case-0001.png") in left) is full, "midway: the first case fitted"
    assert not any(f.endswith(MARKER) for f in left), "no marker: validate --record refuses what was cut short"
    assert _files(data) == before


def test_an_export_beside_the_running_service(
    cli: Cli, tmp_path: Path, reviewed_store: Path, free_port: int, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    data, out = tmp_path / "data", tmp_path / "reviewed"
    shutil.copytree(reviewed_store, data)
    proc = launch(data, free_port)
    try:
        made = cli("export", "--reviewed", str(out), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)})
        assert made.returncode == 0, made.stderr
        assert "5 reviewed image(s) written" in made.stdout
        urllib.request.urlopen(f"http://127.0.0.1:{free_port}/api/v1/health", timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(30)
