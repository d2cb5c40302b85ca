"""Models an administrator brings to the box: uploaded or from a USB folder, verified, put in service, rolled back;
per-site thresholds, versioned and tied to the bundle's sha256. All through the admin pages."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.service import Service
from edge_app.web import create_app, services
from support.bundles import bundle_variant
from support.web import AuthActions

pytestmark = pytest.mark.unit


def _zip(folder: Path, top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


@pytest.fixture
def admin(app: Flask, auth: AuthActions, browser: FlaskClient) -> Iterator[tuple[FlaskClient, str]]:
    auth.login("admin", name="boss")
    yield browser, auth.csrf("/admin/models")


def _upload(admin: tuple[FlaskClient, str], data: bytes) -> str:
    browser, token = admin
    resp = browser.post(
        "/admin/models/upload",
        data={"csrf_token": token, "bundle": (io.BytesIO(data), "bundle.zip")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 302
    return browser.get("/admin/models").get_data(as_text=True)


def test_an_uploaded_bundle_is_verified_kept_and_put_in_service(
    app: Flask, admin: tuple[FlaskClient, str], tmp_path: Path, client: FlaskClient, nih_png: Path
) -> None:
    svc = services.get_from(app)
    variant = bundle_variant(tmp_path, "1.2.0")
    page = _upload(admin, _zip(variant, top="cxr-reference/"))
    assert "cxr-reference 1.2.0 verified and imported." in page
    sha = load_bundle(variant).sha256
    assert (svc.settings.storage.data_dir / "bundles" / sha / "model.onnx").is_file()
    assert not [p for p in (svc.settings.storage.data_dir / "bundles").iterdir() if p.name.startswith(".")]
    browser, token = admin
    browser.post(f"/admin/models/{sha}/activate", data={"csrf_token": token})
    assert client.get("/api/v1/health").get_json()["version"] == "1.2.0"
    resp = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes())
    assert resp.get_json()["images"][0]["results"][0]["model"]["version"] == "1.2.0"
    actions = [(e["actor"], e["action"]) for e in svc.store.audit_trail()]
    assert ("boss", "model.import") in actions and ("boss", "model.activate") in actions
    browser.post("/admin/models/rollback", data={"csrf_token": token})
    assert client.get("/api/v1/health").get_json()["version"] == "1.1.1", "back to the configured model"


def test_the_model_in_service_and_the_site_thresholds_outlive_a_restart(
    settings: Settings,
    tmp_path: Path,
    api_client: Callable[[Flask], FlaskClient],
    nih_png: Path,
    service: Callable[..., Service],
) -> None:
    with Service(settings) as svc:
        bundle = svc.lifecycle.activate(bundle_variant(tmp_path, "1.3.0"), "boss")
        labels = bundle.manifest.labels
        assert svc.lifecycle.set_thresholds(bundle.sha256, dict.fromkeys(labels, 0.0), "boss") == 1
        assert svc.lifecycle.set_thresholds(bundle.sha256, dict.fromkeys(labels, 1.0), "boss") == 2
    app = create_app(service(settings))
    client = api_client(app)
    assert client.get("/api/v1/health").get_json()["version"] == "1.3.0"
    result = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json()
    findings = result["images"][0]["results"][0]["findings"]
    assert {f["threshold"] for f in findings} == {1.0}, "the site's version 2"
    assert not any(f["positive"] for f in findings if f["probability"] < 1.0)


def test_site_thresholds_from_the_admin_page(
    app: Flask, admin: tuple[FlaskClient, str], client: FlaskClient, nih_png: Path
) -> None:
    svc = services.get_from(app)
    sha = svc.registry.diagnosers[0].bundle.sha256
    labels = svc.registry.diagnosers[0].bundle.manifest.labels
    browser, token = admin
    form = {"csrf_token": token, **{f"threshold-{label}": "0" for label in labels}}
    browser.post(f"/admin/models/{sha}/thresholds", data=form)
    findings = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json()
    every = findings["images"][0]["results"][0]["findings"]
    assert all(f["positive"] == f["validated"] and f["threshold"] == 0.0 for f in every), "not validated: never"
    for bad in ({**form, f"threshold-{labels[0]}": "1.5"}, {**form, f"threshold-{labels[0]}": "x"}):
        browser.post(f"/admin/models/{sha}/thresholds", data=bad)
    page = browser.get("/admin/models").get_data(as_text=True)
    assert "Thresholds: site version 1" in page, "a wrong value makes no new version"
    missing = {k: v for k, v in form.items() if k != f"threshold-{labels[0]}"}
    browser.post(f"/admin/models/{sha}/thresholds", data=missing)
    assert "thresholds are needed for exactly the model&#39;s labels" in browser.get("/admin/models").get_data(
        as_text=True
    )
    assert [t.version for t in svc.lifecycle.history.threshold_history(sha)] == [1]
    assert ("boss", "model.thresholds") in [(e["actor"], e["action"]) for e in svc.store.audit_trail()]


def _flip_reference(folder: Path) -> None:
    outputs = np.load(folder / "reference_outputs.npy")
    np.save(folder / "reference_outputs.npy", -outputs)


def _altered(tmp: Path) -> bytes:
    folder = bundle_variant(tmp, "9.0.0")
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    return _zip(folder)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_altered, "has been altered: model.onnx has sha256"),
        (lambda tmp: _zip(bundle_variant(tmp, "9.0.2")).replace(b"cxr-reference", b"cxr-referencX", 1), "damaged"),
        (lambda tmp: b"PK\x03\x04 not really a zip", "the upload is not a .zip file"),
        (
            lambda tmp: _zip(bundle_variant(tmp, "9.0.1", _flip_reference)),
            "does not reproduce its own reference outputs",
        ),
    ],
    ids=["a-changed-byte", "a-damaged-zip", "not-a-zip", "reference-outputs-wrong"],
)
def test_a_bad_bundle_is_refused_with_the_reason_and_nothing_kept(
    app: Flask, admin: tuple[FlaskClient, str], tmp_path: Path, build: Callable[[Path], bytes], reason: str | None
) -> None:
    page = _upload(admin, build(tmp_path))
    assert "The bundle was refused:" in page
    if reason:
        assert reason in page.replace("&#39;", "'")
    bundles = services.get_from(app).settings.storage.data_dir / "bundles"
    assert not bundles.exists() or not list(bundles.iterdir())
    assert "model.import.refused" in [e["action"] for e in services.get_from(app).store.audit_trail()]


def test_a_zip_that_leaves_its_folder_is_refused(app: Flask, admin: tuple[FlaskClient, str]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("manifest.json", "{}")
        archive.writestr("../../escaped.txt", "x")
    page = _upload(admin, buf.getvalue())
    assert "a path that leaves its folder" in page
    assert not (services.get_from(app).settings.storage.data_dir.parent / "escaped.txt").exists()


def test_a_bundle_from_the_usb_folder(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    usb = tmp_path / "usb"
    (usb / "models").mkdir(parents=True)
    variant = bundle_variant(tmp_path, "2.0.0")
    shutil.copytree(variant, usb / "models" / "cxr-2")
    app = create_app(
        service({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1, "import_dir": str(usb)}})
    )
    auth = AuthActions(app, app.test_client())
    auth.login("admin", name="boss")
    token = auth.csrf("/admin/models")
    page = auth.client.get("/admin/models").get_data(as_text=True)
    assert str(usb / "models" / "cxr-2") in page
    auth.client.post("/admin/models/import", data={"csrf_token": token, "path": str(usb / "models" / "cxr-2")})
    auth.client.post("/admin/models/import", data={"csrf_token": token, "path": str(EMBEDDED_BUNDLE)})
    page = auth.client.get("/admin/models").get_data(as_text=True)
    assert "cxr-reference 2.0.0 verified and imported." in page
    assert "is not a bundle folder inside" in page, "nothing is taken from outside the import folder"
    assert [b.version for b in services.get_from(app).lifecycle.history.changes()] == ["2.0.0"]


def test_a_rollback_with_nothing_activated_says_so(app: Flask, admin: tuple[FlaskClient, str]) -> None:
    browser, token = admin
    browser.post("/admin/models/rollback", data={"csrf_token": token})
    assert "no model was activated here" in browser.get("/admin/models").get_data(as_text=True)


def test_odd_zips_are_refused_plainly(app: Flask, admin: tuple[FlaskClient, str]) -> None:
    for members in ((".", "x"), ("a", "a/b")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            for name in members:
                archive.writestr(name, "x")
        page = _upload(admin, buf.getvalue())
        assert "The bundle was refused:" in page, members


def test_an_import_in_progress_is_never_offered(app: Flask, admin: tuple[FlaskClient, str]) -> None:
    staging = services.get_from(app).settings.storage.data_dir / "bundles" / ".incoming-abc"
    shutil.copytree(EMBEDDED_BUNDLE, staging)
    browser, _ = admin
    assert ".incoming-abc" not in browser.get("/admin/models").get_data(as_text=True)
    assert "No bundle imported yet." in browser.get("/admin/models").get_data(as_text=True)
