"""The retention policy: old images' files go, their results, heatmaps and reviews stay, and the pages say so."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.ops.retention import Retention
from edge_app.web import services
from support.data import NIH

pytestmark = pytest.mark.unit


def test_old_images_lose_their_files_and_keep_their_findings(
    app: Flask, client: FlaskClient, auth: Any, browser: FlaskClient
) -> None:
    svc = services.get_from(app)
    images = sorted((NIH / "images").glob("*.png"))[:2]
    old, new = (client.post(f"/api/v1/studies?filename={p.name}", data=p.read_bytes()).get_json() for p in images)
    (old_image,) = old["images"]
    result_id = old_image["results"][0]["id"]
    svc.reviews.add(result_id, "dr-ade", {"Cardiomegaly": "agree"}, "seen")
    with svc.store.transaction() as db:
        db.execute("UPDATE images SET created_at = '2020-01-01T00:00:00.000+00:00' WHERE id = ?", (old_image["id"],))
    files = [svc.store.file_path(old_image["sha256"]), svc.store.file_path(old_image["view_sha256"])]
    assert all(f.is_file() for f in files)

    assert Retention(svc.store, days=30).run_once() == 1
    assert not any(f.exists() for f in files)
    assert Retention(svc.store, days=30).run_once() == 0, "once"
    study = client.get(f"/api/v1/studies/{old['uid']}").get_json()
    (image,) = study["images"]
    assert image["purged_at"] and image["view_sha256"] is None
    assert image["results"][0]["findings"] == old_image["results"][0]["findings"], "the findings stay"
    assert svc.reviews.of_image(image["id"])[0].note == "seen"
    heatmaps = image["results"][0]["heatmaps"]
    assert heatmaps and all(svc.store.file_path(m["sha256"]).is_file() for m in heatmaps)
    (kept,) = client.get(f"/api/v1/studies/{new['uid']}").get_json()["images"]
    assert kept["purged_at"] is None and svc.store.file_path(kept["sha256"]).is_file(), "a recent one stays"
    assert svc.store.remove_orphans() == 0
    assert ("system", "retention.purge") in [(e["actor"], e["action"]) for e in svc.store.audit_trail()]

    auth.login("clinician")
    page = browser.get(f"/studies/{old['uid']}").get_data(as_text=True)
    assert "The image was removed on" in page and 'class="preview"' not in page
    assert browser.get(f"/studies/{old['uid']}/report.pdf").status_code == 200


def test_the_cutoff_is_the_number_of_days(app: Flask, client: FlaskClient, nih_png: Any) -> None:
    svc = services.get_from(app)
    client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    assert Retention(svc.store, days=2).run_once(now + dt.timedelta(days=1, hours=23)) == 0
    assert Retention(svc.store, days=2).run_once(now + dt.timedelta(days=2, minutes=1)) == 1


def test_a_file_two_images_share_stays_while_one_of_them_is_kept(app: Flask, client: FlaskClient, nih_png: Any) -> None:
    """Files are named by their content: the same picture sent twice (a retry) is one file for two images."""
    svc = services.get_from(app)
    old, new = (client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json() for _ in range(2))
    assert old["uid"] != new["uid"] and old["images"][0]["sha256"] == new["images"][0]["sha256"]
    with svc.store.transaction() as db:
        db.execute("UPDATE images SET created_at = '2020-01-01T00:00:00.000+00:00' WHERE id = ?", (old["image_id"],))
    assert Retention(svc.store, days=30).run_once() == 1
    (kept,) = client.get(f"/api/v1/studies/{new['uid']}").get_json()["images"]
    assert svc.store.read_file(kept["sha256"]) == nih_png.read_bytes()
    assert svc.store.file_path(kept["view_sha256"]).is_file()


def test_a_round_that_fails_is_logged_and_the_next_one_runs(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The database gone from under it (closed): each round fails, logged; the loop lives on and tries again."""
    from edge_app.store import Store

    store = Store(tmp_path)
    store.close()
    retention = Retention(store, days=1, every_s=0.05)
    retention.start()
    try:
        deadline = time.monotonic() + 10
        while caplog.text.count("edge-retention failed") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert caplog.text.count("edge-retention failed") >= 2
        assert retention._loop_thread.running
    finally:
        retention.stop()
    assert not retention._loop_thread.running
