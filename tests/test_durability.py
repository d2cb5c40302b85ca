"""What the service acknowledged survives kill -9: a real server killed while images pour in, restarted, three
times over the same data directory. Every acknowledged image is there with its result; no file without a row,
no row without a file."""

from __future__ import annotations

import http.client
import io
import json
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.dicom import dicom_file

pytestmark = pytest.mark.system


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (256, 256), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _kill_while_sending(proc: subprocess.Popen[str], send: Callable[[threading.Event], None], seconds: float) -> None:
    """Run `send` in a thread, kill -9 the server after `seconds`, then let `send` see it gone."""
    stop = threading.Event()
    sender = threading.Thread(target=send, args=(stop,))
    sender.start()
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    sender.join(60)


def _wait_until_idle(port: int, timeout: float) -> None:
    """Until the restarted service has diagnosed everything queued."""
    deadline = time.monotonic() + timeout
    while _get(port, "/health", {})["queued"] and time.monotonic() < deadline:
        time.sleep(0.2)


def _get(port: int, path: str, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_kill_9_while_images_arrive_loses_nothing_acknowledged(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]], free_port: int, api_headers: dict[str, str]
) -> None:
    data_dir, port = tmp_path / "data", free_port
    acknowledged: dict[int, str] = {}  # image id -> study uid
    seed = 0
    for _round in range(3):
        proc = launch(data_dir, port)

        def send(stop: threading.Event) -> None:
            nonlocal seed
            while not stop.is_set():
                seed += 1
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v1/studies?filename={seed}.png", _png(seed), headers=api_headers
                )
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        body = json.load(resp)
                        acknowledged[body["image_id"]] = body["uid"]
                except urllib.error.HTTPError as exc:  # 422: stored, and its input guard says it is no chest X-ray
                    if exc.code != 422:
                        return
                    body = json.load(exc)
                    acknowledged[body["image_id"]] = body["study"]["uid"]
                except (OSError, http.client.HTTPException, ValueError):  # HTTPError is an OSError
                    return  # the server is gone: whatever was not answered was not acknowledged

        _kill_while_sending(proc, send, 3.0)  # long enough for 10 answers on a loaded machine

    proc = launch(data_dir, port)
    try:
        _wait_until_idle(port, 120)
        assert len(acknowledged) >= 10, "the test sent too little to mean anything"
        for image_id, uid in acknowledged.items():
            (image,) = [i for i in _get(port, f"/studies/{uid}", api_headers)["images"] if i["id"] == image_id]
            assert (image["status"], image["results"][0]["status"]) == ("outside", "outside"), "noise: no chest"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    db = sqlite3.connect(data_dir / "edge-app.sqlite3")
    referenced = {
        r[0]
        for r in db.execute(
            "SELECT sha256 FROM images UNION SELECT view_sha256 FROM images UNION SELECT sha256 FROM heatmaps"
        )
    }
    unfinished = db.execute("SELECT count(*) FROM jobs WHERE state != 'done'").fetchone()[0]
    db.close()
    stored = {p.name for p in (data_dir / "files").rglob("*") if p.is_file()}
    assert unfinished == 0
    assert stored == referenced - {None}, "no file without a row, no row without a file"


@pytest.mark.slow
def test_kill_9_while_a_modality_sends_loses_no_acknowledged_image(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]], free_port: int, api_headers: dict[str, str]
) -> None:
    """The same over DICOM: every C-STORE answered Success is there after restart, with its result."""
    import socket

    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    from support.dicom import dicom_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dicom_port = s.getsockname()[1]
    env = {
        "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
        "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
        "EDGE_APP_CAPTURE_DICOM_PORT": str(dicom_port),
    }
    data_dir, port = tmp_path / "data", free_port
    template = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    acknowledged: list[str] = []  # Study Instance UIDs
    for _round in range(3):
        proc = launch(data_dir, port, env)

        def send(stop: threading.Event) -> None:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", dicom_port, ae_title="EDGEAPP")
            while assoc.is_established and not stop.is_set():
                template.StudyInstanceUID, template.SeriesInstanceUID, template.SOPInstanceUID = (
                    generate_uid() for _ in range(3)
                )
                try:
                    status = assoc.send_c_store(template)
                except RuntimeError:  # the service was killed between the check and the send
                    return
                if "Status" in status and int(status.Status) == 0:
                    acknowledged.append(str(template.StudyInstanceUID))

        _kill_while_sending(proc, send, 2.0)

    proc = launch(data_dir, port, env)
    try:
        _wait_until_idle(port, 180)
        assert len(acknowledged) >= 5
        for uid in acknowledged:
            (image,) = _get(port, f"/studies/{uid}", api_headers)["images"]
            assert image["status"] == "done" and image["results"][0]["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_while_clinicians_review_loses_no_saved_review(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]], free_port: int, api_headers: dict[str, str]
) -> None:
    """Reviews posted from the tablet's form while the box loses power: each one the tablet was told was saved
    (the redirect after the form) is there after the restart."""
    import http.cookiejar
    import re
    import urllib.parse

    from edge_app.store import Store
    from edge_app.store.accounts import Accounts, parse_roles
    from edge_app.store.reviews import Reviews

    data_dir, port = tmp_path / "data", free_port
    store = Store(data_dir)
    Accounts(store).add_user("dr-ade", parse_roles("clinician"), "a long enough password")
    store.close()
    base = f"http://127.0.0.1:{port}"
    saved: list[str] = []  # the notes of the reviews answered with the redirect
    proc = launch(data_dir, port)
    chest = dicom_file("RG1_UNCR.dcm").read_bytes()  # a real chest X-ray: a result with findings to review
    req = urllib.request.Request(f"{base}/api/v1/studies?filename=a.dcm", chest, headers=api_headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        study = json.load(resp)
    result_id = study["images"][0]["results"][0]["id"]
    for _round in range(3):
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def token(page: str) -> str:
            found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
            assert found
            return found.group(1)

        login = token(opener.open(f"{base}/login", timeout=30).read().decode())
        form = {"csrf_token": login, "username": "dr-ade", "password": "a long enough password"}
        opener.open(f"{base}/login", urllib.parse.urlencode(form).encode(), timeout=30).close()
        csrf = token(opener.open(f"{base}/studies/{study['uid']}", timeout=30).read().decode())

        def send(
            stop: threading.Event, opener: urllib.request.OpenerDirector = opener, csrf: str = csrf, n: int = _round
        ) -> None:
            while not stop.is_set():
                note = f"review {len(saved)} round {n}"
                body = {"csrf_token": csrf, "note": note, "state": "read", "result": result_id, "all": "1"}
                url = f"{base}/studies/{study['uid']}/review"
                try:
                    with opener.open(url, urllib.parse.urlencode(body).encode(), timeout=30) as resp:
                        if resp.status == 200 and "Review saved." in resp.read().decode():
                            saved.append(note)
                except (OSError, http.client.HTTPException):  # the server killed mid-answer
                    return

        _kill_while_sending(proc, send, 3.0)  # long enough for 10 answers on a loaded machine
        proc = launch(data_dir, port)
    proc.terminate()
    proc.wait(timeout=30)
    assert len(saved) >= 10, "the test saved too few reviews to mean anything"
    store = Store(data_dir)
    try:
        kept = {r.note for r in Reviews(store).of_image(study["images"][0]["id"])}
    finally:
        store.close()
    assert set(saved) <= kept
