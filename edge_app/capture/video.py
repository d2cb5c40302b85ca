"""The ultrasound video grabber (OpenCV `VideoCapture`): a V4L2 device (a USB HDMI grabber), or any file or URL
OpenCV opens. The latest frame is kept; on a `capture` event (a footswitch, the API, the tablet's button) it
becomes a study: written as a DICOM Ultrasound image with pydicom and handed to ingest. When the grabber goes
away it is opened again every `reconnect_s` seconds."""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray

from edge_app.config import VideoCaptureSettings
from edge_app.ingest import Event, Ingest
from edge_app.system.background import Background

log = logging.getLogger(__name__)
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


class VideoGrabber:
    """Reads frames while started; `capture()` turns the current one into a study."""

    name = "video"

    def __init__(
        self,
        settings: VideoCaptureSettings,
        ingest: Ingest,
        on_frame: Callable[[int, NDArray[np.uint8]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.on_frame = on_frame  # every `infer_every`th frame (live inference), where configured
        self._frame: NDArray[np.uint8] | None = None  # RGB
        self._frame_number = -1
        self._lock = threading.Lock()
        self._loop_thread = Background("edge-video", self._read)
        self._stopping = self._loop_thread.stopping
        self.connected = False
        self.captured = 0
        ingest.on_capture(self._on_capture)

    def start(self) -> None:
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "connected": self.connected,
            "detail": _without_password(self.settings.source),
            "frame": self._frame_number,
            "captured": self.captured,
        }

    def latest(self) -> tuple[int, NDArray[np.uint8] | None]:
        """The number and RGB pixels of the newest frame (None before the first)."""
        with self._lock:
            return self._frame_number, self._frame

    def _open(self) -> Any:
        import cv2

        source = self.settings.source
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        return capture if capture.isOpened() else None

    def _read(self) -> None:
        while not self._stopping.is_set():
            capture = self._open()
            if capture is None:
                self.connected = False
                self._stopping.wait(self.settings.reconnect_s)
                continue
            self.connected = True
            fps = float(capture.get(5) or 0)  # CAP_PROP_FPS: a file is played at its own pace, a device paces itself
            period = 1.0 / fps if fps > 0 and not self.settings.source.startswith("/dev/") else 0.0
            number = 0
            try:
                while not self._stopping.is_set():
                    started = time.monotonic()
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                    with self._lock:
                        self._frame, self._frame_number = rgb, number
                    every = self.settings.infer_every
                    if self.on_frame is not None and every and number % every == 0:
                        self.on_frame(number, rgb)
                    number += 1
                    self._stopping.wait(max(0.0, period - (time.monotonic() - started)))
            finally:
                capture.release()
            if self.settings.loop_file and not self.settings.source.startswith("/dev/"):
                continue
            self.connected = False
            if not self._stopping.is_set():
                log.info("video source %s ended or went away: reopening", self.settings.source)
                self._stopping.wait(self.settings.reconnect_s)

    def _on_capture(self, event: Event) -> None:
        self.capture(event.source)

    def capture(self, trigger: str = "api") -> bool:
        """Make a study of the current frame; False where there is none yet."""
        number, frame = self.latest()
        if frame is None:
            log.warning("capture from %s: no video frame yet", trigger)
            return False
        data = frame_to_dicom(frame, self.settings.modality)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        try:
            self.ingest.submit(io.BytesIO(data), f"frame-{stamp}-{number}.dcm", f"video:{self.settings.source}")
        except OSError as exc:  # the disk guard, or the disk itself: this capture is lost, said in the log
            log.error("capture from %s: frame %d not stored: %s", trigger, number, exc.strerror or exc)
            return False
        self.captured += 1
        return True


def frame_to_dicom(rgb: NDArray[np.uint8], modality: str = "US") -> bytes:
    """One RGB frame as a DICOM Ultrasound Image (new study, series and instance UIDs)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels.utils import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType = modality, "DV"  # digitized video
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientID, ds.PatientName = "", ""
    ds.Manufacturer, ds.ImageType = "edge-app video capture", ["DERIVED", "SECONDARY"]
    set_pixel_data(ds, rgb, "RGB", 8)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _without_password(source: str) -> str:
    """A camera URL as it may be shown (rtsp://user:secret@host/ -> rtsp://user:***@host/)."""
    parts = urlsplit(source)
    if parts.password is None:
        return source
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
