"""A bundle's own check: its stored reference inputs run through a runner must give its stored reference outputs,
within the bundle's tolerance. Used on a TensorRT engine just built and on a bundle just imported."""

from __future__ import annotations

import numpy as np

from edge_app.bundles.bundle import Bundle
from edge_app.bundles.findings import GuardCheck, guard_check, probabilities
from edge_app.errors import BundleError
from edge_app.runtime.base import Runner

DEFAULT_TOLERANCE = 0.05  # largest probability change against the FP32 reference outputs


def tolerance(bundle: Bundle) -> float:
    """The bundle's fidelity tolerance (max_abs_diff), else DEFAULT_TOLERANCE."""
    fidelity = bundle.manifest.fidelity or {}
    return float(fidelity.get("tolerance", {}).get("max_abs_diff", DEFAULT_TOLERANCE))


def reference_drift(bundle: Bundle, runner: Runner) -> float:
    """The largest probability difference between what `runner` answers on the reference inputs and the
    reference outputs; `BundleError` where the bundle carries none."""
    m = bundle.manifest
    try:
        inputs = np.load(bundle.path / "reference_inputs.npy")
        expected = np.load(bundle.path / "reference_outputs.npy")
    except FileNotFoundError:
        raise BundleError(f"{bundle.path} has no reference inputs/outputs to check a runner against") from None
    got = runner.infer(inputs)[m.output.name]
    n = len(m.labels)
    return float(np.abs(probabilities(m.output, n, got) - probabilities(m.output, n, expected)).max())


def guard_disagreements(bundle: Bundle, runner: Runner, reference: Runner) -> list[str]:
    """The reference inputs on which `runner`'s input guard gives another verdict than `reference`'s (ONNX Runtime
    on the same bundle), each said in words; none where the bundle has no guard."""
    if bundle.manifest.guard is None:
        return []
    inputs = np.load(bundle.path / "reference_inputs.npy")
    got, expected = runner.infer(inputs), reference.infer(inputs)
    out = []
    for i in range(len(inputs)):
        a, b = guard_check(bundle.manifest, got, i), guard_check(bundle.manifest, expected, i)
        assert a is not None and b is not None  # the bundle has a guard
        if a.outside != b.outside:
            out.append(f"input {i}: {_verdict(a)}, expected {_verdict(b)}")
    return out


def _verdict(check: GuardCheck) -> str:
    where = "outside" if check.outside else "inside"
    margin = "not a number" if abs(check.score) >= 1e9 else f"margin {check.score:.3g}"  # guard_check's stand-in
    return f"{where} ({check.component} {margin})"
