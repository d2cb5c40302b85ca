"""The retention policy: every few hours, the files of images older than `storage.retention_days` are removed;
their rows, results, heatmaps and reviews stay (the worklist and the reports still tell what was found)."""

from __future__ import annotations

import datetime as dt
import logging

from edge_app.store import Store
from edge_app.system.background import Periodic
from edge_app.system.clock import utc_now

log = logging.getLogger(__name__)
EVERY_S = 6 * 3600


class Retention(Periodic):
    def __init__(self, store: Store, days: int, every_s: float = EVERY_S) -> None:
        super().__init__("edge-retention", every_s)
        self.store, self.days = store, days

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Remove what is due now; return how many images' files were removed."""
        cutoff = (now or utc_now()) - dt.timedelta(days=self.days)
        removed = self.store.purge_images(cutoff.isoformat(timespec="milliseconds"))
        if removed:
            log.info("retention: the files of %d image(s) received before %s removed", removed, cutoff.date())
            self.store.audit("system", "retention.purge", detail=f"{removed} image(s) before {cutoff.isoformat()}")
        return removed
