"""The front (web service, capture) and the worker (models) as two processes on one data directory, as the
appliance's units run them: images flow through the database, a model put in service on the front is taken up by
the worker, and a worker killed mid-way takes neither the tablets nor the receiver down."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.errors import ConfigError
from edge_app.service import Service
from edge_app.web import create_app, services
from support.bundles import bundle_variant
from support.data import NIH
from support.tools import EDGE_APP

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _start_worker(data: Path) -> subprocess.Popen[str]:
    # It looks at the queue only every 30 s: what makes it quick here is the front's wake-up, and its own.
    env = {**os.environ, "EDGE_APP_STORAGE_DATA_DIR": str(data), "EDGE_APP_WORKER_IDLE_S": "30"}
    return subprocess.Popen([*EDGE_APP, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def front(tmp_path: Path, service: Callable[..., Service]) -> Flask:
    return create_app(
        service({"storage": {"data_dir": str(tmp_path / "data")}, "server": {"result_wait_s": 5.0}}, role="front")
    )


def test_images_flow_from_the_front_to_a_worker_process_and_back(
    front: Flask, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    data, client, svc = tmp_path / "data", api_client(front), services.get_from(front)
    assert svc.worker is None and svc.registry is None, "no model in the front's process"
    assert client.get("/api/v1/health").get_json()["runner"] == "(worker not running)"
    worker = _start_worker(data)
    try:
        _until(lambda: client.get("/api/v1/health").get_json()["runner"] == "onnxruntime")
        images = sorted((NIH / "images").glob("*.png"))
        started = time.monotonic()
        resp = client.post("/api/v1/studies?filename=a.png", data=images[0].read_bytes())
        assert resp.status_code == 201, resp.get_json()
        assert time.monotonic() - started < 3.0, "woken both ways: no waiting for a poll"
        assert resp.get_json()["images"][0]["results"][0]["model"]["version"] == "1.1.1"

        variant = bundle_variant(tmp_path, "1.4.0")
        svc.lifecycle.activate(variant, "boss")  # on the front's admin page
        _until(lambda: client.get("/api/v1/health").get_json()["version"] == "1.4.0")
        sha = client.get("/api/v1/health").get_json()["bundle_sha256"]
        labels = next(m.labels for m in svc.lifecycle.in_service() if m.bundle_sha256 == sha)
        svc.lifecycle.set_thresholds(sha, dict.fromkeys(labels, 0.0), "boss")
        _until(lambda: all(v == 0.0 for v in svc.lifecycle.in_service()[0].thresholds.values()))
        resp = client.post("/api/v1/studies?filename=b.png", data=images[1].read_bytes())
        (result,) = resp.get_json()["images"][0]["results"]
        assert result["model"]["version"] == "1.4.0"
        assert all(f["positive"] == f["validated"] for f in result["findings"]), "threshold 0: every validated one"

        second = _start_worker(data)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2 and "another edge-app service is using" in out, "one worker per data directory"

        worker.send_signal(signal.SIGKILL)
        worker.wait()
        health = client.get("/api/v1/health").get_json()
        assert health["status"] == "degraded" and "not running" in health["problem"], "worker.json alone is no worker"
        assert health["runner"] == "(worker not running)" and health["version"] == "1.4.0"
        started = time.monotonic()
        resp = client.post("/api/v1/studies?filename=c.png", data=images[2].read_bytes())
        assert resp.status_code == 202, "kept and queued: no worker to answer now"
        assert time.monotonic() - started < 2.0, "and said at once, not after result_wait_s"
        image_id = resp.get_json()["image_id"]
        health = client.get("/api/v1/health").get_json()
        assert health["worker"]["state"] == "down" and not health["worker"]["running"], health["worker"]
        assert health["queued"] == 1 and health["worker"]["oldest_wait_s"] >= 0
        worker = _start_worker(data)
        _until(lambda: svc.store.image_status(image_id)[0] == "done")
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0 and "Traceback" not in out


def test_a_second_front_on_the_same_data_directory_is_refused(front: Flask, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"another edge-app service is using .* \(front.lock\)"):
        Service(Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}}), role="front")


def _garbage_model(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"not an ONNX model at all")


def test_a_model_the_worker_cannot_load_is_reported_and_the_worker_lives(
    front: Flask, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """Hashes that hold over a model that does not load (or a TensorRT engine that cannot be built): the front
    records it, the worker keeps the model it has and says why; restarted, it runs the configured one."""
    data, client, svc = tmp_path / "data", api_client(front), services.get_from(front)
    worker = _start_worker(data)
    try:
        _until(lambda: client.get("/api/v1/health").get_json()["runner"] == "onnxruntime")
        svc.lifecycle.activate(bundle_variant(tmp_path, "6.6.6", _garbage_model), "boss")
        _until(lambda: client.get("/api/v1/health").get_json()["status"] == "degraded")
        health = client.get("/api/v1/health").get_json()
        assert "cannot be loaded here" in health["problem"] and health["version"] == "1.1.1", "the old one runs"
        images = sorted((NIH / "images").glob("*.png"))
        assert client.post("/api/v1/studies?filename=a.png", data=images[0].read_bytes()).status_code == 201
        worker.terminate()
        worker.wait(timeout=60)
        worker = _start_worker(data)  # at start: the recorded model cannot load, the configured one runs
        _until(lambda: "the configured one runs" in (client.get("/api/v1/health").get_json()["problem"] or ""))
        assert client.get("/api/v1/health").get_json()["version"] == "1.1.1"
        assert client.post("/api/v1/studies?filename=b.png", data=images[1].read_bytes()).status_code == 201
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_a_stop_answers_a_post_waiting_for_its_result_at_once(
    tmp_path: Path, service: Callable[..., Service], api_client: Callable[[Flask], FlaskClient]
) -> None:
    """The service stops while a POST waits for its image's result (the worker process frozen, its lock held):
    the POST is answered 202 (kept, queued) at once, not after `result_wait_s`, so that the web server's stop is."""
    data = tmp_path / "data"
    svc = service({"storage": {"data_dir": str(data)}, "server": {"result_wait_s": 60.0}}, role="front")
    client = api_client(create_app(svc))
    worker = _start_worker(data)
    try:
        _until(lambda: client.get("/api/v1/health").get_json()["runner"] == "onnxruntime")
        worker.send_signal(signal.SIGSTOP)
        answers: list[Any] = []
        image = sorted((NIH / "images").glob("*.png"))[0].read_bytes()
        posting = threading.Thread(
            target=lambda: answers.append(client.post("/api/v1/studies?filename=a.png", data=image))
        )
        posting.start()
        _until(lambda: svc.store.query("SELECT count(*) FROM images")[0][0] == 1)
        time.sleep(0.5)
        assert not answers, "waiting for the frozen worker"
        started = time.monotonic()
        svc.stopping.set()
        posting.join(10)
        assert answers and answers[0].status_code == 202, "kept and queued"
        assert time.monotonic() - started < 5.0, "answered at the stop, not after result_wait_s"
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        worker.wait(60)
