"""What a recorded result sends, and to whom: the SR and the Secondary Capture of each diagnosed result, made
from what the store holds (the source image's header, findings, the most probable finding's heatmap, the image's
view) and the codes of the bundle that made it, stored as files and queued in the outbox for each destination."""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Callable

import numpy as np

from edge_app.bundles.manifest import Manifest
from edge_app.config import OutputSettings
from edge_app.outputs.documents import Origin, encode, findings_report, heatmap_capture, source_header
from edge_app.store import Job, Store

log = logging.getLogger(__name__)


class Outbox:
    """Queues recorded results for the configured destinations; `on_queued` wakes the `Sender`; `manifest_of`
    finds the manifest of the bundle that made a result (its findings' codes)."""

    def __init__(
        self,
        store: Store,
        settings: OutputSettings,
        on_queued: Callable[[], None] | None = None,
        manifest_of: Callable[[str], Manifest | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_queued = on_queued
        self.manifest_of = manifest_of

    def queue(self, job: Job, result_ids: list[int]) -> int:
        """Queue the documents of an image's recorded results (those diagnosed); return how many items."""
        items: list[tuple[str, str, str]] = []
        view: np.ndarray | None = None
        path = self.store.file_path(job.sha256) if job.header.format == "dicom" else None
        source = source_header(path, job.header, self.store.patient_of_image(job.image_id))
        for result_id in result_ids:
            result = self.store.get_result(result_id)
            if result.status != "ok":
                continue
            origin = Origin(
                source,
                dt.datetime.fromisoformat(result.created_at),
                self.store.result_ordinal(result_id),
                result.model,
                result.bundle_sha256,
            )
            documents: dict[str, str] = {}
            capture = None
            if (top := result.heatmap()) is not None:  # the PACS gets the most probable finding's heatmap
                view = view if view is not None else _pixels(self.store.image_view(job.image_id))
                if view is not None:
                    values = _pixels(self.store.read_file(top.sha256))
                    assert values is not None
                    capture = heatmap_capture(origin, view, values.astype(np.float32) / np.float32(255), top.label)
                    documents["sc"] = self.store.put_file(encode(capture))
            manifest = self.manifest_of(result.bundle_sha256) if self.manifest_of is not None else None
            codes = manifest.codes if manifest is not None else {}
            documents["sr"] = self.store.put_file(encode(findings_report(origin, result.findings, codes, capture)))
            for destination in self.settings.destinations:
                items += [(str(destination), kind, documents[kind]) for kind in destination.send if kind in documents]
        if items:
            self.store.enqueue_outputs(job.image_id, items)
            if self.on_queued is not None:
                self.on_queued()
        return len(items)


def _pixels(encoded: bytes | None) -> np.ndarray | None:
    """A stored PNG or JPEG (a heatmap, an image's view) as 8-bit pixels."""
    from PIL import Image

    if encoded is None:
        return None
    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img, dtype=np.uint8)
