"""The watched folder, on a real folder: files taken once complete, moved to done/ or failed/ with the reason,
nothing deleted unread, images diagnosed."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from conftest import dicom_file
from edge_app.capture.folder import FolderWatcher
from edge_app.config import FolderCaptureSettings, Settings
from edge_app.ingest import Ingest
from edge_app.service import Service
from edge_app.store import Store


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _watcher(root: Path, store: Store, stable_s: float = 2.0) -> FolderWatcher:
    return FolderWatcher(FolderCaptureSettings(enabled=True, path=root, stable_s=stable_s), Ingest(store))


def test_files_are_taken_once_complete_and_moved(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "day1").mkdir(parents=True)
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store)
    (root / "day1" / "chest.png").write_bytes(_png())
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(_png())
    growing = root / "copying.dcm"
    data = dicom_file("RG1_UNCR.dcm").read_bytes()
    growing.write_bytes(data[:1000])

    assert watcher.scan(now=0.0) == 0, "first sight: nothing is known to be complete"
    growing.write_bytes(data[:5000])  # still being copied
    assert watcher.scan(now=1.0) == 0
    assert watcher.scan(now=2.5) == 2, "chest.png and notes.txt stayed the same for 2 s; copying.dcm did not"
    assert (root / "done" / "day1" / "chest.png").read_bytes() == _png()
    assert (root / "failed" / "notes.txt").read_text() == "not an image"
    assert (root / "failed" / "notes.txt.reason.txt").read_text() == "not a DICOM (Part 10), PNG or JPEG file\n"
    assert growing.exists() and (root / ".hidden.png").exists()

    growing.write_bytes(data)
    assert watcher.scan(now=3.0) == 0
    assert watcher.scan(now=5.5) == 1
    assert (root / "done" / "copying.dcm").read_bytes() == data
    ds = pydicom.dcmread(root / "done" / "copying.dcm", stop_before_pixels=True)
    (image,) = store.get_study(ds.StudyInstanceUID)["images"]
    assert image["source"] == f"folder:{root}" and image["filename"] == "copying.dcm" and image["status"] == "queued"
    assert watcher.scan(now=10.0) == 0, "done/ and failed/ are not taken again"
    store.close()


def test_a_name_taken_in_done_gets_a_suffix_and_an_empty_file_fails(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "done").mkdir(parents=True)
    (root / "done" / "a.png").write_bytes(b"earlier")
    (root / "a.png").write_bytes(_png())
    (root / "empty.dcm").write_bytes(b"")
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    assert watcher.scan(now=0.1) == 2
    assert (root / "done" / "a.png").read_bytes() == b"earlier" and (root / "done" / "a-1.png").read_bytes() == _png()
    assert (root / "failed" / "empty.dcm.reason.txt").read_text() == "the file is empty\n"
    store.close()


def test_the_service_watches_the_folder_and_diagnoses(tmp_path: Path, nih_png: Path) -> None:
    root = tmp_path / "usb"
    root.mkdir()
    settings = Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1},
            "capture": {"folder": {"enabled": True, "path": str(root), "poll_s": 0.05, "stable_s": 0.1}},
        }
    )
    service = Service(settings)
    service.start()
    try:
        (root / "chest.png").write_bytes(nih_png.read_bytes())
        deadline = time.monotonic() + 30
        while not (root / "done" / "chest.png").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (state,) = [s.state() for s in service.sources]
        assert state == {"name": "folder", "connected": True, "detail": str(root), "received": 1}
        (study,) = service.store.list_studies()
        assert service.store.wait_for(study["images"][0]["id"], timeout=30) == ("done", None)
    finally:
        service.stop()
