"""Benchmark: the input guard on images it was not fitted on, through the service's own diagnoser, and its cost.

    python tests/benchmarks/input_guard.py [BUNDLE_DIR] [--seed N] [--threads N]

Defaults: the embedded reference bundle. The non-target images are tests/ood_samples.py's (other radiographs,
CT/MR/NM/US, photographs and documents, noise, blank and gradient images, chest X-rays turned 90/180/270 degrees or
inverted); the target images are the NIH test split (never used to fit) and pydicom-data's chest CR in each of its
transfer syntaxes. Each file goes through decode, preprocessing and one inference, as on the box. Prints the share
refused per kind, the totals, and the model's median batch-1 inference time with and without the guard's nodes.
Targets: at least 99 % of non-target images refused, at most 2 % of real frontal chest X-rays, at most 10 % more
inference time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from ood_samples import DEFAULT_NIH_DIR, chest_samples, outside_samples  # noqa: E402

from converters import fidelity, graph, guard  # noqa: E402
from edge_app.bundles.bundle import load_bundle  # noqa: E402
from edge_app.config import EMBEDDED_BUNDLE  # noqa: E402
from edge_app.inference.diagnoser import Diagnoser  # noqa: E402
from edge_app.runtime import open_runner  # noqa: E402


def refusals(diagnoser: Diagnoser, samples: list) -> dict[str, list[bool]]:  # type: ignore[type-arg]
    """Per kind, whether each image was refused: by the guard, or by the decoder (the sets hold only files the
    decoder reads, so none is)."""
    out: dict[str, list[bool]] = defaultdict(list)
    for sample in samples:
        diagnosis = diagnoser.diagnose(sample.data, source=sample.name)
        if diagnosis.status == "failed":
            raise SystemExit(f"{sample.name}: {diagnosis.reason}")
        out[sample.kind].append(diagnosis.status != "ok")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, nargs="?", default=EMBEDDED_BUNDLE)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic non-target images")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: every core, the default)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    if bundle.manifest.guard is None:
        raise SystemExit(f"{args.bundle} has no input guard")
    nih = DEFAULT_NIH_DIR if DEFAULT_NIH_DIR.is_dir() else None
    runner = open_runner(bundle, threads=args.threads)
    runner.activate()
    diagnoser = Diagnoser(bundle, runner)
    try:
        outside = refusals(diagnoser, outside_samples(seed=args.seed, nih_dir=nih))
        chest = refusals(diagnoser, chest_samples(nih_dir=nih))
    finally:
        diagnoser.close()
    print(f"{bundle.manifest.name} {bundle.manifest.version}: input guard on images it was not fitted on\n")
    print(f"{'kind':<28}{'images':>7}{'refused':>9}")
    for title, table in (("not what the model reads", outside), ("frontal chest X-rays", chest)):
        print(f"-- {title}")
        for kind, refused in table.items():
            print(f"{kind:<28}{len(refused):>7}{np.mean(refused):>9.1%}")
        every = [r for refused in table.values() for r in refused]
        print(f"{'all':<28}{len(every):>7}{np.mean(every):>9.1%}  ({sum(every)} refused)")

    x = np.load(bundle.path / "reference_inputs.npy")[:1]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        graph.save(guard.strip(graph.load_model(bundle.model_path)), plain)
        times: dict[str, list[float]] = defaultdict(list)
        for _ in range(5):  # interleaved, the best of five: the machine's other work shows less
            for name, path in (("without", plain), ("with", bundle.model_path)):
                runs = fidelity.latency(path, bundle.manifest.input.name, x, runs=2000, threads=args.threads)
                times[name].append(runs["p50_ms"])
    before, after = min(times["without"]), min(times["with"])
    threads = f"{args.threads} thread(s)" if args.threads else "every core"
    print(f"\ninference at batch 1 on {threads}: {before:.3f} ms without the guard, {after:.3f} ms with it: ", end="")
    print(f"+{(after / before - 1) * 100:.1f} %")


if __name__ == "__main__":
    main()
