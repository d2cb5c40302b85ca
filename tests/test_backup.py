"""`edge-app backup` and `restore` as a technician runs them: taken while the service holds data, checked, put
back into a fresh box, and a damaged backup refused before anything is touched."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.inference.model_import import import_folder
from edge_app.ops.secrets import init_tls
from edge_app.service import Service
from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from edge_app.store.schema import VERSION
from edge_app.web import create_app, services
from support.bundles import bundle_variant
from support.data import NIH
from support.dicom import dicom_file

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_a_backup_brings_a_box_back(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    data, stick = settings.storage.data_dir, tmp_path / "usb"
    init_tls(settings, [])
    with Service(settings) as svc:
        app = create_app(svc)
        svc.accounts.add_user("dr-ade", parse_roles("clinician"), "a long enough password")
        client = api_client(app)
        png = sorted((NIH / "images").glob("*.png"))[0]
        first = client.post("/api/v1/studies?filename=a.png", data=png.read_bytes()).get_json()
        second = client.post("/api/v1/studies?filename=rg1.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes())
        result_id = first["images"][0]["results"][0]["id"]
        svc.reviews.add(result_id, "dr-ade", {"Effusion": "disagree"}, "kept")
        made = cli("backup", str(stick), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)})  # while it runs
        assert made.returncode == 0, made.stderr
        client.post("/api/v1/studies?filename=late.png", data=sorted((NIH / "images").glob("*.png"))[1].read_bytes())
    (backup,) = stick.iterdir()
    assert backup.name.startswith("edge-app-backup-") and f"backup written to {backup}" in made.stdout
    assert (backup / "tls" / "cert.pem").is_file() and (backup / "secret_key").is_file()

    box = tmp_path / "new-box"
    restored = cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(box)})
    assert restored.returncode == 0, restored.stderr
    with Service(Settings.model_validate({"storage": {"data_dir": str(box)}, "model": {"threads": 1}})) as svc:
        app = create_app(svc)
        client = api_client(app)
        studies = client.get("/api/v1/studies").get_json()["studies"]
        assert {s["uid"] for s in studies} == {first["uid"], second.get_json()["uid"]}, "as at the backup"
        (image,) = client.get(f"/api/v1/studies/{first['uid']}").get_json()["images"]
        assert svc.store.read_file(image["sha256"]) == png.read_bytes()
        assert svc.reviews.of_image(image["id"])[0].note == "kept"
        assert svc.accounts.authenticate("dr-ade", "a long enough password") is not None

    again = cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(box)})
    assert again.returncode == 0 and "the previous data is kept in" in again.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("new-box.before-restore-")], "moved, not deleted"


def test_a_damaged_backup_is_refused_and_the_box_untouched(cli: Cli, tmp_path: Path, nih_png: Path) -> None:
    data, stick = tmp_path / "data", tmp_path / "usb"
    with Service(Settings.model_validate({"storage": {"data_dir": str(data)}, "model": {"threads": 1}})) as svc:
        with nih_png.open("rb") as fh:
            added = svc.ingest.submit(fh, "a.png", "test")
        assert added is not None
        svc.store.wait_for(added.image_id, 60)
    assert cli("backup", str(stick), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)}).returncode == 0
    (backup,) = stick.iterdir()
    stored = next(p for p in (backup / "files").rglob("*") if p.is_file())
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    box = tmp_path / "box"
    box.mkdir()
    (box / "marker").write_text("the box's own data")
    refused = cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(box)})
    assert refused.returncode == 2 and f"the stored file {stored.name} does not match its sha256" in refused.stderr
    assert (box / "marker").read_text() == "the box's own data"
    nothing = cli("restore", str(tmp_path), env={"EDGE_APP_STORAGE_DATA_DIR": str(box)})
    assert nothing.returncode == 2 and "is not an edge-app backup" in nothing.stderr
    empty = cli("backup", str(stick), env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "none")})
    assert empty.returncode == 2 and "nothing to back up" in empty.stderr


def test_no_restore_under_a_running_service_and_no_second_service(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    import pytest

    from edge_app.errors import ConfigError

    data, stick = tmp_path / "data", tmp_path / "usb"
    with Service(Settings.model_validate({"storage": {"data_dir": str(data)}, "model": {"threads": 1}})):
        assert cli("backup", str(stick), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)}).returncode == 0
        (backup,) = stick.iterdir()
        refused = cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)})
        assert refused.returncode == 2 and "stop the service first" in refused.stderr
        with pytest.raises(ConfigError, match="another edge-app service is using"):
            Service(Settings.model_validate({"storage": {"data_dir": str(data)}, "model": {"threads": 1}}))
    assert cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)}).returncode == 0


def _loose(top: Path) -> list[str]:
    """Whatever under `top` (itself included) a group or other user could read: its path and mode."""
    found = [top, *top.rglob("*")]
    return [f"{p} {stat.S_IMODE(p.lstat().st_mode):o}" for p in found if p.lstat().st_mode & 0o077]


def test_patient_data_is_the_owner_s_alone_whatever_the_umask(
    cli: Cli,
    tmp_path: Path,
    free_port: int,
    launch: Callable[..., subprocess.Popen[str]],
    token_for: Callable[..., dict[str, str]],
    nih_png: Path,
) -> None:
    """Outside the systemd units (a technician's shell, umask 022) `edge-app serve`, `backup`, `export` and
    `restore` make the data directory, the database and its -wal/-shm, the stored files, the backup and the
    export readable by their owner alone."""
    data, stick = tmp_path / "data", tmp_path / "usb"
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(data)}
    before = os.umask(0o022)
    try:
        proc = launch(data, free_port)
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{free_port}/api/v1/studies?filename=a.png",
                data=nih_png.read_bytes(),
                headers=token_for(data),
            )
            urllib.request.urlopen(req, timeout=120).close()
            assert {"edge-app.sqlite3-wal", "edge-app.sqlite3-shm"} <= {p.name for p in data.iterdir()}
            assert _loose(data) == [], "while it serves"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert cli("backup", str(stick), env=env).returncode == 0
        assert cli("export", str(stick), "--deidentify", env=env).returncode == 0
        restored = cli("restore", str(next(stick.glob("edge-app-backup-*"))), env=env)
        assert restored.returncode == 0, restored.stderr
    finally:
        os.umask(before)
    assert [p.name for p in stick.iterdir() if p.name.startswith("edge-app-export-")], "an export was written"
    assert _loose(stick) == [] and _loose(data) == []


def _trusted_backup(cli: Cli, tmp_path: Path) -> Path:
    """A backup of a box that served, with a clinician, two administrators (one disabled), an API token and an
    imported bundle."""
    data = tmp_path / "data"
    settings = Settings.model_validate(
        {"storage": {"data_dir": str(data)}, "model": {"threads": 1, "import_dir": str(tmp_path)}}
    )
    init_tls(settings, [])
    with Service(settings) as svc:
        app = create_app(svc)
        accounts = services.get_from(app).accounts
        for name, roles in {
            "dr-ade": "clinician",
            "boss": "admin",
            "mallory": "admin,clinician",
            "old": "admin",
        }.items():
            accounts.add_user(name, parse_roles(roles), "a long enough password")
        accounts.set_disabled("old", True)
        accounts.create_token("ris", parse_roles("technician"))
        import_folder(bundle_variant(tmp_path, "1.2.0"), settings)
    made = cli("backup", str(tmp_path / "usb"), env={"EDGE_APP_STORAGE_DATA_DIR": str(data)})
    assert made.returncode == 0, made.stderr
    (backup,) = (tmp_path / "usb").iterdir()
    return backup


def test_a_restore_says_what_it_brings(cli: Cli, tmp_path: Path) -> None:
    """A backup is trusted as a whole (accounts and session key included): the technician is told what came in,
    an administrator this box did not have marked."""
    backup = _trusted_backup(cli, tmp_path)
    box = tmp_path / "box"
    store = Store(box)
    try:
        Accounts(store).add_user("Boss", parse_roles("admin"), "a long enough password")
    finally:
        store.close()
    restored = cli("restore", str(backup), env={"EDGE_APP_STORAGE_DATA_DIR": str(box)})
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.splitlines()[1:] == [
        "the backup brings 0 studies and 4 accounts",
        "administrators: boss, mallory (new to this box)",
        "API tokens: ris (technician)",
        "model bundles: cxr-reference 1.2.0",
        "from the box it was made on: the session key (sessions signed with it are valid), the TLS certificate and key",
    ]


def test_a_restore_refuses_a_newer_schema_and_a_changed_bundle(cli: Cli, tmp_path: Path) -> None:
    """What the service would refuse or must not serve is refused before the box is touched: a database of a
    newer edge-app, a kept bundle whose files or whose identity changed, an unsigned one where signatures are
    required."""
    from converters.sign import generate_key

    backup = _trusted_backup(cli, tmp_path)
    box = tmp_path / "box"
    box.mkdir()
    (box / "marker").write_text("the box's own data")
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(box)}
    (kept,) = (backup / "bundles").iterdir()

    newer = Path(shutil.copytree(backup, tmp_path / "newer"))
    with sqlite3.connect(newer / "edge-app.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {VERSION + 1}")
    refused = cli("restore", str(newer), env=env)
    assert refused.returncode == 2 and f"schema version {VERSION + 1}, written by a newer edge-app" in refused.stderr

    altered = Path(shutil.copytree(backup, tmp_path / "altered"))
    with (altered / "bundles" / kept.name / "model.onnx").open("ab") as fh:
        fh.write(b"\x00")
    refused = cli("restore", str(altered), env=env)
    assert refused.returncode == 2 and f"model bundle {kept.name} is refused: " in refused.stderr
    assert "has been altered" in refused.stderr

    swapped = Path(shutil.copytree(backup, tmp_path / "swapped"))
    shutil.rmtree(swapped / "bundles" / kept.name)
    shutil.copytree(bundle_variant(tmp_path, "6.6.6"), swapped / "bundles" / kept.name)
    refused = cli("restore", str(swapped), env=env)
    assert refused.returncode == 2 and f"model bundle {kept.name} is refused: its manifest is " in refused.stderr

    (tmp_path / "keys").mkdir()
    generate_key(tmp_path / "keys" / "clinic")
    signed_only = {
        "EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true",
        "EDGE_APP_MODEL_TRUSTED_KEYS": f'["{tmp_path / "keys"}"]',
    }
    refused = cli("restore", str(backup), env={**env, **signed_only})
    assert refused.returncode == 2 and f"model bundle {kept.name} is refused: " in refused.stderr
    assert (box / "marker").read_text() == "the box's own data" and [p.name for p in box.iterdir()] == ["marker"]
