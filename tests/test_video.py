"""The video grabber with a video file written here by OpenCV as its source: a trigger (a footswitch's event, the
API) yields a study holding the right frame; a source that is not there yet is opened once it appears."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.ingest import Event
from edge_app.service import Service
from edge_app.web import create_app, services

pytestmark = pytest.mark.unit

FRAMES, FPS = 12, 24


def _write_video(path: Path) -> None:
    """Frame i is uniform grey 20 * i, with frame i's number drawn as a white bar i pixels wide."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    for i in range(FRAMES):
        frame = np.full((48, 64, 3), 20 * i, np.uint8)
        frame[:8, : 4 * (i + 1)] = 255
        writer.write(frame)
    writer.release()


def _until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _service(tmp_path: Path, source: Path) -> Service:
    """A service reading frames from `source` (not started)."""
    settings = Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1},
            "capture": {"video": {"enabled": True, "source": str(source), "reconnect_s": 0.1}},
        }
    )
    return Service(settings)


def test_a_trigger_stores_the_current_frame_as_an_ultrasound_image(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    video = tmp_path / "loop.avi"
    _write_video(video)
    with _service(tmp_path, video) as service:
        (grabber,) = service.sources
        _until(lambda: grabber.state()["frame"] == FRAMES - 1)  # the file has ended: the last frame stays
        service.ingest.event(Event("capture", {}, "serial:footswitch"))
        (study,) = service.store.list_studies()
        (image,) = study.images
        assert image.source == f"video:{video}" and image.filename.startswith("frame-")
        assert service.store.wait_for(image.id, timeout=30)[0] == "no_model", "a chest model never reads US"
        ds = pydicom.dcmread(service.store.file_path(image.sha256))
        assert ds.Modality == "US" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
        pixels = ds.pixel_array.astype(int)
        assert pixels.shape == (48, 64, 3)
        assert abs(pixels[30:, :, :].mean() - 20 * (FRAMES - 1)) < 4, "the last frame's grey"
        assert (pixels[:8, : 4 * FRAMES - 2] > 200).all() and (pixels[:8, 4 * FRAMES + 2 :] < 240).all()
        assert grabber.state()["captured"] == 1


def test_the_api_capture_button(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video)
    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "capture": {"video": {"enabled": True, "source": str(video)}},
            }
        )
    )
    svc = services.get_from(app)
    _until(lambda: svc.sources[0].state()["frame"] == FRAMES - 1)
    resp = api_client(app).post("/api/v1/capture")
    assert resp.status_code == 202
    (study,) = svc.store.list_studies()
    assert study.images[0].source == f"video:{video}"


def test_capture_without_a_video_source_is_a_conflict(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/capture")
    assert resp.status_code == 409 and "[capture.video]" in resp.get_json()["detail"]


def test_a_grabber_that_appears_later_is_opened(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    video = tmp_path / "later.avi"
    with _service(tmp_path, video) as service:
        (grabber,) = service.sources
        time.sleep(0.3)
        assert grabber.state()["connected"] is False and grabber.state()["frame"] == -1
        assert grabber.capture() is False, "no frame yet: nothing stored"
        _write_video(video)
        _until(lambda: grabber.state()["frame"] >= 0)


def test_live_inference_and_the_mjpeg_preview(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """With infer_every, frames go through the models that read ultrasound (none here: the chest model's result
    list is empty, and says so); the preview streams JPEG frames."""
    video = tmp_path / "live.avi"
    _write_video(video)
    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "capture": {"video": {"enabled": True, "source": str(video), "infer_every": 4, "loop_file": True}},
            }
        )
    )
    client = api_client(app)
    _until(lambda: client.get("/api/v1/video/live").status_code == 200)
    live = client.get("/api/v1/video/live").get_json()
    assert live["frame"] % 4 == 0 and live["models"] == [], "no model here reads US"
    resp = client.get("/api/v1/video.mjpeg", buffered=False)
    assert resp.mimetype == "multipart/x-mixed-replace"
    first = next(iter(resp.response))
    assert first.startswith(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8")
    resp.close()


def test_live_inference_runs_the_model_that_reads_the_feed(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """A video feed stored as modality CR (a digitised radiograph on a frame grabber) goes to the chest model, whose
    input guard says these frames (drawn shapes) are no chest X-ray: not diagnosed, with the reason."""
    video = tmp_path / "cr.avi"
    _write_video(video)
    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "capture": {"video": {"enabled": True, "source": str(video), "infer_every": 1, "modality": "CR"}},
            }
        )
    )
    client = api_client(app)
    _until(lambda: client.get("/api/v1/video/live").status_code == 200)
    (model,) = client.get("/api/v1/video/live").get_json()["models"]
    assert model["model"]["name"] == "cxr-reference" and model["status"] == "outside" and model["findings"] == []
    assert model["reason"].startswith("does not look like a frontal chest X-ray this model was made for")


def test_no_live_inference_or_preview_without_video(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/video/live").status_code == 404
    assert client.get("/api/v1/video.mjpeg").status_code == 404


def test_a_camera_url_s_password_is_never_shown(tmp_path: Path) -> None:
    from edge_app.capture.video import VideoGrabber
    from edge_app.config import VideoCaptureSettings
    from edge_app.ingest import Ingest
    from edge_app.store import Store

    store = Store(tmp_path)
    try:
        for source, shown in (
            ("rtsp://cam:S3cret@10.1.2.3:554/live", "rtsp://cam:***@10.1.2.3:554/live"),
            ("rtsp://cam:S3cret@10.1.2.3/live", "rtsp://cam:***@10.1.2.3/live"),
            ("rtsp://10.1.2.3/live", "rtsp://10.1.2.3/live"),
            ("/dev/video0", "/dev/video0"),
        ):
            grabber = VideoGrabber(VideoCaptureSettings(enabled=True, source=source), Ingest(store))
            assert grabber.state()["detail"] == shown
    finally:
        store.close()
