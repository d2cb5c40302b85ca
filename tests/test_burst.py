"""Bursts through the real worker and store, with real images: the images queued are begun at once, decoded side by
side, those prepared together inferred in one batch where the model takes batches, each recorded as soon as it is
diagnosed; the findings are those one image at a time gives, a bad image fails alone, and images of another model
in the same burst are read by theirs."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings, WorkerSettings
from edge_app.imaging import DecodeLimits
from edge_app.imaging.header import read_header
from edge_app.imaging.sandbox import (
    DecoderPool,
    auto_decoders,
    cgroup_limit_mb,
    codec_threads,
    decoders_for,
    memory_mb,
)
from edge_app.inference.diagnoser import Diagnoser
from edge_app.inference.registry import Registry
from edge_app.inference.worker import Worker
from edge_app.runtime import open_runner
from edge_app.store import Store
from support import processes
from support.bundles import bundle_for, bundle_variant
from support.dicom import dicom_bytes, dicom_file, noisy_j2k

pytestmark = pytest.mark.integration

CHESTS = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm", "RG1_J2KI.dcm"]


def _registry(tmp_path: Path, *bundles: Path, decoders: int = 2) -> Registry:
    """The bundles' registry, decoding in `decoders` processes; 0: in this process, each image when its model
    finishes it (all of a window then prepared at once: one batch)."""
    settings = Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1, "bundle": str(bundles[0]), "extra_bundles": [str(b) for b in bundles[1:]]},
            "imaging": {"decoders": decoders or 1},
        }
    )
    if decoders:
        return Registry.from_settings(settings)
    return Registry([Diagnoser(load_bundle(b), open_runner(load_bundle(b), threads=1)) for b in bundles])


def _queue(store: Store, name: str, data: bytes | None = None) -> int:
    """A real image queued under a UID of its own (RG1_J2KI is RG1_J2KR's lossy copy, with its UID)."""
    import pydicom

    if data is None:
        ds = pydicom.dcmread(dicom_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        data = dicom_bytes(ds)
    digest, size = store.put_stream(io.BytesIO(data))
    return store.add_image(digest, size, name, "test", read_header(store.file_path(digest), name)).image_id


def _read(store: Store, image_id: int) -> tuple[str, list[tuple[str, str, list[float], float]]]:
    """The image's status, and per result: its status, model name, probabilities and inference time."""
    status, _ = store.image_status(image_id)
    rows = store.query(
        "SELECT status, model, findings, timings FROM results WHERE image_id = ? ORDER BY id", (image_id,)
    )
    results = [
        (s, json.loads(m)["name"], [f["probability"] for f in json.loads(f)], json.loads(t).get("infer", 0.0))
        for s, m, f, t in rows
    ]
    return status, results


def _run(tmp_path: Path, registry: Registry, names: list[str], burst: int, bad: bytes | None = None) -> list[Any]:
    """Each image's status and results once the worker, taking `burst` at once, has read them all."""
    store = Store(tmp_path / f"store-{burst}")
    ids = [_queue(store, name) for name in names]
    if bad is not None:
        ids.insert(1, _queue(store, "bad.dcm", bad))
    worker = Worker(store, registry, WorkerSettings(burst=burst))
    assert worker.run_once() and not worker.run_once(), "one pass: the window refilled as images are recorded"
    return [_read(store, i) for i in ids]


def _same(read: list[Any], reference: list[Any]) -> bool:
    """The same statuses, models and probabilities (stored to 6 decimals: a batch's float32 sums may round the
    last one the other way)."""
    assert len(read) == len(reference)
    for (status, results), (ref_status, ref_results) in zip(read, reference, strict=True):
        assert (status, [r[:2] for r in results]) == (ref_status, [r[:2] for r in ref_results])
        for r, ref in zip(results, ref_results, strict=True):
            assert r[2] == pytest.approx(ref[2], abs=2e-6)
    return True


@pytest.mark.parametrize("decoders", [0, 2])
def test_a_burst_gives_the_findings_one_at_a_time_gives(tmp_path: Path, decoders: int) -> None:
    """Four chest CRs (two JPEG 2000) in one burst: the same probabilities as one by one (to float32's precision);
    prepared together (decoded in this process, when finished), one batch: one inference time for all."""
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, decoders=decoders)
    try:
        alone = _run(tmp_path, registry, CHESTS, burst=1)
        together = _run(tmp_path, registry, CHESTS, burst=8)
    finally:
        registry.close()
    assert [status for status, _ in together] == ["done"] * 4 and _same(together, alone)
    assert len({results[0][3] for _, results in alone}) == 4
    if not decoders:
        assert len({results[0][3] for _, results in together}) == 1, "one batch: one inference time"


def test_a_model_with_a_fixed_batch_of_one_reads_a_burst_one_by_one(tmp_path: Path) -> None:
    """A model whose input's batch dimension is fixed at 1 cannot take the burst in one batch: its images are
    inferred one by one, with the findings of the batched model."""
    import onnx

    def batch_of_one(folder: Path) -> None:
        model = onnx.load(folder / "model.onnx")
        for value in [*model.graph.input, *model.graph.output]:
            value.type.tensor_type.shape.dim[0].dim_value = 1
        onnx.save(model, folder / "model.onnx")

    fixed = bundle_variant(tmp_path, "1.1.2", batch_of_one)
    registry = _registry(tmp_path, fixed)
    batched = _registry(tmp_path / "batched", EMBEDDED_BUNDLE)
    try:
        assert not registry.diagnosers[0].runner.takes_batches and batched.diagnosers[0].runner.takes_batches
        one_by_one = _run(tmp_path, registry, CHESTS, burst=8)
        reference = _run(tmp_path / "batched", batched, CHESTS, burst=8)
    finally:
        registry.close()
        batched.close()
    assert len({results[0][3] for _, results in one_by_one}) == 4, "four inferences"
    assert [status for status, _ in one_by_one] == ["done"] * 4 and _same(one_by_one, reference)


def test_a_bad_image_in_a_burst_fails_alone(tmp_path: Path) -> None:
    """An image whose pixels do not decode, second of a burst of five: refused with its reason; the four others
    are read as they are alone."""
    from hostile import rle_rows_disagree

    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        alone = _run(tmp_path, registry, CHESTS, burst=1)
        together = _run(tmp_path, registry, CHESTS, burst=8, bad=rle_rows_disagree())
    finally:
        registry.close()
    bad = together.pop(1)
    assert bad[0] == "rejected" and [r[0] for r in bad[1]] == ["rejected"]
    assert _same(together, alone)


def test_images_of_another_model_in_the_same_burst_are_read_by_theirs(tmp_path: Path) -> None:
    """Chest CRs and ultrasounds in one burst: each goes to its model, with the findings one by one gives."""
    ultrasound = bundle_for(tmp_path, "us-demo", ("US",))
    names = ["RG1_UNCR.dcm", "US1_UNCR.dcm", "RG1_J2KR.dcm", "US1_J2KR.dcm"]
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, ultrasound, decoders=0)
    try:
        alone = _run(tmp_path, registry, names, burst=1)
        together = _run(tmp_path, registry, names, burst=8)
    finally:
        registry.close()
    assert [status for status, _ in together] == ["done"] * 4
    assert [results[0][1] for _, results in together] == ["cxr-reference", "us-demo"] * 2
    assert _same(together, alone)
    assert len({together[i][1][0][3] for i in (0, 2)}) == 1 and len({together[i][1][0][3] for i in (1, 3)}) == 1


def _when_done(store: Store, ids: list[int], timeout_s: float = 60) -> dict[int, float]:
    """When each image's status first read as no longer queued, polled every 5 ms."""
    done: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(ids) and time.monotonic() < deadline:
        for i in ids:
            if i not in done and store.image_status(i)[0] != "queued":
                done[i] = time.monotonic()
        time.sleep(0.005)
    return done


def test_an_image_is_recorded_without_waiting_for_a_slower_one_begun_beside_it(tmp_path: Path) -> None:
    """A chest CR and, after it, a slow image (seconds of JPEG 2000) in one window of two decoders: the CR is
    recorded while the slow one is still being decoded, not once the whole burst is."""
    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        registry.diagnosers[0].diagnose(dicom_file("RG1_UNCR.dcm"))  # the decoder processes started
        fast, slow = _queue(store, "RG1_UNCR.dcm"), _queue(store, "slow.dcm", noisy_j2k(3000, whole=True))
        running = threading.Thread(target=Worker(store, registry, WorkerSettings(burst=8)).run_once)
        running.start()
        done = _when_done(store, [fast, slow])
        running.join()
    finally:
        registry.close()
    assert set(done) == {fast, slow} and done[slow] - done[fast] > 0.5, "the CR recorded first, on its own"


def test_an_image_queued_while_another_is_decoded_is_taken_by_a_free_decoder(tmp_path: Path) -> None:
    """A slow image being decoded when a chest CR arrives: a free decoder takes the CR at once, and it is
    recorded before the slow one (a burst claimed before the CR arrived would have made it wait)."""
    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        registry.diagnosers[0].diagnose(dicom_file("RG1_UNCR.dcm"))  # the decoder processes started
        slow = _queue(store, "slow.dcm", noisy_j2k(3000, whole=True))
        running = threading.Thread(target=Worker(store, registry, WorkerSettings(burst=8)).run_once)
        running.start()
        while store.query("SELECT state FROM jobs WHERE image_id = ?", (slow,))[0][0] != "running":
            time.sleep(0.005)
        fast = _queue(store, "RG1_UNCR.dcm")
        done = _when_done(store, [fast, slow])
        running.join()
    finally:
        registry.close()
    assert set(done) == {fast, slow} and done[slow] - done[fast] > 0.5, "the CR taken and recorded meanwhile"


def _copy_of(name: str) -> bytes:
    """A real image's bytes under a UID of its own."""
    import pydicom

    ds = pydicom.dcmread(dicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return dicom_bytes(ds)


def _copies(store: Store, data: bytes, n: int) -> list[int]:
    """`n` copies of an image queued, each under a UID of its own."""
    import pydicom

    ids = []
    for _ in range(n):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ids.append(_queue(store, "slow.dcm", dicom_bytes(ds)))
    return ids


def test_a_window_full_of_slow_images_waits_without_spinning_and_takes_an_arrival_once_a_slot_frees(
    tmp_path: Path,
) -> None:
    """A window of two, both slow images being decoded, when a chest CR arrives: the worker's thread waits (its
    CPU near zero: no claim while the window is full), and the CR takes the slot of the first slow image recorded,
    recorded before the slower one."""
    from test_worker import _cpu_seconds_of_thread

    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, decoders=2)
    worker = Worker(store, registry, WorkerSettings(burst=2, idle_s=0.05))
    try:
        slow, slower = (
            _queue(store, "slow.dcm", noisy_j2k(2000, whole=True)),
            *_copies(store, noisy_j2k(3000, whole=True), 1),
        )
        worker.start()
        while store.query("SELECT count(*) FROM jobs WHERE state = 'running'")[0][0] < 2:
            time.sleep(0.005)
        fast = _queue(store, "RG1_UNCR.dcm")
        before = _cpu_seconds_of_thread("edge-worker")
        time.sleep(0.5)
        assert store.image_status(slow)[0] == "queued", "the window still full"
        assert _cpu_seconds_of_thread("edge-worker") - before < 0.05
        done = _when_done(store, [slow, slower, fast])
    finally:
        worker.stop()
        registry.close()
    assert set(done) == {slow, slower, fast} and done[fast] < done[slower], "taken by the slot freed first"


def test_a_worker_in_its_own_process_takes_up_a_model_change_during_a_stream(
    tmp_path: Path, make_settings: Callable[..., Settings], service: Callable[..., Any]
) -> None:
    """A worker in its own process (role worker) and a front, chest CRs arriving without a pause: a model put in
    service on the front reads the images begun after the window at hand, not only once the queue is empty."""
    from edge_app.ingest import Ingest

    settings = make_settings(worker={"burst": 2, "idle_s": 0.05}, imaging={"decoders": 2})
    service(settings, "worker")
    front = service(settings, "front")
    variant = bundle_variant(tmp_path, "1.1.2")
    stop = threading.Event()

    def stream() -> None:
        store = Store(settings.storage.data_dir)
        while not stop.is_set():
            if store.queued() < 8:
                Ingest(store).submit(io.BytesIO(_copy_of("RG1_UNCR.dcm")), "cr.dcm", "test")
            time.sleep(0.01)
        store.close()

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        time.sleep(2)
        front.lifecycle.activate(variant, "admin")
        time.sleep(6)
        versions = {json.loads(row[0])["version"] for row in front.store.query("SELECT model FROM results")}
    finally:
        stop.set()
        streaming.join()
    assert versions == {"1.1.1", "1.1.2"}


def test_an_image_in_the_window_past_its_lease_is_not_taken_again(tmp_path: Path) -> None:
    """Three slow images on one decoder, a lease of half a second: the last waits in the window longer than its
    lease (as 64 images do behind one decoder against the default 600 s); the window's refill does not claim its
    own images again: each is tried once and recorded once."""
    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, decoders=1)
    try:
        ids = _copies(store, noisy_j2k(2500, whole=True), 3)
        Worker(store, registry, WorkerSettings(burst=8, lease_s=0.5)).run_once()
    finally:
        registry.close()
    results = store.query("SELECT image_id, count(*) FROM results GROUP BY image_id ORDER BY image_id")
    assert [tuple(row) for row in results] == [(i, 1) for i in ids]
    assert [row[0] for row in store.query("SELECT attempts FROM jobs ORDER BY id")] == [1, 1, 1]


def test_an_image_another_claim_took_is_recorded_by_that_claim_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose lease runs out between two renewals (a lease of 20 ms, renewed every 50 ms at best) while its
    slow image is decoded: another claim takes the job. The worker's outcome is not recorded (a warning, not an
    error); the other claim's is, once."""
    import logging

    from edge_app.store import Outcome

    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, decoders=1)
    (image_id,) = _copies(store, noisy_j2k(3000, whole=True), 1)
    other = Store(tmp_path / "store")
    taken: list[Any] = []

    def take() -> None:
        deadline = time.monotonic() + 60
        while not taken and time.monotonic() < deadline:
            if tuple(other.query("SELECT state, attempts FROM jobs")[0]) == ("running", 1):
                job = other.claim_job(lease_s=600, max_attempts=5)  # only once the worker's lease has run out
                if job is not None:
                    taken.append(job)
            time.sleep(0.002)

    taker = threading.Thread(target=take)
    taker.start()
    try:
        with caplog.at_level(logging.WARNING):
            assert Worker(store, registry, WorkerSettings(burst=8, lease_s=0.02, max_attempts=5)).run_once()
    finally:
        taker.join()
        registry.close()
    assert len(taken) == 1 and taken[0].attempts == 2
    assert store.query("SELECT count(*) FROM results")[0][0] == 0, "the worker recorded nothing"
    assert store.image_status(image_id)[0] == "queued"
    lost = [r.levelname for r in caplog.records if "outcome not recorded" in r.getMessage()]
    assert lost == ["WARNING"]
    assert other.finish_job(taken[0], Outcome("failed", reason="the other claim's outcome")) == []
    assert store.image_status(image_id) == ("failed", "the other claim's outcome")
    other.close()


def test_decoders_killed_mid_window_cost_only_the_images_they_held(tmp_path: Path) -> None:
    """Four slow images on two decoders, both decoder processes killed (a native crash) while the first two are
    decoded: those two are refused as crashed; the two waiting for a decoder are read by the new ones, and the
    window ends."""
    from test_hostile import _children, _cmdline

    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE, decoders=2)
    try:
        registry.diagnosers[0].diagnose(dicom_file("RG1_UNCR.dcm"))  # the children started
        ids = _copies(store, noisy_j2k(2000, whole=True), 4)
        running = threading.Thread(target=Worker(store, registry, WorkerSettings(burst=8)).run_once)
        running.start()
        while store.query("SELECT count(*) FROM jobs WHERE state = 'running'")[0][0] < 4:
            time.sleep(0.005)
        time.sleep(0.3)  # each child on an image
        for pid in [p for p in _children() if "resource_tracker" not in _cmdline(p)]:
            os.kill(pid, signal.SIGKILL)
        running.join(60)
        assert not running.is_alive()
    finally:
        registry.close()
    statuses = [store.image_status(i) for i in ids]
    assert [reason for _, reason in statuses[:2]] == ["the image decoder crashed on this file (killed by SIGKILL)"] * 2
    assert [status for status, _ in statuses[2:]] == ["outside"] * 2


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_server_stopped_during_a_window_records_each_image_once(
    tmp_path: Path, launch: Callable[..., Any], free_port: int, how: signal.Signals
) -> None:
    """Six slow images, a window of three on two decoders, the server stopped while images of the window are being
    decoded. Stopped (systemd's SIGTERM): what was begun is recorded and no more begun, the rest still queued;
    killed: what was begun is claimed again once its lease runs out. Either way, the server started again records
    each image once."""
    data = tmp_path / "data"
    env = {"EDGE_APP_WORKER_IDLE_S": "0.05", "EDGE_APP_WORKER_BURST": "3", "EDGE_APP_WORKER_LEASE_S": "2"}
    store = Store(data)
    ids = _copies(store, noisy_j2k(2000, whole=True), 6)
    proc = launch(data, free_port, {**env, "EDGE_APP_IMAGING_DECODERS": "2"})
    running = "SELECT count(*) FROM jobs WHERE state = 'running'"
    while store.query(running)[0][0] < 2:
        time.sleep(0.005)
    proc.send_signal(how)
    assert proc.wait(timeout=60) in (0, -how)
    states = {row[0] for row in store.query("SELECT state FROM jobs")}
    assert states == ({"done", "queued"} if how == signal.SIGTERM else {"running", "queued"} | (states & {"done"}))
    again = launch(data, processes.free_port(), env)
    try:
        done = _when_done(store, ids)
    finally:
        again.terminate()
        again.wait(timeout=60)
    results = store.query("SELECT image_id, count(*) FROM results GROUP BY image_id ORDER BY image_id")
    assert set(done) == set(ids) and [tuple(row) for row in results] == [(i, 1) for i in ids]


def test_decoders_by_default_follow_the_cores_and_the_memory() -> None:
    """`imaging.decoders = 0`: one process per core but one, at least one; fewer where the memory would not hold
    them at max_decode_mb + 100 MB each (a quarter of this machine's memory)."""
    import os

    cores = len(os.sched_getaffinity(0))
    memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    assert auto_decoders(320) == max(1, min(16, cores - 1))
    assert auto_decoders(memory_mb // 4 - 100) == 1, "the memory for one: one"
    assert auto_decoders(65536) == 1, "at least one"
    pool = DecoderPool(DecodeLimits(), workers=0, timeout_s=5)
    try:
        assert pool.workers == max(1, min(16, cores - 1))
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("cores", "memory", "cgroup", "decoders"),
    [
        (6, 7600, None, 4),  # an Orin Nano: min(5, 1,900 // 420)
        (6, 7600, 2500, 3),  # under the worker unit's MemoryMax=2500M: 1,476 // 420
        (6, 7600, 1024 + 3 * 420, 3),  # the cgroup less 1 GB holds three exactly
        (6, 7600, 1024 + 3 * 420 - 1, 2),  # ... and a megabyte less, two
        (6, 4 * 3 * 420 + 3, None, 3),  # a quarter of the memory holds three
        (6, 4 * 3 * 420 - 1, None, 2),
        (64, 10**6, None, 16),  # at most 16
        (4, 10**6, None, 3),  # one core but one
        (2, 10**6, None, 1),  # one core but one
        (6, 100, 100, 1),  # at least one
    ],
)
def test_decoders_follow_the_cores_the_memory_and_the_cgroup(
    cores: int, memory: int, cgroup: int | None, decoders: int
) -> None:
    assert decoders_for(320, cores, memory, cgroup) == decoders


def test_the_machine_s_memory_and_cgroup_limit_are_read_from_the_kernel_s_files(tmp_path: Path) -> None:
    """/proc/meminfo in kB; /proc/self/cgroup names the cgroup, whose memory.max and its parents' (bytes, or
    "max") up to the hierarchy's root give the tightest limit."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:         1000000 kB\nMemTotal:        7782400 kB\n")
    assert memory_mb(meminfo) == 7600
    meminfo.write_text("MemFree: 1 kB\n")
    with pytest.raises(OSError, match="no MemTotal"):
        memory_mb(meminfo)

    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    leaf = root / "system.slice" / "edge-app-worker.service"
    leaf.mkdir(parents=True)
    proc.write_text("0::/system.slice/edge-app-worker.service\n")
    assert cgroup_limit_mb(proc, root) is None, "no memory.max anywhere"
    (leaf / "memory.max").write_text("max\n")
    (root / "system.slice" / "memory.max").write_text(f"{3000 * 2**20}\n")
    (root / "memory.max").write_text(f"{8000 * 2**20}\n")
    assert cgroup_limit_mb(proc, root) == 3000, "the slice's, the unit's being max"
    (leaf / "memory.max").write_text(f"{2500 * 2**20}\n")
    assert cgroup_limit_mb(proc, root) == 2500
    (tmp_path / "memory.max").write_text(f"{100 * 2**20}\n")
    assert cgroup_limit_mb(proc, root) == 2500, "nothing above the hierarchy's root is read"
    proc.write_text("1:name=systemd:/\n")
    assert cgroup_limit_mb(proc, root) is None, "cgroup v1 only: none"


def test_openjpeg_s_threads_share_the_cores_among_the_decoders() -> None:
    cores = len(os.sched_getaffinity(0))
    assert codec_threads(1) == cores, "one decoder: every core for a codestream's code-blocks"
    assert codec_threads(cores) == 1 and codec_threads(4 * cores) == 1
    assert codec_threads(0) == cores


def test_images_whose_decoder_could_not_be_started_are_queued_again_and_read(tmp_path: Path) -> None:
    """The decoder pool gone under the worker (pebble's pool stopped, as when its processes cannot start; not the
    DecoderPool closed, which is final): the images of the window are not failed for it; queued again at once,
    they are read by the pool that replaces it."""
    store = Store(tmp_path / "store")
    registry = _registry(tmp_path, EMBEDDED_BUNDLE)
    try:
        ids = [_queue(store, name) for name in CHESTS[:2]]
        assert registry.decoder is not None
        registry.decoder._pool.stop()  # pebble's, under the DecoderPool: no public way to break it
        assert Worker(store, registry, WorkerSettings(burst=8)).run_once()
    finally:
        registry.close()
    assert [store.image_status(i)[0] for i in ids] == ["done", "done"]
    assert [row[0] for row in store.query("SELECT attempts FROM jobs ORDER BY id")] == [2, 2], "tried twice each"
