"""Live inference on the ultrasound feed: every Nth frame goes through the models that read it, and the newest
result is kept for the tablet. Nothing is stored: a frame becomes a study only when someone captures it."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.imaging.header import ImageHeader
from edge_app.inference.registry import Registry
from edge_app.system.background import Background

log = logging.getLogger(__name__)


class LiveInference:
    """Diagnoses the newest frame handed to it, one at a time, dropping frames it has no time for."""

    def __init__(self, registry: Registry, modality: str) -> None:
        self.registry = registry
        self.header = ImageHeader("unknown", "", "", "", modality=modality.upper())
        self._frame: tuple[int, NDArray[np.uint8]] | None = None
        self._latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._frame_at_hand = threading.Lock()
        self._loop_thread = Background("edge-live", self._loop)

    def submit(self, number: int, rgb: NDArray[np.uint8]) -> None:
        """A new frame; an older one not yet taken is dropped."""
        with self._lock:
            self._frame = (number, rgb)
        self._loop_thread.wake()

    def start(self) -> None:
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def latest(self) -> dict[str, Any] | None:
        """The newest result: the frame's number, when, and each model's findings."""
        with self._lock:
            return self._latest

    def _loop(self) -> None:
        stopping = self._loop_thread.stopping
        while not stopping.is_set():
            self._loop_thread.sleep(1.0)
            with self._lock:
                taken, self._frame = self._frame, None
            if taken is None or stopping.is_set():
                continue
            try:
                with self._frame_at_hand:
                    self._diagnose(*taken)
            except Exception:  # one frame's failure costs that frame
                log.exception("live inference on frame %d", taken[0])

    @contextmanager
    def between_frames(self) -> Iterator[None]:
        """Hold live inference between two frames (the one at hand finished first): to change the models."""
        with self._frame_at_hand:
            yield

    def _diagnose(self, number: int, rgb: NDArray[np.uint8]) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        models = []
        for diagnoser in self.registry.route(self.header):
            d = diagnoser.diagnose(buf.getvalue(), source=f"video frame {number}")
            models.append(
                {
                    "model": d.model,
                    "status": d.status,
                    "reason": d.reason,
                    "findings": [f.as_dict() for f in d.findings],
                }
            )
        with self._lock:
            self._latest = {"frame": number, "at": time.time(), "models": models}
