"""What a finished image sends, and to whom: the SR and the Secondary Capture of each model's result, stored as
files and queued in the outbox for each destination."""

from __future__ import annotations

import logging

from edge_app.bundles.findings import Diagnosis
from edge_app.config import OutputSettings
from edge_app.outputs.documents import findings_report, heatmap_capture
from edge_app.store import Job, Store

log = logging.getLogger(__name__)


class Outbox:
    """Queues results for the configured destinations; the `Sender` sends them."""

    def __init__(self, store: Store, settings: OutputSettings) -> None:
        self.store = store
        self.settings = settings

    def queue(self, job: Job, diagnoses: list[tuple[str, Diagnosis]]) -> int:
        """Queue every diagnosed result of an image (bundle sha256, diagnosis); return how many items."""
        items: list[tuple[str, str, str]] = []
        for bundle_sha256, d in diagnoses:
            if d.status != "ok":
                continue
            findings = [f.as_dict() for f in d.findings]
            documents = {"sr": self.store.put_file(findings_report(job.header, d.model, bundle_sha256, findings))}
            if d.heatmaps and d.preview is not None:  # the PACS gets the most probable finding's heatmap
                capture = heatmap_capture(job.header, d.preview, d.heatmaps[0].values, d.heatmaps[0].label)
                documents["sc"] = self.store.put_file(capture)
            for destination in self.settings.destinations:
                items += [(str(destination), kind, documents[kind]) for kind in destination.send if kind in documents]
        if items:
            self.store.enqueue_outputs(job.image_id, items)
        return len(items)
