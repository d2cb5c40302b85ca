"""The store: the only database writer (SQLite) and the content-addressed file store."""

from edge_app.store.db import IMAGE_STATUSES, Added, Job, ModelResult, OutboxItem, Outcome, Store

__all__ = ["IMAGE_STATUSES", "Added", "Job", "ModelResult", "OutboxItem", "Outcome", "Store"]
