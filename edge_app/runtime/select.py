"""Choose a runner from configuration and what this machine has, and say why."""

from __future__ import annotations

import logging

from edge_app.bundle import Bundle
from edge_app.errors import RuntimeUnavailable
from edge_app.runtime.base import Runner
from edge_app.runtime.onnx import OnnxRuntimeRunner

log = logging.getLogger(__name__)

# "auto" takes the fastest backend this machine can run. The TensorRT runner (Jetson) arrives with the conversion
# issue: it registers here, and "auto" tries it before ONNX Runtime.
RUNNER_NAMES = ("auto", "onnxruntime")


def open_runner(bundle: Bundle, preference: str = "auto", threads: int = 0) -> Runner:
    """Return an activated runner for `bundle`; raise `RuntimeUnavailable` if the preferred one cannot run."""
    if preference not in RUNNER_NAMES:
        raise RuntimeUnavailable(f"unknown runner {preference!r}; choose one of {', '.join(RUNNER_NAMES)}")
    runner = OnnxRuntimeRunner(bundle, threads=threads)
    reason = "asked for" if preference == "onnxruntime" else "the default on a CPU-only machine"
    runner.activate()
    log.info("runner %s for %s %s (%s)", runner.name, bundle.manifest.name, bundle.manifest.version, reason)
    return runner
