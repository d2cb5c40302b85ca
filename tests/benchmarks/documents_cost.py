"""Benchmark: what one image's DICOM documents (the TID 1500 SR and the heatmap SC) cost to make.

    python tests/benchmarks/documents_cost.py [--images 40] [--profile]

Starts a `Service` on a scratch data directory with the reference bundle, stores pydicom-data's 1955x1841 CR and
waits for its result and view; then drafts its documents as the outbox does (`Outbox._drafts`: the stored header,
the findings, the 1024-pixel view and the heatmap, what the documents process is given) and times
`documents.make` on them in this process, `--images` times after one untimed run (the imports, what is made once
per model). Prints the milliseconds per image, wall and this thread's CPU time (median and p95: on a machine
shared with other jobs, the CPU time is the steadier of the two); `--profile` adds cProfile's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from edge_app.config import Settings  # noqa: E402
from edge_app.outputs import documents  # noqa: E402
from edge_app.outputs.outbox import Outbox  # noqa: E402
from edge_app.service import Service  # noqa: E402
from support.dicom import dicom_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, Service(Settings.model_validate({"storage": {"data_dir": work}})) as on:
        drafts = _drafts(on)
    documents.make(drafts)
    wall, cpu = [], []
    profile = cProfile.Profile() if args.profile else None
    for _ in range(args.images):
        started, used = time.perf_counter(), time.thread_time()
        if profile is not None:
            profile.enable()
        documents.make(drafts)
        if profile is not None:
            profile.disable()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - used) * 1000)
    print(f"documents of one image ({len(drafts[0].findings)} findings; an SR and an SC), over {args.images}:")
    for name, times in (("wall", wall), ("CPU", cpu)):
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * len(times)))]
        print(f"  {name}: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return 0


def _drafts(service: Service) -> list[documents.Draft]:
    """The drafts of the CR's result, once it and the image's view are recorded."""
    store = service.store
    with dicom_file("RG1_UNCR.dcm").open("rb") as stream:
        added = service.ingest.submit(stream, "rg1.dcm", "api")
    assert added is not None
    deadline = time.monotonic() + 120
    while True:
        image = store.get_study(added.study_uid).image(added.image_id)
        assert image is not None
        results = [r.id for r in image.results if r.status == "ok"]
        if results and image.view_sha256 is not None:
            break
        if time.monotonic() > deadline:
            sys.exit("no result within 120 s")
        time.sleep(0.1)
    store.documents_due(added.image_id, results)  # as the worker notes them where destinations are set
    due = store.next_documents()
    assert due is not None
    outbox = Outbox(store, service.settings.outputs, manifest_of=service.lifecycle.manifest_of)
    return outbox._drafts(due)


if __name__ == "__main__":
    sys.exit(main())
