"""Benchmark: the service's resident memory, whole (the server and its decoder process), and its idle CPU.

    python tests/benchmarks/service_footprint.py [IMAGE_DIR] [--images N] [--idle-seconds S] [--no-worst]

Starts `edge-app serve` on a free localhost port with a temporary data directory and the default limits, posts N
real images, then every hostile image of the regression set (tests/hostile.py), then the largest images the
default limits accept (grey 16-bit DICOM and PNG, JPEG 2000, colour PNG: each within a few percent of the
decoding budget), then watches the service sit idle. Prints the figures and their ratio to the appliance's
targets (600 MB for the whole service, ~0% CPU). Linux: reads /proc.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

TARGET_RSS_MB = 600.0
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from hostile import HOSTILE  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from appliance import api_headers, free_port, serve  # noqa: E402

from support.dicom import dicom_file  # noqa: E402


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _tree(pid: int) -> list[int]:
    """The process and its children (the decoder process; multiprocessing's resource tracker)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return [pid, *children]


def _tree_mb(pid: int, key: str) -> tuple[float, float]:
    """(the server's, its children's summed) figure for `key`."""
    children = 0.0
    for p in _tree(pid)[1:]:
        try:
            children += _status_mb(p, key)
        except (OSError, KeyError):
            continue
    return _status_mb(pid, key), children


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def worst_accepted(folder: Path) -> list[Path]:
    """The largest images of each kind the default limits accept (max_decode_mb 320, max_pixels 25 M)."""
    rng = np.random.default_rng(0)
    out = []

    def cr(name: str, side: int, j2k: bool) -> None:
        ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        ramp = np.add.outer(np.arange(side), np.arange(side)) % 4096
        arr = (ramp if j2k else rng.integers(0, 4096, (side, side))).astype(np.uint16)
        ds.Rows = ds.Columns = side
        ds.SOPInstanceUID = generate_uid()  # a new image, not RG1 again (the service keeps one copy of each)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        for keyword in ("WindowCenter", "WindowWidth"):  # the percentile window: the costlier path
            if keyword in ds:
                del ds[keyword]
        if j2k:
            from openjpeg.utils import encode_array
            from pydicom.encaps import encapsulate

            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
            ds.PixelData = encapsulate([encode_array(arr, bits_stored=12, use_mct=False)])
            ds["PixelData"].VR = "OB"
        else:
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            ds.PixelData = arr.tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        out.append(folder / name)

    cr("grey16_4570.dcm", 4570, j2k=False)
    cr("grey16_4700_j2k.dcm", 4700, j2k=True)
    Image.fromarray(rng.integers(0, 65535, (4570, 4570), dtype=np.uint16)).save(folder / "grey16_4570.png")
    Image.fromarray(rng.integers(0, 255, (3550, 3550, 3), dtype=np.uint8)).save(folder / "rgb_3550.png")
    out += [folder / "grey16_4570.png", folder / "rgb_3550.png"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=ROOT.parent / "shared/data/nih-cxr14-sample/images")
    parser.add_argument("--images", dest="count", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--no-worst", action="store_true", help="skip the hostile and largest accepted images")
    args = parser.parse_args()
    files = sorted(args.images.glob("*"))[: args.count]
    if not files:
        sys.exit(f"no images in {args.images}")

    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as extra:
        hostile, worst = [], []
        if not args.no_worst:
            for item in HOSTILE:
                (Path(extra) / item.name).write_bytes(item.build())
                hostile.append(Path(extra) / item.name)
            worst = worst_accepted(Path(extra))
        headers = api_headers(data_dir)
        proc = serve(data_dir, port)
        base = f"http://127.0.0.1:{port}/api/v1"
        rows: list[tuple[str, tuple[float, float]]] = []
        outcomes: dict[str, str] = {}

        def post(path: Path) -> int:
            req = urllib.request.Request(
                f"{base}/studies?filename={path.name}", data=path.read_bytes(), headers=headers
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:  # 422: refused, kept
                return exc.code

        try:
            rows.append(("after start", _tree_mb(proc.pid, "VmRSS")))
            t0 = time.perf_counter()
            refused = sum(post(f) != 201 for f in files)
            per_image_ms = (time.perf_counter() - t0) / len(files) * 1e3
            rows.append((f"after {len(files)} images ({refused} refused)", _tree_mb(proc.pid, "VmRSS")))
            for path in hostile:
                outcomes[path.name] = str(post(path))
            if hostile:
                rows.append((f"after {len(hostile)} hostile images", _tree_mb(proc.pid, "VmRSS")))
            for path in worst:
                outcomes[path.name] = str(post(path))
                rows.append((f"peak so far, after {path.name}", _tree_mb(proc.pid, "VmHWM")))
            cpu0, w0 = _cpu_seconds(_tree(proc.pid)), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_pct = (_cpu_seconds(_tree(proc.pid)) - cpu0) / (time.monotonic() - w0) * 100.0
            rows.append(("idle, at the end", _tree_mb(proc.pid, "VmRSS")))
            rows.append(("peak of each process", _tree_mb(proc.pid, "VmHWM")))
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    print(f"{'resident memory (MB)':<44}{'server':>8}{'decoder':>9}{'total':>8}{'target':>8}{'ratio':>7}")
    for name, (server, decoder) in rows:
        total = server + decoder
        print(f"{name:<44}{server:>8.1f}{decoder:>9.1f}{total:>8.1f}{TARGET_RSS_MB:>8.0f}{total / TARGET_RSS_MB:>7.2f}")
    print(f"{f'idle CPU over {args.idle_seconds:.0f} s (% of one core)':<44}{idle_pct:>25.2f}{'~0':>8}")
    print(f"{'POST /studies, mean ms per image':<44}{per_image_ms:>25.1f}")
    if outcomes:
        print("answers: " + ", ".join(f"{name} {code}" for name, code in outcomes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
