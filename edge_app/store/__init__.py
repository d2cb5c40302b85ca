"""The store: the only database writer (SQLite) and the content-addressed file store."""

from edge_app.store.db import Added, Backlog, ImageStatus, Job, ModelResult, OutboxItem, Outcome, Store

__all__ = ["Added", "Backlog", "ImageStatus", "Job", "ModelResult", "OutboxItem", "Outcome", "Store"]
