"""Inference backends behind one `Runner` interface, chosen by configuration and availability."""

from edge_app.runtime.base import Runner
from edge_app.runtime.select import RUNNER_NAMES, open_runner

__all__ = ["RUNNER_NAMES", "Runner", "open_runner"]
