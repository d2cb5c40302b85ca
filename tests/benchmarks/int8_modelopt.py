"""Benchmark: NVIDIA ModelOpt's ONNX INT8 post-training quantization, measured as the fidelity gate measures ours.

    python tests/benchmarks/int8_modelopt.py WORK OUT [--graphs project,original] [--methods entropy,max]
        [--high-precision fp32] [--runs 30]

WORK holds a trained network as int8_xception.py leaves it (model.onnx, spec.toml, train/ and test/ image folders);
it is only read. OUT (a folder, made if missing) receives the FP32 graphs handed to ModelOpt and its INT8 models.
Each graph is quantized by `modelopt.onnx.quantization.quantize` (calibrated on CPU on the train split, preprocessed
as the converter does) once per calibration method: `project` is the FP32 graph `edge-convert build` would quantize
(batch made dynamic, onnxslim, BatchNorm chains folded), `original` is model.onnx as given. ModelOpt's default
high-precision type is fp16 (for TensorRT); fp32 keeps the comparison on ONNX Runtime's CPU provider fair.

Printed per variant: the time quantization took, the decision agreement at the spec's thresholds and the largest
probability difference against the original FP32 model on the test split, and the batch-1 CPU speed-up (median of
--runs runs, every model in turn) over the project's FP32 graph, which is what the gate compares INT8 with.

It needs nvidia-modelopt[onnx] (its own virtual environment: it pulls in torch and onnxruntime-gpu, whose CPU
provider is used here) with this project installed into it (`pip install --no-deps -e .`, plus pillow and
opencv-python-headless). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from converters import build, fidelity, graph
from converters.images import load_images
from converters.spec import Spec, load_spec


def prepared(work: Path, out: Path, spec: Spec) -> dict[str, Path]:
    """The FP32 graphs handed to ModelOpt, written into `out` (ModelOpt writes beside its input)."""
    original = graph.load_model(work / "model.onnx")
    graph.save(original, out / "original.onnx")
    model = graph.simplify(graph.make_batch_dynamic(graph.check(graph.copy(original))))
    model, note = build._clean(model, spec.input)
    print(f"project graph: {note}", flush=True)
    graph.save(model, out / "project.onnx")
    return {"original": out / "original.onnx", "project": out / "project.onnx"}


def quantize(fp32: Path, target: Path, calibration: np.ndarray, method: str, high_precision: str) -> float:
    """ModelOpt's INT8 QDQ model of `fp32` at `target`, calibrated on CPU; the seconds it took."""
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    start = time.perf_counter()
    modelopt_quantize(
        onnx_path=str(fp32),
        quantize_mode="int8",
        calibration_data=calibration,
        calibration_method=method,
        calibration_eps=["cpu"],
        high_precision_dtype=high_precision,
        output_path=str(target),
        log_level="WARNING",
    )
    return time.perf_counter() - start


def latencies(models: list[Path], input_name: str, x: np.ndarray, runs: int) -> list[float]:
    """Median milliseconds of one run of each model on `x`, the models taking turns (a shared machine's load
    falls on all of them alike)."""
    sessions = [fidelity.session(model) for model in models]
    for sess in sessions:
        for _ in range(3):
            sess.run(None, {input_name: x})
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for sess, kept in zip(sessions, times, strict=True):
            start = time.perf_counter()
            sess.run(None, {input_name: x})
            kept.append(time.perf_counter() - start)
    return [float(np.median(kept)) * 1e3 for kept in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--graphs", default="project,original")
    parser.add_argument("--methods", default="entropy,max", help="ModelOpt's calibration methods (entropy: default)")
    parser.add_argument("--high-precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--runs", type=int, default=30, help="batch-1 latency runs per model")
    args = parser.parse_args()
    spec = load_spec(args.work / "spec.toml")
    train = load_images(args.work / "train", spec.input, spec.preprocessing).tensors
    test = load_images(args.work / "test", spec.input, spec.preprocessing).tensors
    args.out.mkdir(parents=True, exist_ok=True)
    graphs = prepared(args.work, args.out, spec)
    n = len(spec.labels)
    reference = fidelity.predict(graphs["original"], spec.input, spec.output, n, test)
    print(f"{len(train)} calibration images, {len(test)} test images", flush=True)
    rows = []
    for name in args.graphs.split(","):
        for method in args.methods.split(","):
            target = args.out / f"{name}-{method}-{args.high_precision}.int8.onnx"
            seconds = quantize(graphs[name], target, train, method, args.high_precision)
            candidate = fidelity.predict(target, spec.input, spec.output, n, test)
            report = fidelity.compare(spec.labels, spec.threshold_map(), reference, candidate, spec.tolerance)
            rows.append((name, method, seconds, report, target))
    p50 = latencies([graphs["project"], *(row[4] for row in rows)], spec.input.name, test[:1], args.runs)
    print(f"project FP32 graph p50 {p50[0]:.1f} ms")
    print(f"{'graph':<9} {'method':<8} {'seconds':>8} {'agreement':>9} {'max diff':>9} {'p50 ms':>7} {'speed-up':>8}")
    for (name, method, seconds, report, _), ms in zip(rows, p50[1:], strict=True):
        print(
            f"{name:<9} {method:<8} {seconds:>8.0f} {report['decision_agreement']:>9.3f} "
            f"{report['max_abs_diff']:>9.3f} {ms:>7.1f} {p50[0] / ms:>7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
