"""The durable store: SQLite settings, content addressing, studies keyed by DICOM UIDs, jobs with leases, and
the migration of a version-1 database."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest

from edge_app.bundles.findings import Finding
from edge_app.errors import ConfigError, IdentityConflict, LeaseLost, NotFound, UserError
from edge_app.imaging.header import ImageHeader, generated_header
from edge_app.store import ModelResult, Outcome, Store
from edge_app.store.schema import _V1
from support.migrations import database_at

pytestmark = pytest.mark.unit

MODEL = {"name": "m", "version": "1", "precision": "fp32", "runner": "onnxruntime"}
FINDING = Finding("x", 0.75, 0.5).as_dict()


def _header(study: str = "1.2.3", series: str = "1.2.3.4", sop: str = "1.2.3.4.5") -> ImageHeader:
    return ImageHeader("dicom", study, series, sop, modality="CR", body_part="CHEST", patient_id="P1")


def _add(store: Store, data: bytes, header: ImageHeader, **kw: str):  # type: ignore[no-untyped-def]
    digest, size = store.put_stream(io.BytesIO(data))
    return store.add_image(digest, size, "a.dcm", "api", header, **kw)


def _diagnose_next(store: Store, *results: ModelResult) -> None:
    """Claim the next job and finish it with these results, as the worker does."""
    job = store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None
    store.finish_job(job, Outcome("done", results=list(results)))


def test_the_switch_to_wal_waits_for_another_writer_up_to_its_limit(tmp_path: Path) -> None:
    """Another connection writing (the worker migrating a new database as the front starts): SQLite refuses the
    switch at once, busy handler or not; it is tried again until the writer is done, or refused after `wait_s`."""
    import threading

    from edge_app.store.db import _write_ahead_log

    path = tmp_path / "edge-app.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _write_ahead_log(db, wait_s=1.0)
    assert 0.9 <= time.monotonic() - t0 < 5, "refused after its second, not at once nor never"
    threading.Timer(0.3, lambda: writer.execute("COMMIT")).start()
    _write_ahead_log(db, wait_s=2.0)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.close()
    db.close()


def test_durability_settings(tmp_path: Path) -> None:
    """WAL, full sync, foreign keys enforced (on again after the migration turned them off), and the tables made
    anew by version 7 (images, results) with their indexes, the unique SOP Instance UID among them."""
    store = Store(tmp_path)
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL
    assert store.pragma("user_version") == 16
    assert store.pragma("foreign_keys") == 1
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store.transaction() as db:
        db.execute("INSERT INTO heatmaps VALUES (99, 0, 'x', 'y')")
    indexes = {r[1]: r[2] for table in ("images", "results") for r in store.query(f"PRAGMA index_list({table})")}
    assert {name: unique for name, unique in indexes.items() if not name.startswith("sqlite_")} == {
        "images_study": 0,
        "images_series": 0,
        "images_sop": 1,
        "results_image": 0,
    }
    store.close()


def test_files_are_content_addressed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_file(b"pixels")
    assert digest == hashlib.sha256(b"pixels").hexdigest()
    assert store.put_file(b"pixels") == digest
    assert store.read_file(digest) == b"pixels"
    assert not list(store.files_dir.rglob(".incoming-*"))
    assert store.put_stream(io.BytesIO(b"")) == (hashlib.sha256(b"").hexdigest(), 0)
    assert not store.file_path(hashlib.sha256(b"").hexdigest()).exists(), "nothing is kept of an empty stream"
    with pytest.raises(NotFound):
        store.read_file("../../etc/passwd")
    with pytest.raises(NotFound):
        store.read_file("0" * 64)


def test_images_are_grouped_by_their_dicom_uids(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = _add(store, b"one", _header(sop="1.9.1"))
    second = _add(store, b"two", _header(sop="1.9.2"))
    other = _add(store, b"three", _header(study="7.7", series="7.7.1", sop="7.7.1.1"))
    assert first.study_uid == second.study_uid == "1.2.3" and other.study_uid == "7.7"
    study = store.get_study("1.2.3")
    assert [i.sop_instance_uid for i in study.images] == ["1.9.1", "1.9.2"]
    assert {i.series_uid for i in study.images} == {"1.2.3.4"}
    assert study.patient_id == "P1" and all(i.status == "queued" for i in study.images)
    assert store.queued() == 3
    store.close()


def test_a_duplicate_sop_instance_is_acknowledged_not_added(tmp_path: Path) -> None:
    """The same bytes again are the image held; other bytes under its SOP Instance UID are a conflict, and
    nothing of them is recorded here (ingest keeps them apart)."""
    store = Store(tmp_path)
    first = _add(store, b"image", _header())
    again = _add(store, b"image", _header())
    assert again.duplicate and again.image_id == first.image_id and again.status == "queued"
    with pytest.raises(IdentityConflict, match="same SOP Instance UID and other content"):
        _add(store, b"image sent twice, other bytes", _header())
    assert len(store.get_study("1.2.3").images) == 1 and store.queued() == 1
    store.close()


@pytest.mark.parametrize(
    ("held", "arriving", "reason"),
    [
        ("P1", "P2", "belongs to another patient's study"),
        ("P1", "", "carries no patient ID and its Study Instance UID names a patient's study"),
        ("", "P2", "names a study held without a patient ID"),
    ],
)
def test_an_image_joins_a_study_only_with_its_patient_id(tmp_path: Path, held: str, arriving: str, reason: str) -> None:
    """No ID never matches a known patient; the study, its series and its queue are left as they were."""
    from dataclasses import replace

    store = Store(tmp_path)
    _add(store, b"first", replace(_header(), patient_id=held))
    with pytest.raises(IdentityConflict, match=reason):
        _add(store, b"second", replace(_header(sop="1.2.3.4.6"), patient_id=arriving))
    with pytest.raises(IdentityConflict, match=reason):  # nor through another series
        _add(store, b"third", replace(_header(series="1.2.3.9", sop="1.2.3.4.7"), patient_id=arriving))
    with pytest.raises(IdentityConflict, match="Series Instance UID belongs to another study"):
        _add(store, b"fourth", replace(_header(study="7.7", sop="1.2.3.4.8"), patient_id=held))
    study = store.get_study("1.2.3")
    assert len(study.images) == 1 and study.patient_id == held and store.queued() == 1
    same = _add(store, b"fifth", replace(_header(sop="1.2.3.4.9"), patient_id=""), patient_id=held)
    assert same.study_uid == "1.2.3", "the ID given with the image (a scanned barcode) is its identity"
    store.close()


def test_a_refused_arrival_is_kept_without_a_job(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"%PDF", generated_header(), reason="not a DICOM (Part 10), PNG or JPEG file")
    (image,) = store.get_study(added.study_uid).images
    assert image.status == "rejected" and image.reason.startswith("not a DICOM")
    assert store.queued() == 0 and store.claim_job(60, 3) is None
    store.close()


def test_a_job_is_claimed_once_and_its_outcome_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    job = store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None and job.image_id == added.image_id and job.attempts == 1
    assert job.header == _header() and job.metadata["modality"] == "CR"
    assert store.claim_job(lease_s=60, max_attempts=3) is None, "leased: no second worker gets it"
    maps = [("y", b"png of y"), ("x", b"png of x")]  # the most probable finding's first
    result = ModelResult("ok", MODEL, "b" * 64, findings=[FINDING], heatmaps=maps, timings={"t": 1})
    store.finish_job(job, Outcome("done", metadata={"rows": 10}, results=[result]))
    assert store.wait_for(added.image_id, timeout=0) == ("done", None)
    (image,) = store.get_study("1.2.3").images
    assert image.metadata["rows"] == 10 and image.metadata["modality"] == "CR"
    (r,) = image.results
    assert r.status == "ok" and r.bundle_sha256 == "b" * 64
    assert [(m.label, store.read_file(m.sha256)) for m in r.heatmaps] == maps, "each kept, in order"
    assert r.heatmap() == r.heatmaps[0] and r.heatmap("x") == r.heatmaps[1]
    assert r.heatmap("z") is None
    assert store.remove_orphans() == 0, "heatmap files are in use"
    assert [f.json() for f in store.get_result(r.id).findings] == [FINDING]
    assert store.queued() == 0
    store.close()


def test_a_lease_that_runs_out_is_claimed_again_then_given_up(tmp_path: Path) -> None:
    """A worker that dies holding a job: the job comes back after its lease; one that kills every worker that
    takes it fails its image after the last attempt instead of looping for ever."""
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    for attempt in (1, 2, 3):
        job = store.claim_job(lease_s=-1, max_attempts=3)  # the lease has run out as soon as it is taken
        assert job is not None and job.attempts == attempt
    assert store.claim_job(lease_s=-1, max_attempts=3) is None
    status, reason = store.image_status(added.image_id)
    assert status == "failed" and reason is not None and reason.startswith("gave up after 3 attempts")
    store.close()


def test_a_claim_whose_lease_ran_out_records_nothing_once_another_holds_its_job(tmp_path: Path) -> None:
    """Two workers: the first's lease runs out while it diagnoses, the second claims the job. The first's late
    outcome, renewal and requeue change nothing (LeaseLost for the outcome); the second's outcome is the one kept,
    once; after it, the first's claim still changes nothing."""
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    late = store.claim_job(lease_s=-1, max_attempts=3)
    holder = store.claim_job(lease_s=60, max_attempts=3)
    assert late is not None and holder is not None and (late.id, late.attempts, holder.attempts) == (holder.id, 1, 2)
    store.renew_jobs([late], lease_s=-1)  # the first's renewal would not shorten the second's lease
    store.requeue_job(late)  # nor put the job back in the queue
    with pytest.raises(LeaseLost, match=f"image {added.image_id}: attempt 1 no longer holds its job"):
        store.finish_job(late, Outcome("failed", reason="late"))
    assert store.claim_job(lease_s=60, max_attempts=3) is None, "the second's lease holds"
    assert tuple(store.query("SELECT state, attempts FROM jobs")[0]) == ("running", 2)
    assert store.image_status(added.image_id) == ("queued", None)
    assert store.query("SELECT count(*) FROM results")[0][0] == 0
    recorded = store.finish_job(holder, Outcome("done", results=[ModelResult("ok", MODEL, "b" * 64)]))
    assert len(recorded) == 1 and store.image_status(added.image_id)[0] == "done"
    for claim in (late, holder):  # finished: neither claim holds it now
        with pytest.raises(LeaseLost):
            store.finish_job(claim, Outcome("done", results=[ModelResult("ok", MODEL, "b" * 64)]))
        store.requeue_job(claim)
    assert store.query("SELECT state FROM jobs")[0][0] == "done"
    assert store.query("SELECT count(*) FROM results")[0][0] == 1
    store.close()


def test_a_claim_renews_and_requeues_its_own_job(tmp_path: Path) -> None:
    """The holder's renewal keeps its job from a second claim past the first lease; its requeue puts it back."""
    store = Store(tmp_path)
    _add(store, b"image", _header())
    job = store.claim_job(lease_s=-1, max_attempts=3)
    assert job is not None
    store.renew_jobs([job], lease_s=60)
    assert store.claim_job(lease_s=60, max_attempts=3) is None, "renewed"
    store.requeue_job(job)
    assert tuple(store.query("SELECT state, lease_until FROM jobs")[0]) == ("queued", 0)
    again = store.claim_job(lease_s=60, max_attempts=3)
    assert again is not None and again.attempts == 2
    store.close()


def test_leases_are_released_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _add(store, b"image", _header())
    assert store.claim_job(lease_s=3600, max_attempts=3) is not None
    assert store.claim_job(lease_s=3600, max_attempts=3) is None
    assert store.release_leases() == 1
    job = store.claim_job(lease_s=3600, max_attempts=3)
    assert job is not None and job.attempts == 2
    store.close()


def test_waiting_for_a_queued_image_times_out(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    assert store.wait_for(added.image_id, timeout=0.05) == ("queued", None)
    with pytest.raises(NotFound):
        store.image_status(10**6)
    store.close()


def test_a_version_1_database_is_taken_forward(tmp_path: Path) -> None:
    """Studies, images and results of version 1 survive; each image gets a series, its SOP Instance UID (from its
    metadata where it had one) and the status of its last result; an image without a result gets a job."""
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    db.executescript(_V1 + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO studies VALUES (1, 'abc', 't', 'api', 'P9')")
    db.execute(
        "INSERT INTO images VALUES (1, 1, 't', 'a.dcm', ?, 3, ?)", ("a" * 64, json.dumps({"sop_instance_uid": "1.5"}))
    )
    db.execute("INSERT INTO images VALUES (2, 1, 't', 'b.png', ?, 3, '{}')", ("b" * 64,))
    db.execute("INSERT INTO images VALUES (3, 1, 't', 'c.png', ?, 3, '{}')", ("c" * 64,))
    db.execute(
        "INSERT INTO results (image_id, created_at, status, reason, model, bundle_sha256) "
        "VALUES (1, 't', 'ok', NULL, '{}', 'x'), (2, 't', 'rejected', 'why', '{}', 'x')"
    )
    db.commit()
    db.close()

    store = Store(tmp_path)
    assert store.pragma("user_version") == 16
    study = store.get_study("abc")
    assert study.patient_id == "P9"
    a, b, c = study.images
    assert a.sop_instance_uid == "1.5" and a.status == "done" and a.source == "api"
    assert b.status == "rejected" and b.reason == "why" and b.sop_instance_uid
    assert c.status == "queued" and a.series_uid == b.series_uid == c.series_uid is not None
    job = store.claim_job(60, 3)
    assert job is not None and job.image_id == 3
    store.close()


def test_a_version_7_result_s_heatmap_becomes_its_first_of_many(tmp_path: Path) -> None:
    """Version 8 moves each result's single heatmap into the heatmaps table (rank 0) and drops the old columns."""
    db = database_at(tmp_path / "edge-app.sqlite3", 7)
    db.execute("INSERT INTO studies (uid, created_at, source) VALUES ('1.2', 't', 'test')")
    db.execute("INSERT INTO images (study_id, created_at, filename, sha256, size) VALUES (1, 't', 'a', 'ab', 1)")
    db.execute(
        "INSERT INTO results (image_id, created_at, status, model, bundle_sha256, heatmap_label, heatmap_sha256) "
        "VALUES (1, 't', 'ok', '{}', 'cd', 'Effusion', ?), (1, 't', 'ok', '{}', 'cd', NULL, NULL)",
        ("e" * 64,),
    )
    db.close()
    store = Store(tmp_path)
    assert store.pragma("user_version") == 16
    first, second = store.get_study("1.2").images[0].results
    assert first.json()["heatmaps"] == [{"label": "Effusion", "sha256": "e" * 64}] and second.heatmaps == ()
    columns = [r[1] for r in store.query("PRAGMA table_info(results)")]
    assert "heatmap_label" not in columns and "heatmap_sha256" not in columns
    store.close()


def test_a_version_15_outbox_is_kept_as_it_was(tmp_path: Path) -> None:
    """Version 16 adds to the outbox the result whose documents were not made: the rows of before are kept (none
    such), and a given-up one is sent again as it was, not made anew."""
    db = database_at(tmp_path / "edge-app.sqlite3", 15)
    db.execute("INSERT INTO studies (uid, created_at, source) VALUES ('1.2', 't', 'test')")
    db.execute("INSERT INTO series (study_id, uid, created_at) VALUES (1, '1.2.1', 't')")
    db.execute(
        "INSERT INTO images (study_id, created_at, filename, sha256, size, series_id, sop_instance_uid, status) "
        "VALUES (1, 't', 'a.dcm', 'ab', 1, 1, '1.2.1.1', 'done')"
    )
    db.execute(
        "INSERT INTO results (image_id, created_at, status, model, bundle_sha256) VALUES (1, 't', 'ok', '{}', 'x')"
    )
    db.execute(
        "INSERT INTO outbox (image_id, destination, kind, sha256, state, attempts, last_error, updated_at, queued_at) "
        "VALUES (1, 'PACS@h:104', 'sr', 'cd', 'failed', 20, 'connection refused', 't', 1.0)"
    )
    db.close()
    store = Store(tmp_path)
    assert store.pragma("user_version") == 16
    assert [tuple(r) for r in store.query("SELECT kind, state, result_id FROM outbox")] == [("sr", "failed", None)]
    assert store.retry_outputs(["PACS@h:104"], "admin") == 1
    assert [tuple(r) for r in store.query("SELECT kind, state, sha256 FROM outbox")] == [("sr", "queued", "cd")]
    assert store.next_documents() is None
    store.close()


def test_a_version_8_audit_log_is_sealed_in_its_order_and_stays_append_only(tmp_path: Path) -> None:
    """Version 9 seals each audit row of before after the one before it (rows deleted before version 4's triggers
    leave gaps that are not breaks), keeps the triggers, and adds the table of failed logins."""
    from edge_app.store.chain import GENESIS, seal

    db = database_at(tmp_path / "edge-app.sqlite3", 8)
    rows = [(1, "t1", "boss", "login.success", "", "from 10.0.0.2"), (3, "t3", "dr", "study.view", "1.2", "")]
    db.executemany("INSERT INTO audit (id, at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()
    store = Store(tmp_path)
    assert store.pragma("user_version") == 16
    first = seal(GENESIS, rows[0])
    assert [e["hash"] for e in reversed(store.audit_trail())] == [first, seal(first, rows[1])]
    store.audit("dr", "report.export", "1.2")
    chain = store.audit_chain()
    assert chain.holds and chain.entries == 3 and chain.head == store.audit_trail()[0]["hash"]
    for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), store.transaction() as db:
            db.execute(statement)
    assert store.query("SELECT count(*) FROM login_failures")[0][0] == 0
    store.close()


def test_the_chain_names_the_first_row_that_does_not_follow() -> None:
    """An edit breaks the edited row; a deletion the row after the gap, with the last row that follows."""
    from edge_app.store.chain import GENESIS, seal, verify

    rows, head = [], GENESIS
    for n in range(1, 6):
        content = (n, f"t{n}", "a", "x", "", "")
        head = seal(head, content)
        rows.append((*content, head))
    assert verify(rows).holds and verify(rows).entries == 5 and verify(rows).head == head
    assert verify([]).head == GENESIS and verify([]).holds
    edited = [*rows[:2], (3, "t3", "b", "x", "", "", rows[2][-1]), *rows[3:]]
    broken = verify(edited)
    assert (broken.broken_at, broken.after, broken.missing, broken.entries) == (3, 2, False, 2)
    assert broken.head == rows[1][-1]
    gap = verify([*rows[:2], *rows[3:]])
    assert (gap.broken_at, gap.after, gap.missing) == (4, 2, True)
    assert verify(rows[1:]).broken_at == 2 and verify(rows[1:]).missing, "the first row deleted"
    assert seal(GENESIS, (1, "t", "a,b", "", "", "")) != seal(GENESIS, (1, "t", "a", "b", "", "")), "fields apart"


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    """A version-1 row the migration cannot read: the service refuses to start in plain words and the database
    is still version 1, untouched, for a person to look at."""
    from edge_app.errors import ConfigError

    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    db.executescript(_V1 + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO studies VALUES (1, 'abc', 't', 'api', '')")
    db.execute("INSERT INTO images VALUES (1, 1, 't', 'a.dcm', ?, 3, '{ damaged')", ("a" * 64,))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"cannot be used \(storage.data_dir\)"):
        Store(tmp_path)
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'series'").fetchone()[0] == 0
    db.close()


def test_a_damaged_database_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.audit("tester", "something")
    store.close()
    db = tmp_path / "edge-app.sqlite3"
    con = sqlite3.connect(db)
    root, page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'audit'").fetchone()[0], 4096
    assert con.execute("PRAGMA page_size").fetchone()[0] == page
    con.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page : (root - 1) * page + 8] = b"\xff" * 8  # the audit table's b-tree page header
    db.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"edge-app.sqlite3 is damaged \(.*malformed.*\): restore it from a backup"):
        Store(tmp_path)


def test_model_changes_and_site_thresholds_are_kept_in_order(tmp_path: Path) -> None:
    from edge_app.store.models import ModelHistory

    store = Store(tmp_path)
    try:
        history = ModelHistory(store)
        assert history.latest_change() == (0, 0) and history.activations() == []
        history.record("boss", "import", "a" * 64, tmp_path / "a", "cxr", "1.0")
        history.record("boss", "activate", "a" * 64, tmp_path / "a", "cxr", "1.0")
        history.record("boss", "activate", "b" * 64, tmp_path / "b", "cxr", "2.0")
        assert [c.version for c in history.activations()] == ["2.0", "1.0"], "newest first"
        assert history.set_thresholds("b" * 64, ["x", "y"], {"x": 0.5, "y": 1.0}, "boss") == 1
        assert history.set_thresholds("b" * 64, ["x", "y"], {"x": 0.25, "y": 0.0}, "boss") == 2
        assert history.thresholds("b" * 64).thresholds == {"x": 0.25, "y": 0.0}  # type: ignore[union-attr]
        assert history.thresholds("a" * 64) is None
        assert history.latest_change() == (3, 2)
        for bad in ({"x": 0.5}, {"x": 1.5, "y": 0.0}, {"x": -0.1, "y": 0.0}):
            with pytest.raises(UserError):
                history.set_thresholds("b" * 64, ["x", "y"], bad, "boss")
    finally:
        store.close()


def test_two_processes_opening_an_old_database_at_once_take_turns(tmp_path: Path) -> None:
    """The web service and the worker start together on a database of an earlier version: one migrates, the
    other waits and finds it done (the version is read inside the migration's transaction)."""
    import threading

    from edge_app.store.schema import _V1, VERSION

    for attempt in range(5):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        db = sqlite3.connect(folder / "edge-app.sqlite3")
        db.executescript(_V1 + "; PRAGMA user_version = 1;")
        db.close()
        errors: list[BaseException] = []

        def open_store(folder: Path = folder, errors: list[BaseException] = errors) -> None:
            try:
                Store(folder).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        store = Store(folder)
        assert store.pragma("user_version") == VERSION
        store.close()


def test_a_version_that_would_leave_a_row_pointing_at_nothing_is_refused_by_its_number(tmp_path: Path) -> None:
    """A version-13 database with a heatmap of a result that is not there: version 14 is refused, saying so, and
    the database stays at version 13."""
    db = database_at(tmp_path / "edge-app.sqlite3", 13)
    db.execute("INSERT INTO heatmaps VALUES (99, 0, 'x', 'y')")
    db.close()
    with pytest.raises(ConfigError, match=r": version 14 would leave 1 row\(s\) pointing at nothing$"):
        Store(tmp_path)
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 13
    db.close()


def test_a_database_of_a_newer_edge_app_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """An older edge-app installed over a newer one's data (a rollback of the kit) must not guess its schema."""
    from edge_app.store.schema import VERSION

    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    db.execute(f"PRAGMA user_version = {VERSION + 1}")
    db.close()
    with pytest.raises(
        ConfigError,
        match=rf"its schema is version {VERSION + 1}, written by a newer edge-app "
        rf"\(this one knows up to {VERSION}\): install that edge-app again, or restore a backup",
    ):
        Store(tmp_path)
    db = sqlite3.connect(tmp_path / "edge-app.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION + 1
    db.close()


def test_a_job_given_up_does_not_stop_the_next_being_claimed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = _add(store, b"first", _header(sop="1.1"))
    second = _add(store, b"second", _header(sop="1.2"))
    for _ in range(3):
        job = store.claim_job(lease_s=-1, max_attempts=3)
        assert job is not None and job.image_id == first.image_id
    # The first is given up; the same call goes on to the second.
    job = store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None and job.image_id == second.image_id and job.attempts == 1
    assert store.image_status(first.image_id)[0] == "failed"
    store.close()


def test_an_output_taken_by_a_sender_is_held_from_the_others(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    store.enqueue_outputs(added.image_id, [("pacs", "sr", "c" * 64)])
    (item,) = store.due_outputs(hold_s=60)
    assert (item.destination, item.kind) == ("pacs", "sr")
    assert store.due_outputs(hold_s=60) == [], "held for the sender that has it"
    store.output_done(item, "refused", retry_at=0.0)
    (again,) = store.due_outputs(hold_s=60)
    assert again.id == item.id and again.attempts == 1
    store.output_done(again, None, None)
    assert store.due_outputs(hold_s=60) == []
    assert [o.state for o in store.outputs(added.image_id)] == ["sent"]
    store.close()


def test_a_result_says_its_reason_only_when_it_has_one(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    ok = ModelResult("ok", MODEL, "b" * 64, findings=[FINDING])
    _diagnose_next(store, ok, ModelResult("rejected", MODEL, "c" * 64, reason="not a chest"))
    (image,) = store.get_study("1.2.3").images
    by_status = {r.status: r.json() for r in image.results}
    assert "reason" not in by_status["ok"] and by_status["rejected"]["reason"] == "not a chest"
    assert image.id == added.image_id
    store.close()


def test_a_result_is_traced_to_its_study(tmp_path: Path) -> None:
    """What the audit of a heatmap read by result id names as its subject."""
    store = Store(tmp_path)
    for n, header in enumerate((_header(), _header("4.5", "4.5.6", "4.5.6.7"))):
        _add(store, f"image {n}".encode(), header)
        _diagnose_next(store, ModelResult("ok", MODEL, "b" * 64), ModelResult("ok", MODEL, "c" * 64))
    assert [store.study_of_result(n) for n in (1, 2, 3, 4, 5)] == ["1.2.3", "1.2.3", "4.5", "4.5", None]
    store.close()


def test_results_are_found_by_any_id_sqlite_can_hold(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _add(store, b"image", _header())
    _diagnose_next(store, ModelResult("ok", MODEL, "b" * 64))
    (row,) = store.query("SELECT id FROM results")
    big = 2**63 - 1
    with store.transaction() as db:
        db.execute("UPDATE results SET id = ? WHERE id = ?", (big, row[0]))
    assert store.get_result(big).bundle_sha256 == "b" * 64
    for missing in (0, -1, 2**63, 10**30):
        with pytest.raises(NotFound):
            store.get_result(missing)
    store.close()


def test_orphans_are_removed_by_age_and_counted(tmp_path: Path) -> None:
    import os
    import time

    store = Store(tmp_path)
    kept = _add(store, b"image", _header())
    young = store.put_file(b"young orphan")
    old = store.put_file(b"old orphan")
    ahead = store.put_file(b"an orphan stamped by a clock ahead")
    hour_ago = time.time() - 3600
    os.utime(store.file_path(old), (hour_ago, hour_ago))
    later = time.time() + 30
    os.utime(store.file_path(ahead), (later, later))
    assert store.remove_orphans(min_age_s=600) == 1, "only the old one: the young may be about to get its row"
    assert not store.file_path(old).exists() and store.file_path(young).exists()
    assert store.remove_orphans() == 2, "at start, with no other writer: every orphan, whatever its time"
    assert not store.file_path(young).exists() and not store.file_path(ahead).exists()
    assert store.read_file(store.get_study("1.2.3").images[0].sha256) == b"image" and kept.image_id
    store.close()


@pytest.mark.parametrize(("timeout", "least", "most"), [(0.0, 0.0, 0.2), (0.05, 0.04, 0.2)])
def test_waiting_ends_when_its_time_is_up_not_later(tmp_path: Path, timeout: float, least: float, most: float) -> None:
    import time

    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    started = time.monotonic()
    assert store.wait_for(added.image_id, timeout=timeout) == ("queued", None)
    assert least <= time.monotonic() - started < most
    store.close()


def test_a_failed_transaction_leaves_nothing_and_the_store_usable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="halfway"), store.transaction() as db:
        db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES ('t', 'a', 'x', '', '')")
        raise RuntimeError("halfway")
    assert store.audit_trail() == []
    store.audit("a", "y")
    assert [e["action"] for e in store.audit_trail()] == ["y"]
    store.close()


def test_stored_file_names_are_exactly_sha256_digests(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_file(b"x")
    assert store.file_path(digest).is_file()
    for bad in (digest + "0", digest[:-1], digest.upper(), "../" + digest[3:], ""):
        with pytest.raises(NotFound):
            store.file_path(bad)
    store.close()


def test_the_worklist_lists_fifty_studies_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(51):
        _add(store, f"image {i}".encode(), _header(study=f"1.2.{i}", series=f"1.2.{i}.1", sop=f"1.2.{i}.1.1"))
    assert len(store.list_studies()) == 50 and len(store.list_studies(limit=51)) == 51
    store.close()


def test_records_handed_out_are_frozen(tmp_path: Path) -> None:
    import dataclasses

    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    result = ModelResult("ok", MODEL, "b" * 64)
    job = store.claim_job(lease_s=60, max_attempts=3)
    store.enqueue_outputs(added.image_id, [("pacs", "sr", "c" * 64)])
    (item,) = store.due_outputs(hold_s=60)
    records = (
        (added, "status"),
        (result, "status"),
        (job, "attempts"),
        (item, "attempts"),
        (Outcome("done"), "status"),
    )
    for record, field in records:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, "done")
    store.close()


def test_an_image_that_cannot_be_recorded_leaves_no_half_study(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(TypeError):
        _add(store, b"image", _header(), extra={"not json": object()})  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.get_study("1.2.3")  # the study row went with the rest
    added = _add(store, b"image", _header())
    assert store.get_study("1.2.3").images[0].id == added.image_id
    store.close()


def test_a_lease_holds_for_its_time_then_lapses(tmp_path: Path) -> None:
    import time

    store = Store(tmp_path)
    _add(store, b"image", _header())
    job = store.claim_job(lease_s=0.5, max_attempts=3)
    assert job is not None and job.filename == "a.dcm" and job.sha256 == hashlib.sha256(b"image").hexdigest()
    assert store.claim_job(lease_s=0.5, max_attempts=3) is None, "held by its worker for 0.5 s"
    time.sleep(0.6)
    again = store.claim_job(lease_s=0.5, max_attempts=3)
    assert again is not None and again.id == job.id and again.attempts == 2
    store.close()


def test_a_duplicate_answers_with_the_original_study(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = _add(store, b"image", _header(study="9.8.7"))
    again = _add(store, b"image", _header(study="9.8.7"))
    assert again.duplicate and (again.image_id, again.study_uid, again.status) == (first.image_id, "9.8.7", "queued")
    store.close()


def test_the_audit_trail_shows_a_hundred_entries_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(101):
        store.audit("a", f"act{i}")
    trail = store.audit_trail()
    assert len(trail) == 100 and trail[0]["action"] == "act100", "newest first"
    assert len(store.audit_trail(limit=101)) == 101
    store.close()


def test_the_file_store_layout_is_fixed(tmp_path: Path) -> None:
    """files/<first two hex digits>/<sha256>: a data directory of an earlier version must still be read, and two
    files under one prefix share its folder."""
    store = Store(tmp_path)
    by_prefix: dict[str, bytes] = {}
    n = 0
    while True:  # two contents whose digests share their first two hex digits
        data = f"content {n}".encode()
        prefix = hashlib.sha256(data).hexdigest()[:2]
        if prefix in by_prefix:
            break
        by_prefix[prefix] = data
        n += 1
    for content in (by_prefix[prefix], data):
        digest = store.put_file(content)
        assert store.file_path(digest) == tmp_path / "files" / digest[:2] / digest
        assert store.read_file(digest) == content
    store.close()


def test_purging_a_file_already_gone_is_no_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    _diagnose_next(store, ModelResult("ok", MODEL, "b" * 64))
    store.file_path(hashlib.sha256(b"image").hexdigest()).unlink()  # removed by hand, or by a crash halfway
    assert store.purge_images("9999-01-01T00:00:00+00:00") == 1
    assert store.get_study("1.2.3").images[0].id == added.image_id
    store.close()


def test_a_result_from_another_process_is_seen_within_a_poll_without_burning_the_cpu(tmp_path: Path) -> None:
    import threading
    import time

    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    other = Store(tmp_path)  # the worker in its own process: it notifies no one in this one
    job = other.claim_job(lease_s=60, max_attempts=3)
    assert job is not None
    done_at: list[float] = []

    def finish() -> None:
        time.sleep(0.3)
        other.finish_job(job, Outcome("done", results=[ModelResult("ok", MODEL, "b" * 64)]))
        done_at.append(time.monotonic())

    threading.Thread(target=finish).start()
    cpu = time.process_time()
    assert store.wait_for(added.image_id, timeout=5)[0] == "done"
    seen = time.monotonic()
    assert seen - done_at[0] < 0.35, "polled every 0.25 s"
    assert time.process_time() - cpu < 0.25, "waiting, not spinning"
    store.close()
    other.close()


def test_jobs_and_images_are_numbered_apart(tmp_path: Path) -> None:
    """A refused arrival has an image but no job: from then on a job's id is not its image's."""
    store = Store(tmp_path)
    _add(store, b"%PDF", generated_header(), reason="not an image")
    added = _add(store, b"image", _header())
    job = store.claim_job(lease_s=60, max_attempts=3)
    assert job is not None and job.image_id == added.image_id and job.id != job.image_id
    store.finish_job(job, Outcome("done", results=[ModelResult("ok", MODEL, "b" * 64)]))
    assert store.claim_job(lease_s=0, max_attempts=3) is None, "the job claimed is the job finished"
    assert store.image_status(added.image_id)[0] == "done"
    store.close()


def test_a_refused_arrival_sent_again_answers_with_its_reason(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = _add(store, b"%PDF", generated_header(), reason="not a DICOM (Part 10), PNG or JPEG file")
    header = ImageHeader("unknown", first.study_uid, "1.9", first.sop_instance_uid)
    again = _add(store, b"%PDF", header, reason="not a DICOM (Part 10), PNG or JPEG file")
    assert again.duplicate and (again.status, again.reason) == ("rejected", "not a DICOM (Part 10), PNG or JPEG file")
    store.close()


def test_an_output_held_by_a_sender_that_died_is_due_again_after_the_hold(tmp_path: Path) -> None:
    import time

    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    store.enqueue_outputs(added.image_id, [("pacs", "sr", "c" * 64)])
    assert store.due_outputs(hold_s=0.3)
    assert not store.due_outputs(hold_s=0.3), "held for 0.3 s"
    time.sleep(0.4)
    assert store.due_outputs(hold_s=0.3), "its sender never answered: another takes it"
    store.close()


def test_studies_are_read_with_one_query_per_level(tmp_path: Path) -> None:
    """The self-refreshing worklist reads 100 studies: as many queries for 30 studies of two images as for one."""
    store = Store(tmp_path)

    def queries(limit: int) -> int:
        seen: list[str] = []
        store._db.set_trace_callback(seen.append)
        try:
            studies = store.list_studies(limit)
        finally:
            store._db.set_trace_callback(None)
        assert len(studies) == min(limit, 30) and all(len(s.images) == 2 for s in studies)
        return len(seen)

    for n in range(30):
        for k in range(2):
            _add(store, f"image {n} {k}".encode(), _header(study=f"1.{n}", series=f"1.{n}.1", sop=f"1.{n}.1.{k}"))
    assert queries(1) == queries(30) <= 6
    store.close()


def test_each_destination_takes_its_own_due_items_and_a_batch_of_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    store.enqueue_outputs(added.image_id, [("a", "sr", "1" * 64), ("b", "sr", "2" * 64), ("a", "sc", "3" * 64)])
    assert [i.kind for i in store.due_outputs(60, "a", limit=5)] == ["sr", "sc"]
    (b,) = store.due_outputs(60, "b", limit=5)
    assert b.destination == "b" and store.due_outputs(60, limit=5) == []
    store.output_done(b, "refused", retry_at=time.time() + 3600)
    assert store.release_outputs() == 3, "at start: held or waiting, all due at once"
    assert len(store.due_outputs(60, limit=5)) == 3
    store.close()


def test_items_given_up_are_in_the_backlog_until_queued_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    before = time.time()
    store.enqueue_outputs(added.image_id, [("a", "sr", "1" * 64), ("a", "sc", "2" * 64), ("gone", "sr", "3" * 64)])
    assert store.give_up_outputs(["a"], "no longer a configured destination") == 1
    first, second = store.due_outputs(60, "a", limit=2)
    store.output_done(first, "connection refused", None)
    store.output_done(second, "not answered", time.time() + 60)
    a, gone = store.backlog()
    assert (a.destination, a.waiting, a.failed, a.last_error) == ("a", 1, 1, "not answered")
    assert before <= a.oldest_at <= time.time()
    assert (gone.waiting, gone.failed, gone.last_error) == (0, 1, "no longer a configured destination")
    assert store.retry_outputs(["a"], "tester") == 1, "only the configured destinations"
    assert store.retry_outputs(["a"], "tester", "other") == 0
    assert store.backlog()[0].failed == 0 and store.due_outputs(60, "a")[0].attempts == 0
    assert store.audit_trail(1)[0]["action"] == "outbox.retry"
    store.close()


def test_a_version_9_outbox_item_keeps_when_it_was_queued(tmp_path: Path) -> None:
    db = database_at(tmp_path / "edge-app.sqlite3", 9)
    db.execute("INSERT INTO studies (uid, created_at, source) VALUES ('1.2', 't', 'test')")
    db.execute("INSERT INTO images (study_id, created_at, filename, sha256, size) VALUES (1, 't', 'a', 'ab', 1)")
    db.execute(
        "INSERT INTO outbox (image_id, destination, kind, sha256, state, updated_at) "
        "VALUES (1, 'a', 'sr', 'cd', 'queued', '2026-01-02T03:04:05.500+00:00')"
    )
    db.close()
    store = Store(tmp_path)
    assert store.backlog()[0].oldest_at == pytest.approx(1767323045.5, abs=1e-3)
    store.close()


def _clinic_day(store: Store) -> dict[str, str]:
    """A day's studies: 220 in all, the oldest (Nakato Amina) positive and never reviewed, one refused, the newest
    queued, one positive reviewed; the rest negative CRs and PNGs. Returns {name: study UID}."""
    from edge_app.store.reviews import Reviews

    negative = Finding("x", 0.2, 0.5).as_dict()
    uids: dict[str, str] = {}
    for n in range(220):
        name = {0: "NAKATO AMINA", 1: "OUMA REVIEWED", 2: "REFUSED ONE", 219: "QUEUED ONE"}.get(n, f"PATIENT {n}")
        header = ImageHeader(
            "dicom" if n % 2 else "png",
            f"2.{n}",
            f"2.{n}.1",
            f"2.{n}.1.1",
            modality="CR" if n % 2 else "",
            patient_id=f"P{n:04d}",
            patient_name=name,
            accession_number=f"ACC-{n:05d}",
        )
        added = _add(store, f"study {n}".encode(), header, **({"reason": "not an image"} if n == 2 else {}))
        uids[name] = added.study_uid
        if n not in (2, 219):
            finding = FINDING if n in (0, 1) else negative
            _diagnose_next(
                store, ModelResult("ok", MODEL, "b" * 64, findings=[finding], triage=0.25 if n in (0, 1) else 0)
            )
    (result,) = store.get_study(uids["OUMA REVIEWED"]).images[0].results
    Reviews(store).add(result.id, "dr-ade", {"x": "agree"})
    return uids


def test_any_study_of_a_busy_day_is_found_counted_and_paged_by_sql(tmp_path: Path) -> None:
    """Search (name, patient ID, accession), filters and pages are the store's: the oldest unreviewed positive
    study of 220 is found by each, counted, and comes first in triage order, last in time order."""
    from edge_app.store.rows import StudyQuery

    store = Store(tmp_path)
    uids = _clinic_day(store)
    oldest = uids["NAKATO AMINA"]

    def find(**kw: object) -> tuple[list[str], int]:
        page = store.find_studies(StudyQuery(**kw))  # type: ignore[arg-type]
        return [s.uid for s in page.studies], page.total

    for text in ("nakato", "amina NAKATO", "P0000", "acc-00000"):
        assert find(text=text) == ([oldest], 1), text
    assert find(text="50%")[1] == 0 and find(text="_")[1] == 0, "LIKE's wildcards are searched as themselves"
    assert find(positive=True, unreviewed=True) == ([oldest], 1)
    assert find(positive=True)[1] == 2 and find(unreviewed=True)[1] == 219
    assert find(state="refused") == ([uids["REFUSED ONE"]], 1) and find(state="queued") == ([uids["QUEUED ONE"]], 1)
    asked = "".join(["que", "ued"])  # a form's value is a string of its own, never the literal: compared by value
    assert find(state=asked) == ([uids["QUEUED ONE"]], 1)
    assert find(modality="cr")[1] == 110 and find(modality="PNG")[1] == 110
    assert store.modalities() == ["CR", "PNG"], "the worklist filter's choices"
    assert find(order="triage", limit=1) == ([oldest], 220), "the unreviewed positive first, though the oldest"
    page, total = find(order="newest", offset=200, limit=20)
    assert total == 220 and page[-1] == oldest and len(page) == 20, "the last page holds the oldest"
    assert find(order="oldest", limit=1)[0] == [oldest]
    assert find(positive=True, results=False)[1] == 220, "no AI filter for who may not see results"
    assert find(order="triage", results=False, limit=1)[0] != [oldest], "nor the triage order"
    created = store.get_study(oldest).created_at
    assert oldest in find(received_from=created, limit=300)[0]
    assert oldest not in find(received_to=created, limit=300)[0]
    newest = store.find_studies(StudyQuery()).newest
    _add(store, b"later", ImageHeader("png", "3.1", "3.1.1", "3.1.1.1", patient_name="LATE"))
    assert store.count_studies(StudyQuery(newer_than=newest)) == 1
    assert store.count_studies(StudyQuery(newer_than=newest, state="refused")) == 0
    store.close()


def test_a_page_of_studies_takes_as_many_statements_whatever_the_filters_and_page(tmp_path: Path) -> None:
    """Filtering, counting and paging are SQL's: a page of 20 of 220 studies, searched or not, costs the same
    number of statements as a page of 1."""
    from edge_app.store.rows import StudyQuery

    store = Store(tmp_path)
    _clinic_day(store)

    def statements(q: StudyQuery) -> int:
        seen: list[str] = []
        store._db.set_trace_callback(seen.append)
        try:
            store.find_studies(q)
        finally:
            store._db.set_trace_callback(None)
        return len(seen)

    counts = {
        statements(StudyQuery(limit=1)),
        statements(StudyQuery(limit=20, offset=40)),
        statements(StudyQuery(text="patient 1", positive=True, unreviewed=True, modality="CR", limit=200)),
    }
    assert len(counts) == 1 and counts.pop() <= 7
    store.close()


def test_documents_not_made_keep_their_image_from_retention_and_fail_again_without_duplicates(tmp_path: Path) -> None:
    """An image whose documents are due, or were not made and are kept to be sent again, keeps its file through
    retention (they are made from it); a destination sent again whose documents fail again has one failed item per
    destination, not one more for the destination not sent again."""
    store = Store(tmp_path)
    added = _add(store, b"image", _header())
    _diagnose_next(store, ModelResult("ok", MODEL, "b" * 64, findings=[FINDING]))
    (result_id,) = [r[0] for r in store.query("SELECT id FROM results")]
    image_file = store.file_path(hashlib.sha256(b"image").hexdigest())
    later = "9999-01-01T00:00:00+00:00"
    assert store.documents_due(added.image_id, [result_id]) == 1
    assert store.purge_images(later) == 0 and image_file.exists(), "due: its documents are made from it"
    due = store.next_documents()
    assert due is not None
    store.documents_failed(due, ["PACS", "MOD"], "documents not made: ValueError, see the log")
    assert store.purge_images(later) == 0 and image_file.exists(), "not made: sent again, they are made from it"
    pacs = "".join(["PA", "CS"])  # the destination as a request names it: a string of its own, compared by value
    assert store.retry_outputs(["PACS", "MOD"], "admin", pacs) == 1
    due = store.next_documents()
    assert due is not None
    store.documents_failed(due, ["PACS", "MOD"], "documents not made: ValueError, see the log")
    assert sorted((o.destination, o.kind, o.state) for o in store.outputs(added.image_id)) == [
        ("MOD", "documents", "failed"),
        ("PACS", "documents", "failed"),
    ]
    assert store.retry_outputs(["PACS", "MOD"], "admin") == 2
    due = store.next_documents()
    assert due is not None
    store.documents_made(due, [("PACS", "sr", store.put_file(b"sr"))])
    assert store.purge_images(later) == 1 and not image_file.exists(), "made: the image goes by retention's rule"
    store.close()
