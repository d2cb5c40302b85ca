"""Benchmark: the model's outputs from a reduced-resolution decode against a full one, and the time each takes.

    python tests/benchmarks/reduced_decode.py [BUNDLE_DIR] [--nih N]

Defaults: the embedded reference bundle. Images: every JPEG 2000 CR and US file of pydicom-data, its chest CR
re-encoded as HTJ2K (lossless and lossy, by OpenJPH through imagecodecs: another encoder than openjpeg), and N NIH
ChestX-ray14 images (the test split's first, 1024 px PNGs) as the CR a PACS sends: doubled to 2048 px (bicubic),
12 bits, JPEG 2000 lossless and HTJ2K lossless (at 1024 px the preview takes them whole: no reduction). Each is
decoded full size and as the box decodes it (`prepare.wanted` of the bundle), preprocessed and run (intended use
not checked: the ultrasound is not the model's, its outputs are compared all the same). Prints per set the
decision agreement (every label's, at the bundle's thresholds), the largest probability difference and the median
decode times.
Target: agreement 1.0.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from edge_app.bundles.bundle import Bundle, load_bundle  # noqa: E402
from edge_app.bundles.findings import probabilities  # noqa: E402
from edge_app.config import EMBEDDED_BUNDLE  # noqa: E402
from edge_app.imaging.codestream import J2K_SYNTAXES  # noqa: E402
from edge_app.imaging.decode import decode  # noqa: E402
from edge_app.imaging.prepare import wanted  # noqa: E402
from edge_app.imaging.preprocess import preprocess  # noqa: E402
from edge_app.runtime.base import Runner  # noqa: E402
from edge_app.runtime.onnx import OnnxRuntimeRunner  # noqa: E402
from support.data import NIH  # noqa: E402
from support.dicom import cr_and_us_files, dicom_bytes, dicom_file, htj2k_cr  # noqa: E402


def nih_as_j2k(png: Path, htj2k: bool = False) -> bytes:
    """An NIH PNG as a 2048 px 12-bit JPEG 2000 (or HTJ2K) lossless CR (pydicom-data's chest CR's header)."""
    import imagecodecs
    from openjpeg.utils import encode_array
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, generate_uid

    grey = Image.open(png).convert("L").resize((2048, 2048), Image.Resampling.BICUBIC)
    pixels = (np.asarray(grey, dtype=np.uint32) * 4095 // 255).astype(np.uint16)
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless if htj2k else JPEG2000Lossless
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    codestream = imagecodecs.htj2k_encode(pixels) if htj2k else encode_array(pixels, use_mct=False)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].is_undefined_length = True
    return dicom_bytes(ds)


def compare(bundle: Bundle, runner: Runner, data: bytes | Path) -> list[tuple[NDArray[np.float64], float]]:
    """The probabilities and the decode's milliseconds, from the full decode, then from the reduced one."""
    manifest = bundle.manifest
    out = []
    for want in (None, wanted(manifest)):
        t0 = time.perf_counter()
        image = decode(data, wanted=want)
        ms = (time.perf_counter() - t0) * 1e3
        batch = preprocess(image.pixels, manifest.input, manifest.preprocessing)
        scores = runner.infer(batch)[manifest.output.name]
        out.append((probabilities(manifest.output, len(manifest.labels), scores)[0], ms))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--nih", type=int, default=50, help="NIH images re-encoded (default 50)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    thresholds = np.asarray([bundle.manifest.thresholds[label] for label in bundle.manifest.labels])
    j2k = [
        p
        for p in cr_and_us_files()
        if str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) in J2K_SYNTAXES
    ]
    with (NIH / "split.csv").open() as fh:
        test = [row["image"] for row in csv.DictReader(fh) if row["split"] == "test"][: args.nih]
    sets: dict[str, list[tuple[str, bytes | Path]]] = {
        "pydicom-data JPEG 2000 CR and US": [(p.name, p) for p in j2k],
        "pydicom-data chest CR as HTJ2K": [
            (f"RG1 HTJ2K {kind}", dicom_bytes(htj2k_cr(kind == "lossless"))) for kind in ("lossless", "lossy")
        ],
        f"NIH as 2048 px JPEG 2000 ({len(test)})": [(name, nih_as_j2k(NIH / "images" / name)) for name in test],
        f"NIH as 2048 px HTJ2K ({len(test)})": [(name, nih_as_j2k(NIH / "images" / name, True)) for name in test],
    }
    print(f"{bundle.manifest.name} {bundle.manifest.version}; wanted {wanted(bundle.manifest)}")
    with OnnxRuntimeRunner(bundle) as runner:
        for title, items in sets.items():
            agree, diffs, full_ms, reduced_ms = [], [], [], []
            for name, data in items:
                (full, f_ms), (reduced, r_ms) = compare(bundle, runner, data)
                agree.append(np.array_equal(full >= thresholds, reduced >= thresholds))
                diffs.append(float(np.abs(full - reduced).max()))
                full_ms.append(f_ms)
                reduced_ms.append(r_ms)
                if len(items) < 20:
                    print(f"  {name:<32} max |dp| {diffs[-1]:.4f}  decode {f_ms:6.0f} -> {r_ms:6.0f} ms")
            print(
                f"{title}: decision agreement {np.mean(agree):.3f}, max probability difference {max(diffs):.4f}, "
                f"decode p50 {np.median(full_ms):.0f} ms full, {np.median(reduced_ms):.0f} ms reduced"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
