"""Benchmark: a Triton hub with dynamic batching vs the box's own runner, with 1, 4 and 16 concurrent clients.

    python tests/benchmarks/triton_throughput.py [--requests 200] [--model BUNDLE]

Exports the bundle (default: the embedded reference) in the python form, serves it with nvidia-pytriton's
tritonserver on 127.0.0.1 (max_batch_size 16, dynamic batching with a 2 ms queue delay), and sends one
preprocessed image per request from N client threads, each with its own TritonRunner (as N boxes would). The same
load is run on the local ONNX Runtime runner shared by the N threads (as one box's threads would). Prints images
per second and p50/p95 latency for each, and the throughput ratio. Both run on this machine's CPUs: the figures
compare the serving paths, not a GPU hub.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from converters.triton_export import ExportOptions, export_triton  # noqa: E402
from edge_app.bundles.bundle import load_bundle  # noqa: E402
from edge_app.config import EMBEDDED_BUNDLE, TritonSettings  # noqa: E402
from edge_app.runtime.base import Runner  # noqa: E402
from edge_app.runtime.onnx import OnnxRuntimeRunner  # noqa: E402
from edge_app.runtime.triton import TritonRunner  # noqa: E402
from support.processes import TritonServer  # noqa: E402


def load(runners: list[Runner], batch: np.ndarray, requests: int) -> tuple[float, list[float]]:
    """Images per second and each request's latency, `requests` spread over one thread per runner."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, requests // len(runners))

    def client(runner: Runner) -> None:
        mine = []
        for _ in range(per_thread):
            started = time.perf_counter()
            runner.infer(batch)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(r,)) for r in runners]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - started), latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model", type=Path, default=EMBEDDED_BUNDLE)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    m = bundle.manifest.input
    shape = (1, m.channels, m.height, m.width) if m.layout == "NCHW" else (1, m.height, m.width, m.channels)
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        export_triton([bundle], Path(tmp) / "repository", ExportOptions(form="python", max_batch=16))
        server = TritonServer(Path(tmp) / "repository", Path(tmp)).start()
        try:
            print(f"{bundle.manifest.name} {bundle.manifest.version}, {args.requests} requests of one image each")
            print("clients  path                 images/s   p50 ms   p95 ms")
            for clients in (1, 4, 16):
                local = OnnxRuntimeRunner(bundle, threads=1)
                local.activate()
                remote = [
                    TritonRunner(bundle, TritonSettings(url=server.url, timeout_s=30), OnnxRuntimeRunner(bundle, 1))
                    for _ in range(clients)
                ]
                for r in remote:
                    r.activate()
                    r.infer(batch)  # connect, warm
                local.infer(batch)
                rates = {}
                for name, runners in (("triton (dynamic batching)", remote), ("local ONNX Runtime", [local] * clients)):
                    rate, latencies = load(runners, batch, args.requests)
                    rates[name] = rate
                    p50, p95 = np.percentile(latencies, [50, 95]) * 1e3
                    print(f"{clients:>7}  {name:<25} {rate:8.1f} {p50:8.1f} {p95:8.1f}")
                assert all(r.name == "triton" for r in remote), "every request ran on the hub"
                ratio = rates["triton (dynamic batching)"] / rates["local ONNX Runtime"]
                print(f"{clients:>7}  ratio triton/local      {ratio:8.2f}")
                for r in [*remote, local]:
                    r.deactivate()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
