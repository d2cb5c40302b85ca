"""The store: the only database writer (SQLite) and the content-addressed file store."""

from edge_app.store.db import Added, Backlog, Job, ModelResult, OutboxItem, Outcome, Store
from edge_app.store.rows import Image, ImageStatus, Result, Study

__all__ = [
    "Added",
    "Backlog",
    "Image",
    "ImageStatus",
    "Job",
    "ModelResult",
    "OutboxItem",
    "Outcome",
    "Result",
    "Store",
    "Study",
]
