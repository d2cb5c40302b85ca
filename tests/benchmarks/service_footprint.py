"""Benchmark: the service's resident memory and idle CPU with one model loaded (Linux, reads /proc).

    python tests/benchmarks/service_footprint.py [IMAGE_DIR] [--images N] [--idle-seconds S]

Starts `edge-app serve` on a free localhost port with a temporary data directory, posts N real images, then
watches the process sit idle. Prints the figures and their ratio to the appliance's targets (600 MB, ~0% CPU).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

TARGET_RSS_MB = 600.0
ROOT = Path(__file__).resolve().parents[2]


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=ROOT.parent / "shared/data/nih-cxr14-sample/images")
    parser.add_argument("--images", dest="count", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    files = sorted(args.images.glob("*"))[: args.count]
    if not files:
        sys.exit(f"no images in {args.images}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "EDGE_APP_STORAGE_DATA_DIR": data_dir, "EDGE_APP_SERVER_PORT": str(port)}
        exe = Path(sys.executable).parent / "edge-app"
        proc = subprocess.Popen([str(exe), "serve"], env=env, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/api/v1"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            rss_start = _status_mb(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            rejected = 0
            for f in files:
                req = urllib.request.Request(f"{base}/studies?filename={f.name}", data=f.read_bytes())
                try:
                    urllib.request.urlopen(req, timeout=60).close()
                except urllib.error.HTTPError as exc:  # 422: an image the model is not for, kept and refused
                    if exc.code != 422:
                        raise
                    rejected += 1
            per_image_ms = (time.perf_counter() - t0) / len(files) * 1e3
            rss_loaded = _status_mb(proc.pid, "VmRSS")
            cpu0, w0 = _cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_pct = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0) * 100.0
            peak = _status_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    print(f"{'figure':<36}{'value':>12}{'target':>10}{'ratio':>8}")
    print(f"{'RSS after start (MB)':<36}{rss_start:>12.1f}{TARGET_RSS_MB:>10.0f}{rss_start / TARGET_RSS_MB:>8.2f}")
    print(
        f"{f'RSS after {len(files)} images (MB)':<36}{rss_loaded:>12.1f}{TARGET_RSS_MB:>10.0f}"
        f"{rss_loaded / TARGET_RSS_MB:>8.2f}"
    )
    print(f"{'peak RSS (MB)':<36}{peak:>12.1f}{TARGET_RSS_MB:>10.0f}{peak / TARGET_RSS_MB:>8.2f}")
    print(f"{f'idle CPU over {args.idle_seconds:.0f} s (% of one core)':<36}{idle_pct:>12.2f}{'~0':>10}{'':>8}")
    print(f"{'POST /studies, mean ms per image':<36}{per_image_ms:>12.1f}")
    print(f"{'images refused (422) of those sent':<36}{rejected:>12d}{len(files):>10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
