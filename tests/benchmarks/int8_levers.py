"""Benchmark: the INT8 levers (bias correction, calibration method chosen per tensor) against the default.

    python tests/benchmarks/int8_levers.py WORK [--target onnxruntime] [--rounds 0] [--variants a,b]

WORK holds a trained network as int8_depthwise.py or int8_xception.py leave it (model.onnx, spec.toml, train/ and
test/ image folders). Each variant is an `edge-convert build --precision int8` of it (train split calibrates,
test split gates); printed: agreement, max difference, CPU speed-up, nodes kept FP32, the gate's verdict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_depthwise import build

LEVERS = {
    "default": "",
    "bias-correction": "bias_correction = true, ",
    "per-tensor": 'method = "per_tensor", ',
    "both": 'method = "per_tensor", bias_correction = true, ',
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--target", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    parser.add_argument("--rounds", type=int, default=0, help="max_fallback_rounds (0: the first try only)")
    parser.add_argument("--variants", default=",".join(LEVERS))
    args = parser.parse_args()
    spec = args.work / "spec.toml"
    print(f"{'variant':<16} {'agreement':>9} {'max diff':>9} {'speed-up':>9}  gate", flush=True)
    for name in args.variants.split(","):
        extra = f'calibration = {{ {LEVERS[name]}target = "{args.target}", max_fallback_rounds = {args.rounds} }}\n'
        r = build(args.work, args.work / "model.onnx", spec, f"{name}-{args.target}-r{args.rounds}", extra,
                  args.work / "train", args.work / "test")  # fmt: skip
        kept = len(r.get("nodes_kept_fp32", []))
        speedup = r.get("speedup_batch1", np.nan)
        print(
            f"{name:<16} {r['decision_agreement']:>9.3f} {r['max_abs_diff']:>9.3f} {speedup:>8.2f}x"
            f"  {'passed' if r['passed'] else 'refused'} ({kept} node(s) kept FP32)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
