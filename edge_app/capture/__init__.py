"""Capture sources: the hardware images come from, each behind one small interface, each handing bytes to ingest.

A source knows its hardware and `Ingest`, nothing else: not the worker, the web or the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from edge_app.config import Settings
from edge_app.ingest import Ingest
from edge_app.system.background import Loop


class Source(Loop, Protocol):
    """A loop started and stopped by the service; `state` is what /health shows of it."""

    name: str

    def state(self) -> dict[str, object]: ...


def open_sources(
    settings: Settings, ingest: Ingest, on_frame: Callable[[int, NDArray[np.uint8]], None] | None = None
) -> list[Source]:
    """The sources the configuration enables (not started); `on_frame` gets the video frames to infer live."""
    sources: list[Source] = []
    if settings.capture.dicom.enabled:
        from edge_app.capture.dicom_scp import DicomReceiver

        sources.append(DicomReceiver(settings.capture.dicom, ingest))
    if settings.capture.folder.enabled:
        from edge_app.capture.folder import FolderWatcher

        sources.append(FolderWatcher(settings.capture.folder, ingest))
    if settings.capture.video.enabled:
        from edge_app.capture.video import VideoGrabber

        sources.append(VideoGrabber(settings.capture.video, ingest, on_frame))
    if settings.capture.serial.profiles:
        from edge_app.capture.devices import load_profile
        from edge_app.capture.serial_line import SerialDevice

        sources += [SerialDevice(load_profile(path), ingest) for path in settings.capture.serial.profiles]
    return sources
