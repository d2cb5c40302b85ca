"""The model's monitoring at scale: a store of 100,000 results (5 findings each, 4 % refused by the guard) over a year,
from 3 stations (each one's drift judged on its latest images), of both sexes and all ages, with 20,000 of them
reviewed; then the "Model performance" page and /api/v1/health, each timed 20 times as the monitor's loop leaves them
(the page shows its last round), through the real app of a front service. The rows are written with SQL in bulk (the
store's API fsyncs each image: hours for 100,000); they are the rows the worker and the review form write. Target:
p95 under 100 ms each.

    python tests/benchmarks/monitoring.py [--results 100000 --reviews 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge_app.bundles.bundle import load_bundle
from edge_app.config import Settings
from edge_app.service import Service
from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from edge_app.web import create_app

LABELS = ("Abnormal", "Cardiomegaly", "Effusion", "Emphysema", "Infiltration")


def fill(data_dir: Path, results: int, reviews: int, bundle_sha256: str) -> None:
    rng = random.Random(24)
    store = Store(data_dir)
    model = json.dumps({"name": "cxr-reference", "version": "1.1.1", "precision": "fp32", "runner": "onnxruntime"})
    with store.transaction() as db:
        db.execute("INSERT INTO studies (id, uid, created_at, source) VALUES (1, '1.2.9', '2025-01-01T00:00:00', 'b')")
        db.execute("INSERT INTO series (id, study_id, uid, created_at) VALUES (1, 1, '1.2.9.1', '2025-01-01T00:00:00')")
        images, rows = [], []
        for n in range(1, results + 1):
            at = f"2025-{1 + n * 12 // (results + 1):02d}-{1 + n % 28:02d}T10:00:00.000+00:00"
            meta = {
                "modality": "CR",
                "patient_sex": rng.choice("MF"),
                "age_years": rng.uniform(0, 95),
                "manufacturer": "ACME",
                "device_model": "X1",
                "station": f"ROOM-{rng.randint(1, 3)}",
                "intensity": [round(rng.random() / 8, 4) for _ in range(16)],  # what prepare records, for drift
            }
            outside = rng.random() < 0.04
            images.append((n, at, f"{n:064x}", json.dumps(meta), f"1.2.9.1.{n}", "outside" if outside else "done"))
            found = [] if outside else [
                {"label": lab, "probability": p, "threshold": 0.5, "positive": p >= 0.5, "validated": True}
                for lab, p in ((lab, rng.random()) for lab in LABELS)
            ]  # fmt: skip
            guard = json.dumps({"score": rng.uniform(0.1, 3) if outside else rng.uniform(-8, -1), "outside": outside})
            rows.append((n, n, at, "outside" if outside else "ok", model, bundle_sha256, json.dumps(found), guard))
        db.executemany(
            "INSERT INTO images (id, study_id, series_id, created_at, filename, sha256, size, metadata, "
            "sop_instance_uid, status) VALUES (?, 1, 1, ?, 'a.dcm', ?, 1, ?, ?, ?)",
            images,
        )
        db.executemany(
            "INSERT INTO results (id, image_id, created_at, status, model, bundle_sha256, findings, guard) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        ok = [r[0] for r in rows if r[3] == "ok"]
        db.executemany(
            "INSERT INTO reviews (image_id, result_id, author, at, verdicts) VALUES (?, ?, 'dr', ?, ?)",
            [
                (
                    n,
                    n,
                    "2025-12-31T00:00:00",
                    json.dumps({lab: rng.choice(("agree", "agree", "disagree")) for lab in LABELS}),
                )
                for n in rng.sample(ok, reviews)
            ],
        )
    Accounts(store).add_user("bench-admin", parse_roles("admin"), "a long enough password")
    store.close()


def timed(call: object, times: int = 20) -> tuple[float, float]:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        spent.append((time.perf_counter() - start) * 1000)
    spent.sort()
    return statistics.median(spent), spent[int(len(spent) * 0.95) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--reviews", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"storage": {"data_dir": tmp}, "monitoring": {"every_s": 3600}})
        fill(Path(tmp), args.results, args.reviews, load_bundle(settings.model.bundle).sha256)
        with Service(settings, "front") as svc:
            assert svc.monitor is not None
            start = time.perf_counter()
            svc.monitor.run_once()
            print(f"one round of the monitor's loop (every monitoring.every_s): {time.perf_counter() - start:.1f} s")
            app = create_app(svc)
            app.config.update(TESTING=True)
            browser = app.test_client()
            form = browser.get("/login").get_data(as_text=True)
            csrf = form.split('name="csrf_token" type="hidden" value="', 1)[1].split('"', 1)[0]
            login = {"csrf_token": csrf, "username": "bench-admin", "password": "a long enough password"}
            assert browser.post("/login", data=login).status_code == 302
            page = browser.get("/admin/performance?count=now")
            assert page.status_code == 200 and b"<svg" in page.data, page.status_code
            figures = {
                "performance page": lambda: browser.get("/admin/performance"),
                "health": lambda: browser.get("/api/v1/health"),
            }
            worst = 0.0
            for name, call in figures.items():
                p50, p95 = timed(call)
                worst = max(worst, p95)
                print(f"{name}: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    return 0 if worst < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
