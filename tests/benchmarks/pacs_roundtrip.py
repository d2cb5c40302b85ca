"""Benchmark: a PACS's images to the box and the results back, with a real Orthanc.

    python tests/benchmarks/pacs_roundtrip.py [--images 60]

Starts Debian's Orthanc (its own storage in a scratch folder) and `edge-app serve` with the DICOM receiver, both
on free localhost ports, the box sending its results (an SR and a heatmap SC per image) to Orthanc. Stores
`--images` real CR files of pydicom-data in Orthanc (new UIDs each), has Orthanc push them all to the box in one
job, then polls both every 20 ms. Prints when the box had every result and when the last SR was stored in
Orthanc, both from the end of the push (the last image arriving). Target: the last SR in Orthanc at most 3 s
after the last image.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from appliance import free_port, serve  # noqa: E402

from support.dicom import dicom_bytes, dicom_file  # noqa: E402
from support.orthanc import Orthanc, toml_destinations  # noqa: E402

TARGET_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").is_file():
        sys.exit("Orthanc is not installed: apt-get install orthanc")
    source = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    with tempfile.TemporaryDirectory() as work:
        http, dicom, orthanc_dicom = free_port(), free_port(), free_port()
        env = {
            "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
            "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
            "EDGE_APP_CAPTURE_DICOM_PORT": str(dicom),
            "EDGE_APP_OUTPUTS_DESTINATIONS": toml_destinations({"ORTHANC": orthanc_dicom}),
        }
        orthanc = Orthanc(Path(work) / "orthanc", modalities={"edgeapp": ("EDGEAPP", dicom)}, dicom_port=orthanc_dicom)
        proc = serve(Path(work) / "data", http, env)
        try:
            ids = []
            for i in range(args.images):
                if i % 10 == 0:
                    study = generate_uid()
                source.StudyInstanceUID, source.SeriesInstanceUID = study, generate_uid()
                source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ids.append(orthanc.upload(dicom_bytes(source)))
            started = time.monotonic()
            orthanc.push("edgeapp", ids)
            pushed = time.monotonic()
            results = last_sr = None
            while last_sr is None or results is None:
                now = time.monotonic() - pushed
                if results is None and _queued(http) == 0:
                    results = now
                found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})
                if last_sr is None and len(found) >= args.images:
                    last_sr = now
                if now > 300:
                    sys.exit("not every SR reached Orthanc within 300 s")
                time.sleep(0.02)
        finally:
            proc.terminate()
            proc.wait()
            orthanc.stop()
    print(f"{args.images} CR pushed by Orthanc to the box in {pushed - started:.2f} s (one association)")
    print(f"every result made:           {results:.2f} s after the last image")
    print(f"the last SR stored in Orthanc: {last_sr:.2f} s after the last image (target at most {TARGET_S:g} s)")
    print(f"ratio to the target: {last_sr / TARGET_S:.2f}")
    return 0 if last_sr <= TARGET_S else 1


def _queued(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as resp:
        return int(json.loads(resp.read())["queued"])


if __name__ == "__main__":
    sys.exit(main())
