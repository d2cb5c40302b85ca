"""The durable store: SQLite settings, content addressing, studies and results."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from edge_app.errors import NotFound
from edge_app.store import Store


def test_durability_settings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL
    assert store.pragma("user_version") == 1
    store.close()


def test_files_are_content_addressed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_file(b"pixels")
    assert digest == hashlib.sha256(b"pixels").hexdigest()
    assert store.put_file(b"pixels") == digest
    assert store.read_file(digest) == b"pixels"
    assert not list(store.files_dir.rglob(".incoming-*"))
    with pytest.raises(NotFound):
        store.read_file("../../etc/passwd")
    with pytest.raises(NotFound):
        store.read_file("0" * 64)


def test_study_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest, size = store.put_stream(io.BytesIO(b"image bytes"))
    uid, image_id = store.add_study(digest, size, filename="a.dcm", source="api")
    store.set_image_metadata(image_id, {"modality": "CR"}, patient_id="P1")
    store.add_result(image_id, status="rejected", model={"name": "m"}, bundle_sha256="b" * 64, reason="why")
    store.close()

    again = Store(tmp_path)
    study = again.get_study(uid)
    assert study["patient_id"] == "P1" and study["source"] == "api"
    (image,) = study["images"]
    assert image["metadata"] == {"modality": "CR"}
    assert image["results"][0]["status"] == "rejected" and image["results"][0]["reason"] == "why"
    assert again.read_file(image["sha256"]) == b"image bytes"
    with pytest.raises(NotFound):
        again.get_study("nope")
    again.close()
