"""The watched folder, on a real folder: files taken once complete, moved to done/ or failed/ with the reason,
nothing deleted unread, images diagnosed."""

from __future__ import annotations

import io
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from edge_app.capture.folder import FolderWatcher
from edge_app.config import FolderCaptureSettings, Settings
from edge_app.ingest import Ingest
from edge_app.service import Service
from edge_app.store import Store
from support.dicom import dicom_file

pytestmark = pytest.mark.unit


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
    (root / ".Trashes").mkdir()
    (root / ".Trashes" / "old.png").write_bytes(_png())
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
    assert growing.exists() and (root / ".hidden.png").exists() and (root / ".Trashes" / "old.png").exists()

    growing.write_bytes(data)
    assert watcher.scan(now=3.0) == 0
    assert watcher.scan(now=5.5) == 1
    assert (root / "done" / "copying.dcm").read_bytes() == data
    ds = pydicom.dcmread(root / "done" / "copying.dcm", stop_before_pixels=True)
    (image,) = store.get_study(ds.StudyInstanceUID).images
    assert image.source == f"folder:{root}" and image.filename == "copying.dcm" and image.status == "queued"
    assert watcher.scan(now=10.0) == 0, "done/ and failed/ are not taken again"
    store.close()


def test_a_report_is_kept_with_its_study_and_an_image_class_without_pixels_fails(tmp_path: Path) -> None:
    """A DICOM object that holds no image (an SR) is kept with its study, not diagnosed, and moved to done/; a CR
    without pixel data is refused to failed/."""
    root = tmp_path / "import"
    root.mkdir()
    (root / "report.dcm").write_bytes(dicom_file("test-SR.dcm").read_bytes())
    cr = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    del cr.PixelData
    cr.save_as(root / "empty-cr.dcm")
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    assert watcher.scan(now=0.1) == 2
    assert (root / "done" / "report.dcm").exists() and (root / "failed" / "empty-cr.dcm").exists()
    sr = pydicom.dcmread(dicom_file("test-SR.dcm"))
    (kept,) = store.get_study(sr.StudyInstanceUID).images
    assert kept.sop_instance_uid == sr.SOPInstanceUID and kept.status == "rejected"
    assert kept.reason == "not an image (Comprehensive SR Storage): kept with the study, not diagnosed"
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


def test_the_service_watches_the_folder_and_diagnoses(
    tmp_path: Path, nih_png: Path, make_settings: Callable[..., Settings]
) -> None:
    root = tmp_path / "usb"
    root.mkdir()
    settings = make_settings(capture={"folder": {"enabled": True, "path": str(root), "poll_s": 0.05, "stable_s": 0.1}})
    with Service(settings) as service:
        (root / "chest.png").write_bytes(nih_png.read_bytes())
        deadline = time.monotonic() + 30
        while not (root / "done" / "chest.png").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (state,) = [s.state() for s in service.sources]
        assert state == {"name": "folder", "connected": True, "detail": str(root), "received": 1}
        (study,) = service.store.list_studies()
        assert service.store.wait_for(study.images[0].id, timeout=30) == ("done", None)


def _stored(store: Store) -> list[Path]:
    return [p for p in store.files_dir.rglob("*") if p.is_file()]


def test_a_linked_reason_file_is_left_alone_and_a_fresh_name_taken(tmp_path: Path) -> None:
    """A `failed/x.reason.txt` planted as a link to the database is neither followed nor overwritten."""
    root, database = tmp_path / "import", tmp_path / "edge.db"
    (root / "failed").mkdir(parents=True)
    database.write_bytes(b"every study")
    (root / "failed" / "notes.txt.reason.txt").symlink_to(database)
    (root / "notes.txt").write_text("not an image")
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    assert watcher.scan(now=0.1) == 1
    assert database.read_bytes() == b"every study"
    assert (root / "failed" / "notes.txt.reason.txt").readlink() == database
    assert (root / "failed" / "notes-1.txt").read_text() == "not an image"
    assert (root / "failed" / "notes-1.txt.reason.txt").read_text() == "not a DICOM (Part 10), PNG or JPEG file\n"
    store.close()


def test_links_hard_links_and_pipes_are_left_in_place_unread_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file linked to a secret (symbolic or hard link), a linked folder and a FIFO: none read, none moved,
    each named on the devices page (not in the log); the real image beside them is taken."""
    root, outside = tmp_path / "import", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret_key").write_bytes(b"forge an admin session")
    (outside / "edge.db").write_bytes(b"every study")
    (outside / "chest.png").write_bytes(_png())
    (root / "key.png").symlink_to(outside / "secret_key")
    (root / "db.dcm").hardlink_to(outside / "edge.db")
    (root / "elsewhere").symlink_to(outside)
    os.mkfifo(root / "pipe.dcm")
    (root / "real.png").write_bytes(_png())
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    assert watcher.state()["detail"] == f"{root}; left in place, not followed: pipe.dcm (not a regular file)", (
        "a pipe is named at first sight, never opened"
    )
    assert watcher.scan(now=0.1) == 1
    assert watcher.scan(now=0.2) == 0, "nothing is taken at a later look either"
    assert (root / "done" / "real.png").exists()
    (stored,) = _stored(store)
    assert stored.read_bytes() == _png()
    assert (root / "key.png").is_symlink() and (root / "elsewhere").is_symlink()
    assert (root / "db.dcm").stat().st_nlink == 2 and stat.S_ISFIFO((root / "pipe.dcm").lstat().st_mode)
    assert sorted(p.name for p in outside.iterdir()) == ["chest.png", "edge.db", "secret_key"]
    state = watcher.state()
    assert state["connected"] is True
    assert state["detail"] == (
        f"{root}; left in place, not followed: db.dcm (a file with another name: a hard link), elsewhere (a link), "
        "key.png (a link), pipe.dcm (not a regular file)"
    )
    for name in ("db.dcm", "elsewhere", "key.png", "pipe.dcm"):  # the technician removes them
        (root / name).unlink()
    watcher.scan(now=0.3)
    assert watcher.state()["detail"] == str(root)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [f"left in place, not followed in {root}: {n} (see the devices page)" for n in (1, 4)]
    store.close()


@pytest.mark.parametrize("folder", ["done", "failed", "done/day1", "failed/day1"])
def test_a_linked_done_or_failed_folder_stops_taking(tmp_path: Path, folder: str) -> None:
    """With `done/` or `failed/` (or a folder in them) a link, the files that would go there are not read,
    nothing is written where the link points, and the devices page says why."""
    root, outside = tmp_path / "import", tmp_path / "outside"
    (root / "day1").mkdir(parents=True)
    outside.mkdir()
    (root / folder).parent.mkdir(parents=True, exist_ok=True)
    (root / folder).symlink_to(outside)
    (root / "day1" / "chest.png").write_bytes(_png())
    (root / "day1" / "notes.txt").write_text("not an image")
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    assert watcher.state()["connected"] is (folder not in ("done", "failed")), "said at first sight"
    assert watcher.scan(now=0.1) == 0
    assert watcher.scan(now=0.2) == 0
    assert list(outside.iterdir()) == [] and _stored(store) == []
    assert sorted(p.name for p in (root / "day1").iterdir()) == ["chest.png", "notes.txt"]
    assert (root / folder).is_symlink()
    state = watcher.state()
    assert str(state["detail"]).endswith(
        f"{folder} (a link or not a folder: the files that would go there are not taken)"
    )
    assert state["connected"] is (folder not in ("done", "failed"))
    store.close()


def test_many_links_are_counted_past_the_first_five(tmp_path: Path) -> None:
    """A stick full of links does not fill the devices page: five are named, the rest counted."""
    root = tmp_path / "import"
    root.mkdir()
    for n in range(7):
        (root / f"{n}.png").symlink_to(tmp_path)
    store = Store(tmp_path / "data")
    watcher = _watcher(root, store, stable_s=0.0)
    watcher.scan(now=0.0)
    watcher.scan(now=0.1)
    named = ", ".join(f"{n}.png (a link)" for n in range(5))
    assert watcher.state()["detail"] == f"{root}; left in place, not followed: {named} and 2 more"
    store.close()
