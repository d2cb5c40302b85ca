"""Before the disk fills: new images are refused with a clear status by every way in (the API 507, a C-STORE
0xA700, a watched folder leaves the file where it is), and nothing is half-stored."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pynetdicom import AE

from edge_app.capture.folder import FolderWatcher
from edge_app.config import FolderCaptureSettings
from edge_app.ingest import Ingest
from edge_app.service import Service
from edge_app.store import Store
from edge_app.web import create_app
from support.dicom import dicom_file

pytestmark = pytest.mark.integration


def _more_than_free(path: Path) -> int:
    """A guard just above what is free: whatever this machine has, the box counts as nearly full."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free // 2**20 + 100


def _stored(data: Path) -> list[Path]:
    return [p for p in (data / "files").rglob("*") if p.is_file()]


def test_the_api_answers_507_and_keeps_nothing(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], nih_png: Path, service: Callable[..., Service]
) -> None:
    data = tmp_path / "data"
    guard = _more_than_free(data)
    app = create_app(service({"storage": {"data_dir": str(data), "min_free_mb": guard}, "model": {"threads": 1}}))
    client = api_client(app)
    resp = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes())
    assert resp.status_code == 507
    assert f"storage.min_free_mb is {guard}): new images are refused" in resp.get_json()["detail"]
    assert client.get("/api/v1/studies").get_json()["studies"] == [] and _stored(data) == []


def test_a_dicom_association_is_refused_for_now(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    """Looked at before any data set arrives: a transient rejection, so the modality keeps the image and tries
    again (a C-STORE on an association opened before gets 0xA700: test_dicom_receiver)."""
    data = tmp_path / "data"
    service(
        {
            "storage": {"data_dir": str(data), "min_free_mb": _more_than_free(data)},
            "model": {"threads": 1},
            "capture": {"dicom": {"enabled": True, "host": "127.0.0.1", "port": free_port}},
        }
    )
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
    assert assoc.is_rejected and assoc.acceptor.primitive.result == 0x02, "rejected transient"
    assert _stored(data) == []


def test_a_watched_folder_leaves_the_file_for_later(tmp_path: Path, nih_png: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "import"
    root.mkdir()
    shutil.copy(nih_png, root / "chest.png")
    store = Store(data)
    try:
        guard = _more_than_free(data)
        ingest = Ingest(store, min_free_mb=guard)
        watcher = FolderWatcher(FolderCaptureSettings(enabled=True, path=root, stable_s=0.0), ingest)
        watcher.scan(now=0.0)
        assert watcher.scan(now=10.0) == 0
        assert (root / "chest.png").is_file() and not (root / "failed").exists(), "left where it was"
        ingest.min_free_mb = 0  # space was freed
        assert watcher.scan(now=20.0) == 1 and (root / "done" / "chest.png").is_file()
    finally:
        store.close()
