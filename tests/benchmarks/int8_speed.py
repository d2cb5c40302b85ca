"""Benchmark: FP32 vs INT8 under ONNX Runtime on this CPU, with the decision agreement on real images.

    python tests/benchmarks/int8_speed.py [BUNDLE_DIR | MODEL.onnx --spec SPEC.toml]
                                          [--calibration DIR --validation DIR]

Defaults: the embedded reference bundle on the NIH sample (train split calibrates, test split validates). Builds
both INT8 forms (tensorrt: symmetric signed, what the Jetson takes; onnxruntime: UInt8 activations, the CPU's
fast path), then prints p50/p95 latency at batch 1, throughput at batch 8, agreement, and the ratios to FP32.
Targets: INT8 at least 1.5x faster than FP32 at batch 1, with decision agreement of at least 0.99.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from converters import fidelity, graph, quantize
from converters.images import load_images
from converters.spec import Calibration, Spec, load_spec
from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE

ROOT = Path(__file__).resolve().parents[2]
NIH = ROOT.parent / "shared" / "data" / "nih-cxr14-sample"


def _nih_split(tmp: Path) -> tuple[Path, Path]:
    with (NIH / "split.csv").open() as fh:
        for row in csv.DictReader(fh):
            folder = tmp / row["split"]
            folder.mkdir(exist_ok=True)
            (folder / row["image"]).symlink_to(NIH / "images" / row["image"])
    return tmp / "train", tmp / "test"


def _bundle_spec(folder: Path) -> Spec:
    m = load_bundle(folder).manifest
    return Spec(
        name=m.name,
        version=m.version,
        task=m.task,
        labels=m.labels,
        thresholds=dict(m.thresholds),
        input=m.input,
        preprocessing=m.preprocessing,
        output=m.output,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, default=EMBEDDED_BUNDLE, help="a bundle folder or an ONNX")
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--calibration", type=Path)
    parser.add_argument("--validation", type=Path)
    parser.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    if args.model.is_dir():
        spec, args.model = _bundle_spec(args.model), args.model / "model.onnx"
    elif args.spec:
        spec = load_spec(args.spec)
    else:
        parser.error("an ONNX model needs --spec")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.calibration is None or args.validation is None:
            args.calibration, args.validation = _nih_split(tmp)
        fp32 = tmp / "fp32.onnx"
        graph.save(graph.simplify(graph.make_batch_dynamic(graph.check(graph.load_model(args.model)))), fp32)
        calibration = load_images(args.calibration, spec.input, spec.preprocessing)
        validation = load_images(args.validation, spec.input, spec.preprocessing)
        n = len(spec.labels)
        thr = np.array([spec.threshold_map()[label] for label in spec.labels])
        reference = fidelity.predict(fp32, spec.input, spec.output, n, validation.tensors)
        rows = []
        for label, target in [
            ("fp32", None),
            ("int8 (tensorrt form)", "tensorrt"),
            ("int8 (onnxruntime form)", "onnxruntime"),
        ]:
            path = fp32
            if target is not None:
                path = tmp / f"{target}.onnx"
                settings = Calibration(method=args.method, target=target)  # type: ignore[arg-type]
                quantize.to_int8(fp32, path, spec.input.name, calibration.tensors, settings, [])
            probs = fidelity.predict(path, spec.input, spec.output, n, validation.tensors)
            agreement = float(((probs >= thr) == (reference >= thr)).mean())
            one = fidelity.latency(path, spec.input.name, validation.tensors[:1], args.runs, args.threads)
            eight = fidelity.latency(path, spec.input.name, validation.tensors[:8], args.runs // 4, args.threads)
            rows.append((label, one, eight, agreement))

    print(
        f"model {args.model.name}; {len(validation.names)} validation and {len(calibration.names)} calibration "
        f"images; {args.threads} threads; calibration {args.method}"
    )
    print(f"{'variant':<26}{'b1 p50 ms':>10}{'b1 p95 ms':>10}{'b8 img/s':>10}{'agreement':>10}{'speed-up':>9}")
    base = rows[0][1]["p50_ms"]
    for label, one, eight, agreement in rows:
        print(
            f"{label:<26}{one['p50_ms']:>10.3f}{one['p95_ms']:>10.3f}{eight['images_per_s']:>10.0f}"
            f"{agreement:>10.4f}{base / one['p50_ms']:>8.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
