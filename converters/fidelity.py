"""The fidelity gate: a converted model against its FP32 original, on real validation images."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from converters.errors import ModelError
from converters.images import batches
from converters.spec import Tolerance
from edge_app.bundles.findings import probabilities
from edge_app.bundles.manifest import InputSpec, OutputSpec


def session(model_path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
        raise ModelError(f"{model_path}: ONNX Runtime cannot load it ({exc})") from None


def predict(
    model_path: Path, spec: InputSpec, output: OutputSpec, n_labels: int, images: NDArray[np.generic]
) -> NDArray[np.float64]:
    """(N, labels) probabilities of a model over preprocessed images."""
    sess = session(model_path)
    fixed = sess.get_inputs()[0].shape[0]  # an original model may have its batch fixed (often at 1)
    rows = [
        probabilities(output, n_labels, np.asarray(sess.run([output.name], {spec.name: x})[0]))
        for x in batches(images, fixed if isinstance(fixed, int) else 16)
    ]
    return np.concatenate(rows, axis=0)


def _auc(y: NDArray[np.int8], score: NDArray[np.float64]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < int(y.sum()) < len(y) else None


def _sens_spec(y: NDArray[np.int8], decision: NDArray[np.bool_]) -> tuple[float | None, float | None]:
    pos, neg = y == 1, y == 0
    sens = float(decision[pos].mean()) if pos.any() else None
    spec = float((~decision[neg]).mean()) if neg.any() else None
    return sens, spec


class GateReport(dict[str, Any]):
    """The fidelity gate's report (a dict, as it is printed and kept in the manifest), and every criterion it
    applies: agreement, probability differences and AUC drop (`compare`), speed-up, INT8 left in the graph."""

    def fail(self, reason: str) -> None:
        self.setdefault("failures", []).append(reason)
        self["passed"] = False

    def check_speedup(self, speedup: float, tolerance: Tolerance, gated: bool) -> None:
        """Record the batch-1 speed-up on this CPU; it decides only where the CPU is what will run the model
        (target onnxruntime). TensorRT's INT8 form is not what a CPU runs fast: reported, not gated."""
        self["speedup_batch1"] = speedup
        self["speedup_gated"] = gated
        if gated and speedup < tolerance.min_speedup:
            self.fail(f"INT8 is not faster: speed-up {speedup:.2f}x < {tolerance.min_speedup}x")

    def check_guard(self, compared: dict[str, Any], tolerance: Tolerance) -> None:
        """Record how the converted model's input guard agrees with the FP32 one (`guard.Probe.compare`); below
        the decision agreement asked of the findings, the guard no longer refuses what it was measured to."""
        self["input_guard"] = compared
        if compared["agreement"] < tolerance.min_agreement:
            self.fail(
                f"input guard: its verdicts agree with the FP32 model's on {compared['agreement']:.4f} of "
                f"{compared['images']} probe images < {tolerance.min_agreement}"
            )

    def check_quantized(self, quantize_nodes: int) -> None:
        if quantize_nodes == 0:
            self.fail("no node is left in INT8: this is an FP32 model, build it as fp32")


def compare(
    labels: tuple[str, ...],
    thresholds: dict[str, float],
    reference: NDArray[np.float64],
    candidate: NDArray[np.float64],
    tolerance: Tolerance,
    truth: dict[str, NDArray[np.int8]] | None = None,
) -> GateReport:
    """The report: decision agreement, probability differences, and AUC/sensitivity/specificity where labels are
    given; `passed` with the `failures` that stop it."""
    thr = np.array([thresholds[label] for label in labels])
    ref_dec, cand_dec = reference >= thr, candidate >= thr
    diff = np.abs(reference - candidate)
    report = GateReport(
        {
            "n_images": int(reference.shape[0]),
            "decision_agreement": float((ref_dec == cand_dec).mean()),
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "per_label": {},
        }
    )
    failures = []
    for j, label in enumerate(labels):
        entry: dict[str, Any] = {
            "decision_agreement": float((ref_dec[:, j] == cand_dec[:, j]).mean()),
            "max_abs_diff": float(diff[:, j].max()),
        }
        if truth is not None and label in truth:
            y = truth[label]
            a_ref, a_cand = _auc(y, reference[:, j]), _auc(y, candidate[:, j])
            s_ref, p_ref = _sens_spec(y, ref_dec[:, j])
            s_cand, p_cand = _sens_spec(y, cand_dec[:, j])
            entry.update(
                auc_reference=a_ref,
                auc_candidate=a_cand,
                auc_diff=None if a_ref is None or a_cand is None else a_cand - a_ref,
                sensitivity_reference=s_ref,
                sensitivity_candidate=s_cand,
                specificity_reference=p_ref,
                specificity_candidate=p_cand,
            )
            if entry["auc_diff"] is not None and -entry["auc_diff"] > tolerance.max_auc_drop:
                failures.append(f"{label}: AUC drops by {-entry['auc_diff']:.4f} > {tolerance.max_auc_drop}")
        report["per_label"][label] = entry
    if report["decision_agreement"] < tolerance.min_agreement:
        failures.append(f"decision agreement {report['decision_agreement']:.4f} < {tolerance.min_agreement}")
    if report["max_abs_diff"] > tolerance.max_abs_diff:
        failures.append(f"max |probability difference| {report['max_abs_diff']:.4f} > {tolerance.max_abs_diff}")
    if report["mean_abs_diff"] > tolerance.mean_abs_diff:
        failures.append(f"mean |probability difference| {report['mean_abs_diff']:.4f} > {tolerance.mean_abs_diff}")
    report["tolerance"] = tolerance.model_dump()
    report["failures"] = failures
    report["passed"] = not failures
    return report


def agreement(
    labels: tuple[str, ...],
    thresholds: dict[str, float],
    shown: dict[str, bool],
    candidate: NDArray[np.float64],
    truth: dict[str, NDArray[np.int8]],
) -> dict[str, Any]:
    """How often the candidate's decisions, as the box would show them (positive: at or above the threshold, and the
    label validated: `shown`), match the ground truth: over every (image, label) with truth, and per label."""
    per_label, agreed, decisions = {}, 0, 0
    for j, label in enumerate(labels):
        if label not in truth:
            continue
        decided = (candidate[:, j] >= thresholds[label]) & shown[label]
        same = decided == truth[label].astype(bool)
        per_label[label] = float(same.mean())
        agreed, decisions = agreed + int(same.sum()), decisions + len(same)
    return {"decisions": decisions, "agreed": agreed, "agreement": agreed / decisions, "per_label": per_label}


def latency(
    model_path: Path,
    input_name: str,
    x: NDArray[np.generic],
    runs: int,
    threads: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """p50/p95 milliseconds of one `run` on `x` after a warm-up, and images per second (`clock` in seconds)."""
    sess = session(model_path, threads)
    for _ in range(max(3, runs // 10)):
        sess.run(None, {input_name: x})
    times = []
    for _ in range(runs):
        t0 = clock()
        sess.run(None, {input_name: x})
        times.append(clock() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "images_per_s": float(len(x) * 1e3 / ms.mean()),
    }


def save_reference_io(
    folder: Path, model_path: Path, input_name: str, output_name: str, inputs: NDArray[np.generic]
) -> None:
    """Store inputs and the FP32 model's outputs in a bundle: any engine built from it is checked against them."""
    outputs = session(model_path).run([output_name], {input_name: inputs})[0]
    np.save(folder / "reference_inputs.npy", inputs)
    np.save(folder / "reference_outputs.npy", np.asarray(outputs, dtype=np.float32))
