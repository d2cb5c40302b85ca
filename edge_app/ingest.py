"""The one way in for every image, whatever brought it: keep it durably, read its header, queue it.

Capture sources and the web hand their bytes here and nothing else; nothing here decodes pixels or runs a model.
An image is on disk and in the database before `submit` returns: that is when a sender may be told it arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO

from edge_app.errors import ImageRejected
from edge_app.imaging.header import generated_header, read_header
from edge_app.store import Added, Store

log = logging.getLogger(__name__)


class Ingest:
    """Stores arriving images and queues them; `on_queued` is called for each image newly queued."""

    def __init__(self, store: Store, on_queued: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_queued = on_queued

    def submit(self, stream: IO[bytes], filename: str, source: str, patient_id: str = "") -> Added | None:
        """Keep one image; None where the stream held no bytes. A file that is no image is kept too, refused with
        the reason; an image already held (the same SOP Instance UID) is acknowledged and not added twice."""
        digest, size = self.store.put_stream(stream)
        if size == 0:
            return None
        try:
            header = read_header(self.store.file_path(digest), filename)
        except ImageRejected as exc:
            added = self.store.add_image(
                digest, size, filename, source, generated_header(), reason=exc.reason, patient_id=patient_id
            )
        else:
            added = self.store.add_image(digest, size, filename, source, header, patient_id=patient_id)
        log.debug(
            "%s from %s: image %d, %s%s",
            filename,
            source,
            added.image_id,
            added.status,
            " (already held)" if added.duplicate else "",
        )
        if added.status == "queued" and not added.duplicate and self.on_queued is not None:
            self.on_queued()
        return added
