"""Hostile images cost one image, never the service: each known one refused with its reason through every entry
point (decoding, the contained decoder, `edge-app diagnose`, the API, a real server), and the decoder process
contains crashes, overruns and memory."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from hostile import HOSTILE, Hostile, two_frames_said_one

from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.manifest import Manifest
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import ImageRejected
from edge_app.imaging import DecodeLimits, decode
from edge_app.imaging.decode import Wanted
from edge_app.imaging.prepare import PREVIEW_LEAST_SIDE
from edge_app.imaging.sandbox import DecoderPool
from support.dicom import dicom_file, noisy_j2k

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]
IDS = [h.name for h in HOSTILE]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for item in HOSTILE:
        (folder / item.name).write_bytes(item.build())
    return folder


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_bundle(EMBEDDED_BUNDLE).manifest


@pytest.fixture(scope="module")
def pool() -> Iterator[DecoderPool]:
    decoders = DecoderPool(DecodeLimits(), workers=1, timeout_s=30)
    yield decoders
    decoders.close()


@pytest.mark.parametrize("wanted", [None, Wanted(PREVIEW_LEAST_SIDE, 64)], ids=["full", "reduced"])
@pytest.mark.parametrize("item", HOSTILE, ids=IDS)
def test_decoding_refuses_it_with_its_reason(item: Hostile, hostile_dir: Path, wanted: Wanted | None) -> None:
    """Refused whether decoded full size or reduced: the limits hold the declared full size."""
    with pytest.raises(ImageRejected) as info:
        decode(hostile_dir / item.name, source=item.name, wanted=wanted)
    assert item.reason in info.value.reason


@pytest.mark.parametrize("item", HOSTILE, ids=IDS)
def test_the_contained_decoder_refuses_it(
    item: Hostile, hostile_dir: Path, pool: DecoderPool, manifest: Manifest
) -> None:
    with pytest.raises(ImageRejected) as info:
        pool.prepare(hostile_dir / item.name, item.name, manifest)
    assert item.reason in info.value.reason


def test_diagnose_reports_each_and_goes_on(cli: Cli, hostile_dir: Path) -> None:
    """One JSON line per file, the good file diagnosed after the bad ones, exit status 1, no traceback or library
    noise on the terminal (the RLE plugin's panic message included)."""
    good = dicom_file("RG1_UNCR.dcm")
    proc = cli("diagnose", str(hostile_dir), str(good))
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_file = {Path(d["file"]).name: d for d in lines}
    assert len(lines) == len(HOSTILE) + 1
    for item in HOSTILE:
        assert by_file[item.name]["status"] == "rejected"
        assert item.reason in by_file[item.name]["reason"]
    assert by_file[good.name]["status"] == "ok"
    for noise in ("Traceback", "panicked", "ERROR", "WARNING", "pydicom"):
        assert noise not in proc.stderr


def test_diagnose_sends_the_library_messages_to_the_debug_log(cli: Cli, hostile_dir: Path) -> None:
    """pydicom's warning about the extra frame: in the log with -v, nowhere without it."""
    path = str(hostile_dir / "two_frames_said_one.dcm")
    quiet, verbose = cli("diagnose", path), cli("-v", "diagnose", path)
    assert quiet.returncode == verbose.returncode == 1
    assert "pydicom" not in quiet.stderr
    assert (
        f"DEBUG edge_app.imaging.sandbox: {path}: WARNING pydicom: The number of bytes of pixel data" in verbose.stderr
    )


@pytest.mark.parametrize("item", HOSTILE, ids=IDS)
def test_the_api_keeps_it_and_answers_422(item: Hostile, hostile_dir: Path, client: FlaskClient) -> None:
    resp = client.post(f"/api/v1/studies?filename={item.name}", data=(hostile_dir / item.name).read_bytes())
    assert resp.status_code == 422
    body = resp.get_json()
    assert item.reason in body["detail"]
    (image,) = body["study"]["images"]
    assert image["status"] == "rejected" and image["size"] == (hostile_dir / item.name).stat().st_size


def test_a_real_server_answers_a_decoder_panic_and_lives(
    server: str, hostile_dir: Path, api_headers: dict[str, str]
) -> None:
    """The RLE panic left the request unanswered and its socket in CLOSE-WAIT: now a 422, then a good image."""
    for _ in range(3):
        req = urllib.request.Request(
            server + "/studies?filename=rle.dcm",
            data=(hostile_dir / "rle_rows_disagree.dcm").read_bytes(),
            headers=api_headers,
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 422
    req = urllib.request.Request(
        server + "/studies?filename=rg1.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes(), headers=api_headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201


# -- the decoder process -----------------------------------------------------------------------------------------


def _children() -> list[int]:
    """This process's child processes, from /proc."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(stat.parent.name))
    return found


def _address_space_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address space line")


def test_the_decoder_process_has_a_memory_cap(manifest: Manifest) -> None:
    """The child's address space is capped at what it held once its decoders were loaded, plus the decoding
    budget and the headroom (160 MB each here: 320 MB, where their bitwise or is 160 and their xor 0); its stderr
    is closed (/dev/null)."""
    before = set(_children())
    decoders = DecoderPool(DecodeLimits(max_decode_mb=160), workers=1, timeout_s=30)
    try:
        with pytest.raises(ImageRejected):  # starts the child; the model is not for ultrasound
            decoders.prepare(dicom_file("US1_UNCR.dcm"), "us.dcm", manifest)
        (child,) = set(_children()) - before - {p for p in _children() if "resource_tracker" in _cmdline(p)}
        limit = _address_space_limit(child)
        assert limit != "unlimited"
        left = int(limit) - _status_kb(child, "VmSize") * 1024  # less what one small image took since
        assert (320 - 48) * 2**20 < left <= 320 * 2**20, f"{left / 2**20:.0f} MB left"
        assert os.readlink(f"/proc/{child}/fd/2") == "/dev/null"
    finally:
        decoders.close()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (-9, "killed by SIGKILL"),
        (-1, "killed by SIGHUP"),
        (-200, "killed by signal 200"),
        (0, "exit status 0"),
        (3, "exit status 3"),
    ],
)
def test_how_a_decoder_process_ended_is_said_plainly(code: int, reason: str) -> None:
    from edge_app.imaging.sandbox import _exit_reason

    assert _exit_reason(code) == reason


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


def test_an_image_over_its_time_is_stopped_and_the_next_one_decodes(
    manifest: Manifest, nih_png: Path, tmp_path: Path
) -> None:
    """Decoded whole (the diagnostic view: no reduced resolution), 2500 px of JPEG 2000 noise takes a second."""
    slow = tmp_path / "slow.dcm"
    slow.write_bytes(noisy_j2k(2500))
    decoders = DecoderPool(DecodeLimits(), workers=1, timeout_s=0.3)
    try:
        decoders.prepare(nih_png, "warm.png", manifest)  # the child has started
        with pytest.raises(ImageRejected, match=r"decoding took longer than 0.3 s and was stopped"):
            decoders.full_depth(slow, "slow.dcm")
        assert decoders.prepare(nih_png, "next.png", manifest).batch.shape == (1, 1, 64, 64)
    finally:
        decoders.close()


def test_a_decoder_that_dies_costs_one_image(manifest: Manifest, nih_png: Path, tmp_path: Path) -> None:
    """A native crash, played by SIGKILL to the decoder process in the middle of a JPEG 2000 decode (whole)."""
    decoders = DecoderPool(DecodeLimits(), workers=1, timeout_s=30)
    slow = tmp_path / "slow.dcm"
    slow.write_bytes(noisy_j2k(2500))
    try:
        decoders.prepare(nih_png, "warm.png", manifest)
        workers = [p for p in _children() if "resource_tracker" not in _cmdline(p)]

        def kill_soon() -> None:
            time.sleep(0.15)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        with pytest.raises(ImageRejected, match=r"the image decoder crashed on this file \(killed by SIGKILL\)"):
            decoders.full_depth(slow, "crash.dcm")
        killer.join()
        assert decoders.prepare(nih_png, "next.png", manifest).batch.shape == (1, 1, 64, 64)
    finally:
        decoders.close()


def test_images_begun_when_the_decoders_close_are_answered_not_read(
    manifest: Manifest, nih_png: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service stopping under a window of images: one being decoded, one waiting for the child, one begun
    after: each is answered "not read" (`DecoderUnavailable`, which the worker queues again, never a failed image),
    no new pool is started for them, and the children are gone."""
    from edge_app.errors import DecoderUnavailable

    slow = tmp_path / "slow.dcm"
    slow.write_bytes(noisy_j2k(3000, whole=True))
    before = set(_children())
    decoders = DecoderPool(DecodeLimits(), workers=1, timeout_s=30)
    decoders.prepare(nih_png, "warm.png", manifest)
    decoding = decoders.prepare_later(slow, "decoding.dcm", manifest)
    waiting = decoders.prepare_later(nih_png, "waiting.png", manifest)
    time.sleep(0.3)
    with caplog.at_level(logging.ERROR):
        decoders.close()
        late = decoders.prepare_later(nih_png, "late.png", manifest)
        for later in (decoding, waiting, late):
            assert later.settle(10), "answered (pebble leaves some of a stopped pool's images unanswered)"
            with pytest.raises(DecoderUnavailable, match=r"decoder processes were stopped \(the service stops\)"):
                later.result()
    assert not [r for r in caplog.records if "decoder pool" in r.getMessage()], "no pool started again"
    assert not set(_children()) - before - {p for p in _children() if "resource_tracker" in _cmdline(p)}


def test_a_decoder_process_that_cannot_start_is_a_clear_internal_error_each_time(tmp_path: Path) -> None:
    """A script read from standard input (`python -`) is a __main__ a spawned child cannot import, so no decoder
    process ever starts: each image says so plainly (and the pool is replaced for the next one), where pebble's
    broken pool otherwise answers "Unexpected error within the Pool" for ever."""
    import sys

    script = """
from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import DecoderUnavailable
from edge_app.imaging import DecodeLimits
from edge_app.imaging.sandbox import DecoderPool

pool = DecoderPool(DecodeLimits(), workers=1, timeout_s=20)
manifest = load_bundle(EMBEDDED_BUNDLE).manifest
for _ in range(2):
    try:
        pool.prepare(b"\\\\x89PNG\\\\r\\\\n\\\\x1a\\\\n", "x.png", manifest)
    except DecoderUnavailable as exc:
        print("unavailable:", exc)
pool.close()
"""
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("unavailable:")]
    assert lines == ["unavailable: the image decoder process could not be started (All workers expired)"] * 2


def test_a_pool_replaced_once_is_not_replaced_again_by_a_late_report() -> None:
    """Two images failing on one broken pool each report it: the second finds it replaced already and leaves the
    new pool alone (two threads cannot be made to fail on one pool at will: the reports are made here)."""
    pool = DecoderPool(DecodeLimits(), workers=1, timeout_s=5)
    try:
        broken = pool._pool
        pool._replace(broken)
        fresh = pool._pool
        assert fresh is not broken
        pool._replace(broken)
        assert pool._pool is fresh
    finally:
        pool.close()


def test_a_decoder_process_out_of_memory_says_so() -> None:
    """What the child runs, in a process of its own whose address space has 20 MB to spare: a 1955 x 1841 16-bit
    image needs more, the MemoryError is the answer, said plainly, and the process goes on to print it."""
    import sys

    script = """
import resource, sys
from pathlib import Path
from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.imaging import DecodeLimits
from edge_app.imaging.sandbox import _address_space, _prepare_in_child
import libjpeg, openjpeg, pydicom.pixels, rle
from PIL import Image, PngImagePlugin

manifest = load_bundle(EMBEDDED_BUNDLE).manifest
data = Path(sys.argv[1]).read_bytes()
limit = _address_space() + 20 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
outcome, notes = _prepare_in_child(data, "big.dcm", DecodeLimits(), manifest)
print(outcome[0] if isinstance(outcome, tuple) else "prepared")
"""
    args = [sys.executable, "-c", script, str(dicom_file("RG1_UNCR.dcm"))]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "decoding needs more memory than the decoder is allowed (320 MB)", proc.stderr


def test_the_decoder_process_log_comes_back_at_debug_level(
    manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom's warning in the child about the extra frame, logged in the service at debug level with the file."""
    decoders = DecoderPool(DecodeLimits(), workers=1, timeout_s=30)
    try:
        with caplog.at_level(logging.DEBUG, logger="edge_app.imaging.sandbox"), pytest.raises(ImageRejected):
            decoders.prepare(two_frames_said_one(), "two.dcm", manifest)
    finally:
        decoders.close()
    notes = [r for r in caplog.records if r.name == "edge_app.imaging.sandbox" and r.levelno == logging.DEBUG]
    assert any(r.getMessage().startswith("two.dcm: WARNING pydicom:") for r in notes), caplog.text
