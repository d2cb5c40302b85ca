"""Benchmark: from the last byte of a C-STORE to the result readable through the API.

    python tests/benchmarks/dicom_latency.py [--sends 100]

Starts `edge-app serve` with the DICOM receiver on free localhost ports, sends real CR files of pydicom-data
(each time with new UIDs, so that none is a duplicate) with pynetdicom, one at a time, and polls
GET /api/v1/studies/<uid> every 2 ms until the image is done. Prints p50/p95 of that latency, of the pipeline's
own decode + preprocess + inference time for the same images, and their ratio (target: p95 at most 1.5x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from appliance import api_headers, free_port, serve  # noqa: E402

from support.dicom import dicom_file  # noqa: E402

FILES = ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=100)
    args = parser.parse_args()
    datasets = [pydicom.dcmread(dicom_file(name)) for name in FILES]
    http, dicom = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        headers = api_headers(data_dir)
        env = {
            "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
            "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
            "EDGE_APP_CAPTURE_DICOM_PORT": str(dicom),
        }
        proc = serve(data_dir, http, env)
        api = f"http://127.0.0.1:{http}/api/v1"
        try:
            ae = AE(ae_title="BENCH")
            for ds in datasets:
                ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", dicom, ae_title="EDGEAPP")
            latency, pipeline = [], []
            for i in range(args.sends):
                ds = datasets[i % len(datasets)]
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
                assert int(assoc.send_c_store(ds).Status) == 0
                sent = time.perf_counter()  # the response follows the last byte by the ingest time
                while True:
                    req = urllib.request.Request(f"{api}/studies/{ds.StudyInstanceUID}", headers=headers)
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        (image,) = json.load(resp)["images"]
                    if image["status"] != "queued":
                        break
                    time.sleep(0.002)
                latency.append((time.perf_counter() - sent) * 1e3)
                timings = image["results"][0]["timings_ms"]
                pipeline.append(timings["decode"] + timings["preprocess"] + timings["infer"])
            assoc.release()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lat, pipe = np.asarray(latency), np.asarray(pipeline)
    print(f"{args.sends} C-STORE sends of {', '.join(FILES)} (1955x1841 CR, uncompressed and JPEG 2000)")
    print(f"{'':<44}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'last byte to result readable (API)':<44}{np.percentile(lat, 50):>10.1f}{np.percentile(lat, 95):>10.1f}")
    print(f"{'decode + preprocess + inference':<44}{np.percentile(pipe, 50):>10.1f}{np.percentile(pipe, 95):>10.1f}")
    ratio = np.percentile(lat, 95) / np.percentile(pipe, 95)
    print(f"p95 ratio {ratio:.2f} (target at most 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
