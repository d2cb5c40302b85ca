"""Benchmark: the appliance's two processes (`serve --no-worker` and `worker`, as its units run them): resident
memory of each, and their idle CPU while each wakes the other.

    python tests/benchmarks/split_footprint.py [IMAGE_DIR] [--images N] [--idle-seconds S]

Posts N NIH PNGs through the front (each answered once the worker in the other process has its result), then
watches both sit idle. The one-process figures are service_footprint.py's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from appliance import EDGE_APP, api_headers, environ, free_port, serve  # noqa: E402
from service_footprint import _cpu_seconds, _tree, _tree_mb  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=ROOT.parent / "shared/data/nih-cxr14-sample/images")
    parser.add_argument("--images", dest="count", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    files = sorted(args.images.glob("*.png"))[: args.count]
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        headers = api_headers(data)
        env = environ(data, port, {"EDGE_APP_WORKER_IDLE_S": "5"})
        worker = subprocess.Popen([str(EDGE_APP), "worker"], env=env, stderr=subprocess.DEVNULL)
        front = serve(data, port, {"EDGE_APP_WORKER_IDLE_S": "5"}, no_worker=True)
        try:
            time.sleep(3)
            latencies = []
            for path in files:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v1/studies?filename={path.name}", path.read_bytes(), headers=headers
                )
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=120) as resp:
                    assert resp.status == 201, resp.status
                latencies.append((time.perf_counter() - t0) * 1e3)
            mem = {"front": _tree_mb(front.pid, "VmRSS"), "worker": _tree_mb(worker.pid, "VmRSS")}
            pids = [*_tree(front.pid), *_tree(worker.pid)]
            cpu0, w0 = _cpu_seconds(pids), time.monotonic()
            time.sleep(args.idle_seconds)
            idle = (_cpu_seconds(pids) - cpu0) / (time.monotonic() - w0) * 100.0
        finally:
            for proc in (front, worker):
                proc.terminate()
                proc.wait(timeout=60)
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"{len(files)} images through the front and a worker process: POST to result p50 {p50:.0f} ms, p95 {p95:.0f}")
    for name, (own, child) in mem.items():
        print(f"resident memory, {name:<7} {own:7.1f} MB process, {child:7.1f} MB its decoder, {own + child:7.1f} MB")
    print(f"idle CPU of both over {args.idle_seconds:.0f} s: {idle:.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
