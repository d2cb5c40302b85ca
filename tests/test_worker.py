"""The worker with a real store and real bundles: what an image's status becomes with one model, several, or one
that fails; the outbox's sender woken only when there is something to send; a store that fails does not end it."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from edge_app.config import EMBEDDED_BUNDLE, OutputSettings, Settings, WorkerSettings
from edge_app.imaging.header import read_header
from edge_app.inference.registry import Registry
from edge_app.inference.worker import Worker
from edge_app.ops.backup import backup
from edge_app.outputs.outbox import Outbox
from edge_app.store import Job, Store
from support.dicom import dicom_file

pytestmark = pytest.mark.unit


def _registry(tmp_path: Path, *bundles: Path) -> Registry:
    settings = Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1, "bundle": str(bundles[0]), "extra_bundles": [str(b) for b in bundles[1:]]},
        }
    )
    return Registry.from_settings(settings)


def _queue(store: Store, name: str) -> int:
    path = dicom_file(name)
    with path.open("rb") as fh:
        digest, size = store.put_stream(fh)
    return store.add_image(digest, size, name, "test", read_header(store.file_path(digest), name)).image_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_no_job_no_work(tmp_path: Path, store: Store) -> None:
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        assert Worker(store, registry).run_once() is False
    finally:
        registry.close()


def test_a_window_s_leases_are_renewed_once_half_their_time_has_passed(tmp_path: Path, store: Store) -> None:
    """By the lease's age on the worker's clock, whatever the clock reads: here a machine 10 s after boot, a lease
    of 60 s renewed at 40 s (30 s old), not at 39 s."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        _queue(store, "RG1_UNCR.dcm")
        job = store.claim_job(lease_s=60, max_attempts=5)
        assert job is not None
        now = [10.0]
        worker = Worker(store, registry, WorkerSettings(lease_s=60), clock=lambda: now[0])

        def lease_until() -> float:
            return float(store.query("SELECT lease_until FROM jobs")[0][0])

        worker._renew([])  # a window's first look, nothing held yet: its leases taken now
        taken = lease_until()
        now[0] = 39.0
        worker._renew([job])
        assert lease_until() == taken, "29 s old: not yet"
        now[0] = 40.0
        time.sleep(0.01)
        worker._renew([job])
        assert lease_until() > taken, "30 s old: renewed"
    finally:
        registry.close()


def test_one_model_that_fails_fails_the_image_with_its_reason(
    tmp_path: Path, store: Store, broken_bundle: Path
) -> None:
    registry = _registry(tmp_path, broken_bundle)
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        assert Worker(store, registry).run_once() is True
        status, reason = store.image_status(image_id)
        assert status == "failed" and reason is not None and reason.startswith("internal error: InferenceError")
    finally:
        registry.close()


def test_an_image_is_done_when_any_model_that_reads_it_succeeded(
    tmp_path: Path, store: Store, broken_bundle: Path
) -> None:
    """The failing model first, the working one second: the image is done, with no reason, and both results."""
    registry = _registry(tmp_path, broken_bundle, EMBEDDED_BUNDLE)
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        Worker(store, registry).run_once()
        assert store.image_status(image_id) == ("done", None)
        (image,) = store.get_study(read_header(dicom_file("RG1_UNCR.dcm"), "x").study_uid).images
        assert [r.status for r in image.results] == ["failed", "ok"]
        assert image.metadata["rows"] == 1955, "what decoding learnt is kept"
    finally:
        registry.close()


def test_no_model_says_what_the_image_is(tmp_path: Path, store: Store) -> None:
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        image_id = _queue(store, "US1_UNCR.dcm")
        Worker(store, registry).run_once()
        status, reason = store.image_status(image_id)
        assert status == "no_model"
        assert reason == "no model on this appliance reads modality US (models: cxr-reference 1.1.1 for CR, DX)"
    finally:
        registry.close()


def test_the_sender_is_woken_only_when_something_was_queued(tmp_path: Path, store: Store) -> None:
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    woken: list[bool] = []
    outputs = OutputSettings.model_validate({"destinations": [{"ae_title": "PACS", "host": "127.0.0.1"}]})
    outbox = Outbox(store, outputs, lambda: woken.append(True))
    worker = Worker(store, registry, on_recorded=outbox.queue)
    try:
        _queue(store, "US1_UNCR.dcm")  # no model: nothing to send
        worker.run_once()
        assert outbox.run_once() is None and woken == []
        _queue(store, "RG1_UNCR.dcm")
        worker.run_once()
        assert outbox.run_once() == 2 and woken == [True], "its SR and its heatmap's capture"
    finally:
        outbox.stop()
        registry.close()


def test_documents_noted_due_are_made_after_a_restart(tmp_path: Path, store: Store) -> None:
    """The worker notes a diagnosis's documents as due in the store; an outbox started later (the service
    restarted before it made them) makes them, from the stored image, once."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    outputs = OutputSettings.model_validate({"destinations": [{"ae_title": "PACS", "host": "127.0.0.1"}]})
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        Worker(store, registry, on_recorded=Outbox(store, outputs).queue).run_once()
        assert store.query("SELECT count(*) FROM outbox")[0][0] == 0
        later = Outbox(store, outputs)
        try:
            assert later.run_once() == 2 and later.run_once() is None
        finally:
            later.stop()
        kinds = store.query("SELECT kind, image_id FROM outbox ORDER BY kind")
        assert [tuple(k) for k in kinds] == [("sc", image_id), ("sr", image_id)]
        sr = pydicom.dcmread(store.file_path(store.query("SELECT sha256 FROM outbox WHERE kind = 'sr'")[0][0]))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.PatientID == "9RG1"
    finally:
        registry.close()


def test_a_started_outbox_has_its_documents_process_before_any_image(store: Store) -> None:
    """Started, the outbox starts its documents process at once (warmed up with documents of its own, which go
    nowhere): with nothing due, the process is there and nothing is stored or queued; stopped, it is gone."""
    outputs = OutputSettings.model_validate({"destinations": [{"ae_title": "PACS", "host": "127.0.0.1"}]})
    before = set(multiprocessing.active_children())
    outbox = Outbox(store, outputs)
    outbox.start()
    try:
        deadline = time.monotonic() + 30
        while not set(multiprocessing.active_children()) - before:
            assert time.monotonic() < deadline, "no documents process"
            time.sleep(0.05)
        time.sleep(1.0)
        assert store.query("SELECT count(*) FROM outbox")[0][0] == 0
        assert not [f for f in store.files_dir.rglob("*") if f.is_file()]
    finally:
        outbox.stop()
    assert set(multiprocessing.active_children()) <= before


def test_documents_that_cannot_be_made_are_kept_as_failed_and_made_again_when_sent_again(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A heatmap file gone before its capture is made: logged once, the diagnosis stands, and it is kept, after a
    restart too, as failed for each destination in its own words; once the file is back, sending one destination's
    again makes the documents again, queued for every destination (the other's failed item gone: not made twice)."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    destinations = [{"ae_title": "PACS", "host": "127.0.0.1"}, {"ae_title": "MODALITY", "host": "127.0.0.1"}]
    outputs = OutputSettings.model_validate({"destinations": destinations})
    pacs, modality = (str(d) for d in outputs.destinations)
    outboxes = [Outbox(store, outputs)]
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        Worker(store, registry, on_recorded=outboxes[0].queue).run_once()
        heatmaps = [store.read_file(sha) for (sha,) in store.query("SELECT sha256 FROM heatmaps")]
        for (sha,) in store.query("SELECT sha256 FROM heatmaps"):
            store.file_path(sha).unlink()
        assert outboxes[0].run_once() == 0 and outboxes[0].run_once() is None
        assert caplog.text.count(f"the documents of image {image_id} could not be made") == 1
        assert store.image_status(image_id)[0] == "done"
        store.close()
        store = Store(tmp_path / "store")  # a restart
        outboxes.append(Outbox(store, outputs))
        reason = "documents not made: a stored file they need is gone, see the log"
        assert [(b.destination, b.waiting, b.failed, b.last_error) for b in store.backlog()] == [
            (modality, 0, 1, reason),
            (pacs, 0, 1, reason),
        ]
        assert [(o.destination, o.kind, o.state) for o in store.outputs(image_id)] == [
            (pacs, "documents", "failed"),
            (modality, "documents", "failed"),
        ]
        assert outboxes[1].run_once() is None, "not made again unless sent again"
        for data in heatmaps:
            store.put_file(data)
        backup(Settings.model_validate({"storage": {"data_dir": str(tmp_path / "store")}}), tmp_path)  # no file named
        assert store.retry_outputs([pacs, modality], "admin", pacs) == 1
        assert outboxes[1].run_once() == 4 and outboxes[1].run_once() is None
        assert [(b.destination, b.waiting, b.failed) for b in store.backlog()] == [(modality, 2, 0), (pacs, 2, 0)]
        assert sorted(o.kind for o in store.outputs(image_id)) == ["sc", "sc", "sr", "sr"]
    finally:
        for outbox in outboxes:
            outbox.stop()
        registry.close()


def test_the_outbox_queues_from_what_was_recorded_and_cannot_undo_it(tmp_path: Path, store: Store) -> None:
    """The worker records the diagnosis first, then hands the recorded results' ids on: a failure there (an SR
    that cannot be made) is logged and the image stays diagnosed."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    handed: list[tuple[int, list[int]]] = []

    def fails(job: Job, ids: list[int]) -> None:
        handed.append((job.image_id, ids))
        raise RuntimeError("cannot make the SR")

    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        assert Worker(store, registry, on_recorded=fails).run_once()
        assert store.image_status(image_id)[0] == "done"
        ((handed_image, ids),) = handed
        assert handed_image == image_id and [store.get_result(i).status for i in ids] == ["ok"]
    finally:
        registry.close()


def test_a_failing_store_does_not_end_the_worker(tmp_path: Path, store: Store) -> None:
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    worker = Worker(store, registry, WorkerSettings(idle_s=0.2))
    worker.start()
    try:
        store.close()  # every claim now raises
        before = _cpu_seconds_of_thread("edge-worker")
        time.sleep(1.0)
        assert worker.progressing(10.0), "still looping, waiting for the store to come back"
        assert _cpu_seconds_of_thread("edge-worker") - before < 0.2, "waiting between tries, not spinning"
    finally:
        worker.stop()
        registry.close()


def _cpu_seconds_of_thread(name: str) -> float:
    import os

    (thread,) = [t for t in threading.enumerate() if t.name == name]
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_worker_sleeps(tmp_path: Path, store: Store) -> None:
    """Idle CPU near zero: with nothing queued the worker's thread waits, it does not spin."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    worker = Worker(store, registry, WorkerSettings(idle_s=0.2))
    worker.start()
    try:
        before = _cpu_seconds_of_thread("edge-worker")
        time.sleep(1.0)
        assert _cpu_seconds_of_thread("edge-worker") - before < 0.1
    finally:
        worker.stop()
        registry.close()


def test_a_worker_on_one_job_too_long_is_not_progressing(make_settings: Callable[..., Settings]) -> None:
    """What the watchdog asks: idle is fine, a job past the limit is stuck (a 0.5 s JPEG 2000 decode against a
    0.1 s limit), and a stopped worker is not progressing."""
    from edge_app.service import Service
    from support.dicom import dicom_file

    with Service(make_settings()) as service:
        assert service.worker.progressing(0.1), "waiting for work is not being stuck"
        seen = set()
        submitted = time.monotonic()
        with dicom_file("RG1_J2KR.dcm").open("rb") as fh:
            added = service.ingest.submit(fh, "slow.dcm", "test")
        assert added is not None
        generous = set()
        first_stuck = None
        while service.store.image_status(added.image_id)[0] == "queued":
            progressing = service.worker.progressing(0.1)
            seen.add(progressing)
            if not progressing and first_stuck is None:
                first_stuck = time.monotonic()
            generous.add(service.worker.progressing(60.0))
            time.sleep(0.01)
        assert False in seen and service.worker.progressing(0.1)
        assert first_stuck is not None and first_stuck - submitted >= 0.1, "stuck only once 0.1 s on the job"
        assert generous == {True}, "half a second on a job is no hang against a minute's limit"
    assert not service.worker.progressing(0.1)


def test_a_job_begun_soon_after_boot_is_stuck_by_its_own_duration(make_settings: Callable[..., Settings]) -> None:
    """The appliance starts at boot and clears its queue: a job claimed 100 s after boot is stuck 60 s later
    against a 60 s limit, however small the clock was when it began (the clock faked, the job real)."""
    from edge_app.service import Service
    from support.dicom import dicom_file

    now = [100.0]
    with Service(make_settings()) as service:
        assert service.worker is not None
        service.worker.clock = lambda: now[0]
        with dicom_file("RG1_J2KR.dcm").open("rb") as fh:
            assert service.ingest.submit(fh, "slow.dcm", "test") is not None
        deadline = time.monotonic() + 30
        while service.worker.progressing(0.0) and time.monotonic() < deadline:  # busy: stuck against no limit
            time.sleep(0.001)
        now[0] = 130.0
        thirty_seconds_in = service.worker.progressing(60.0)
        now[0] = 250.0
        late = service.worker.progressing(60.0)
        assert not service.worker.progressing(0.0), "the job (a 0.5 s decode) was still running throughout"
        assert thirty_seconds_in and not late


def test_an_image_a_model_refuses_is_rejected_with_the_reason(tmp_path: Path, store: Store) -> None:
    """A header that reads at the door (its Rows element is not parsed there) and fails at decoding."""
    from hostile import unknown_vr

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        digest, size = store.put_stream(io.BytesIO(unknown_vr()))
        header = read_header(store.file_path(digest), "vr.dcm")
        image_id = store.add_image(digest, size, "vr.dcm", "test", header).image_id
        Worker(store, registry).run_once()
        status, reason = store.image_status(image_id)
        assert status == "rejected" and reason is not None and reason.startswith("damaged DICOM header")
    finally:
        registry.close()


def test_a_diagnosed_image_gets_its_view_for_the_tablet(tmp_path: Path, store: Store) -> None:
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        assert Worker(store, registry).run_once()
        (row,) = store.query("SELECT view_sha256 FROM images WHERE id = ?", (image_id,))
        view = store.read_file(row[0])
        assert view[:3] == b"\xff\xd8\xff", "a JPEG"
        from PIL import Image

        assert max(Image.open(io.BytesIO(view)).size) == 1024, "the 1955x1841 image, shrunk for the tablet"
    finally:
        registry.close()


def test_an_image_no_model_reads_gets_its_view_in_the_decoder_process(tmp_path: Path, store: Store) -> None:
    """An ultrasound (no model reads it) is decoded for the tablet alone, in the registry's decoder process; an
    image that does not decode gets none, and its refusal stands."""
    from hostile import unknown_vr

    from edge_app.config import ImagingSettings
    from edge_app.inference.views import Views

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        us = _queue(store, "US1_UNCR.dcm")
        digest, size = store.put_stream(io.BytesIO(unknown_vr()))
        bad = store.add_image(digest, size, "vr.dcm", "test", read_header(store.file_path(digest), "vr.dcm")).image_id
        worker = Worker(store, registry, views=Views(store, ImagingSettings(), registry.decoder))
        assert worker.run_once() and not worker.run_once(), "both in one burst"
        views = dict(store.query("SELECT id, view_sha256 FROM images"))
        from PIL import Image

        shown = Image.open(io.BytesIO(store.read_file(views[us])))
        assert store.image_status(us)[0] == "no_model" and (shown.size, shown.mode) == ((640, 480), "RGB")
        assert views[bad] is None and store.image_status(bad)[0] == "rejected"
    finally:
        registry.close()


def test_a_view_made_while_waiting_is_kept_when_no_model_makes_one(tmp_path: Path, store: Store) -> None:
    """The front made the view of a waiting image (the worker was down); the worker's outcome without a view
    keeps it."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        image_id = _queue(store, "US1_UNCR.dcm")
        store.set_view(image_id, b"\xff\xd8\xff made by the front")
        assert Worker(store, registry).run_once()
        assert store.image_view(image_id) == b"\xff\xd8\xff made by the front"
    finally:
        registry.close()


def test_a_view_refused_is_said_again_without_decoding_the_image_again(tmp_path: Path, store: Store) -> None:
    """An image whose view does not decode (kept apart before any model read it, its study page opened again and
    again): refused once in the decoder process, then said again from memory, not decoded at each opening."""
    from hostile import unknown_vr

    from edge_app.config import ImagingSettings
    from edge_app.errors import ImageRejected
    from edge_app.inference.views import Views

    views = Views(store, ImagingSettings())
    try:
        digest, size = store.put_stream(io.BytesIO(unknown_vr()))
        store.add_image(digest, size, "vr.dcm", "test", read_header(store.file_path(digest), "vr.dcm"))
        (image,) = store.get_study(store.query("SELECT uid FROM studies")[0][0]).images
        with pytest.raises(ImageRejected) as first:
            views.make(image)
        store.file_path(digest).unlink()  # decoding it again would say something else
        with pytest.raises(ImageRejected) as again:
            views.make(image)
        assert again.value is first.value and store.image_view(image.id) is None
    finally:
        views.close()


def test_a_row_that_names_no_stored_file_fails_its_image_and_the_worker_goes_on(tmp_path: Path, store: Store) -> None:
    """A damaged database (a row whose file hash is not one): an internal error fails that image with the reason;
    the next image is diagnosed."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        broken = _queue(store, "RG1_UNCR.dcm")
        with store.transaction() as db:
            db.execute("UPDATE images SET sha256 = 'not-a-hash' WHERE id = ?", (broken,))
        good = _queue(store, "RG1_UNCI.dcm")
        worker = Worker(store, registry)
        assert worker.run_once() and not worker.run_once(), "both in one burst"
        status, reason = store.image_status(broken)
        assert status == "failed" and reason == "internal error: NotFound: no stored file 'not-a-hash'"
        assert store.image_status(good)[0] == "done"
    finally:
        registry.close()


def test_between_jobs_waits_for_the_image_at_hand(tmp_path: Path, store: Store) -> None:
    """What putting a model in service relies on: inside `between_jobs`, no job is half done."""

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        image_id = _queue(store, "RG1_J2KR.dcm")  # about half a second to decode
        worker = Worker(store, registry)
        running = threading.Thread(target=worker.run_once)
        running.start()
        while store.query("SELECT state FROM jobs WHERE image_id = ?", (image_id,))[0][0] != "running":
            time.sleep(0.005)
        with worker.between_jobs():
            assert store.image_status(image_id)[0] == "done", "the job at hand finished first"
        running.join()
    finally:
        registry.close()


def _slow_image_in_hand(
    store: Store, registry: Registry
) -> tuple[int, Worker, threading.Thread, list[bool | BaseException]]:
    """A slow image (seconds of JPEG 2000 decoded whole) queued, and a worker's pass in a thread of its own that
    has begun it: the image, the worker, its thread, and what the pass returned or raised once it ends."""
    from support.dicom import noisy_j2k

    digest, size = store.put_stream(io.BytesIO(noisy_j2k(2000, whole=True)))
    slow = store.add_image(digest, size, "slow.dcm", "test", read_header(store.file_path(digest), "x")).image_id
    worker = Worker(store, registry)
    ended: list[bool | BaseException] = []

    def run() -> None:
        try:
            ended.append(worker.run_once())
        except BaseException as exc:  # the test reads it
            ended.append(exc)

    running = threading.Thread(target=run)
    running.start()
    while store.query("SELECT state FROM jobs WHERE image_id = ?", (slow,))[0][0] != "running":
        time.sleep(0.005)
    return slow, worker, running, ended


def test_a_model_change_waiting_keeps_the_worker_from_beginning_more(tmp_path: Path, store: Store) -> None:
    """A model change waits (`between_jobs`) while an image is decoded: an image queued meanwhile is not begun
    with the model about to leave; the change is made between the two, and the next pass reads it."""
    from support.dicom import dicom_bytes

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        slow, worker, running, _ = _slow_image_in_hand(store, registry)
        seen: list[tuple[str, str]] = []

        def change() -> None:
            with worker.between_jobs():
                seen.append((store.image_status(slow)[0], store.image_status(later)[0]))

        changing = threading.Thread(target=change)
        changing.start()
        time.sleep(0.3)  # the change now waits for the image at hand
        ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()  # slow's is its
        digest, size = store.put_stream(io.BytesIO(dicom_bytes(ds)))
        later = store.add_image(digest, size, "a.dcm", "test", read_header(store.file_path(digest), "a")).image_id
        changing.join(60)
        running.join(60)
        assert seen == [("outside", "queued")], "the image at hand (noise) finished, the one queued meanwhile not begun"
        assert worker.run_once() and store.image_status(later)[0] == "done"
    finally:
        registry.close()


def test_a_store_failing_while_an_image_is_decoded_is_logged_once_not_each_look_at_the_queue(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails (closed) while the window waits seconds for a slow image: the failed claim is logged once
    for the window, not each 50 ms look at the queue (a disk-full box would fill its journal); the image's record
    fails too, and is left to its lease."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        slow, _, running, _ = _slow_image_in_hand(store, registry)
        store.close()
        running.join(60)
    finally:
        registry.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_app.inference.worker"]
    assert messages == [
        "worker: cannot claim more jobs; going on with those at hand",
        f"worker: the outcome of image {slow} could not be recorded",
    ]


def _later_image(store: Store) -> int:
    """A quick image queued (a chest CR of new UIDs: the slow image's are its own)."""
    from support.dicom import dicom_bytes

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    digest, size = store.put_stream(io.BytesIO(dicom_bytes(ds)))
    return store.add_image(digest, size, "a.dcm", "test", read_header(store.file_path(digest), "a")).image_id


def test_a_model_change_made_on_the_front_stops_the_window_s_refill_not_its_first_claims(
    tmp_path: Path, store: Store
) -> None:
    """The front made a model change the worker process has not taken up yet (`change_waiting`): the window at
    hand takes no more images (they would be read by the model about to leave); the next pass, whose `before_job`
    takes the change up, claims them as ever."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        slow, worker, running, ended = _slow_image_in_hand(store, registry)
        worker.change_waiting = lambda: True
        later = _later_image(store)
        running.join(60)
        assert ended == [True]
        assert store.image_status(slow)[0] != "queued" and store.image_status(later)[0] == "queued"
        assert worker.run_once() and store.image_status(later)[0] == "done", "a pass's first claim is made"
    finally:
        registry.close()


def test_an_image_the_store_cannot_queue_again_is_left_to_its_lease_and_the_pass_ends_well(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """An image not read (its decoders closed under it) whose return to the queue the database refuses (a write
    failing there): logged, the job left running to its lease (then claimed again), the worker's pass ends normally."""
    import sqlite3

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        slow, _, running, ended = _slow_image_in_hand(store, registry)
        db = sqlite3.connect(tmp_path / "store" / "edge-app.sqlite3")
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs WHEN NEW.state = 'queued' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        db.close()
        assert registry.decoder is not None
        registry.decoder.close()
        running.join(60)
    finally:
        registry.close()
    assert ended == [True]
    assert store.query("SELECT state FROM jobs WHERE image_id = ?", (slow,))[0][0] == "running"
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_app.inference.worker"]
    assert f"worker: image {slow} could not be queued again" in messages


def test_documents_failing_while_the_outbox_stops_are_left_due_for_the_restart(tmp_path: Path, store: Store) -> None:
    """Documents that fail once the outbox is stopping (its process stopped under them, or a Ctrl-C reaching it)
    are not kept as given up, which would need a person to send them again: they stay due, made after a restart."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    outputs = OutputSettings.model_validate({"destinations": [{"ae_title": "PACS", "host": "127.0.0.1"}]})
    outbox = Outbox(store, outputs)
    try:
        image_id = _queue(store, "RG1_UNCR.dcm")
        Worker(store, registry, on_recorded=outbox.queue).run_once()
        heatmaps = [(sha, store.read_file(sha)) for (sha,) in store.query("SELECT sha256 FROM heatmaps")]
        for sha, _ in heatmaps:
            store.file_path(sha).unlink()
        outbox.stop()
        assert outbox.run_once() is None
        assert store.query("SELECT image_id FROM documents_due")[0][0] == image_id
        assert store.outputs(image_id) == [] and store.backlog() == []
        for _, data in heatmaps:
            store.put_file(data)
        restarted = Outbox(store, outputs)
        try:
            assert restarted.run_once() == 2, "the SR and the SC, made after the restart"
        finally:
            restarted.stop()
    finally:
        outbox.stop()
        registry.close()
