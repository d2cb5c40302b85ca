"""The tablet's view of an image no model has decoded (none reads it, one refused it from its header, or the worker
is down and it waits): its 8-bit preview, decoded in a contained decoder process within the same limits as a
diagnosis, so that every image that decodes can be looked at whatever became of it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_app.config import ImagingSettings
from edge_app.errors import ImageRejected
from edge_app.imaging import DecodeLimits
from edge_app.imaging.decode import FullDepth
from edge_app.imaging.encode import jpeg
from edge_app.imaging.sandbox import DecoderPool
from edge_app.store import Image, Store

_REFUSALS_KEPT = 1000  # views refused in this process, remembered: a few bytes each


class Views:
    """Makes views in `decoder`'s processes (the worker's, where this process has one) or in a pool of its own,
    started at the first view asked for (a front that never needs one starts no process)."""

    def __init__(self, store: Store, settings: ImagingSettings, decoder: DecoderPool | None = None) -> None:
        self.store = store
        self.settings = settings
        self._decoder = decoder
        self._own: DecoderPool | None = None
        self._lock = threading.Lock()
        self._refused: dict[int, ImageRejected] = {}  # by image id, the oldest first

    def pixels(self, path: Path, source: str) -> NDArray[np.uint8]:
        """The view of a stored file; `ImageRejected` where it does not decode."""
        return self._pool().view(path, source)

    def make(self, image: Image) -> bytes:
        """The JPEG view of an image that has none, kept with it; `ImageRejected` where it does not decode, said
        again without decoding it each time it is asked for (an image no model decoded: a study page opened again)."""
        refused = self._refused.get(image.id)
        if refused is not None:
            raise refused
        try:
            view = jpeg(self.pixels(self.store.file_path(image.sha256), f"image {image.id}"))
        except ImageRejected as exc:
            with self._lock:
                if len(self._refused) >= _REFUSALS_KEPT:
                    self._refused.pop(next(iter(self._refused)))
                self._refused[image.id] = exc
            raise
        self.store.set_view(image.id, view)
        return view

    def full_depth(self, image: Image) -> FullDepth:
        """The diagnostic view's values (a greyscale DICOM's full bit depth), decoded now, kept nowhere: asked for
        by a clinician, at most a few a day. `ImageRejected` for an image that has none."""
        return self._pool().full_depth(self.store.file_path(image.sha256), f"image {image.id}")

    def _pool(self) -> DecoderPool:
        if self._decoder is not None:
            return self._decoder
        with self._lock:
            if self._own is None:
                s = self.settings
                limits = DecodeLimits(max_pixels=s.max_pixels, max_decode_mb=s.max_decode_mb, frame=s.frame)
                self._own = DecoderPool(limits, workers=1, timeout_s=s.decode_timeout_s)
            return self._own

    def close(self) -> None:
        """Stop the pool this made for itself, if any (a shared one is its owner's to stop)."""
        with self._lock:
            if self._own is not None:
                self._own.close()
                self._own = None
