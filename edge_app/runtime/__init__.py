"""Inference backends behind one `Runner` interface, chosen by configuration and availability."""

from edge_app.runtime.base import Runner
from edge_app.runtime.select import open_runner

__all__ = ["Runner", "open_runner"]
