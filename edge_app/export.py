"""`edge-app export`: the studies and their results onto a USB stick, as they are or de-identified.

The export is a folder `edge-app-export-<time>[-deidentified]/` holding `results.csv` (one row per finding, with
the newest review's verdict) and one folder per study: its images and its one-page report. De-identified, it
follows DICOM PS3.15 Annex E's Basic Application Level Confidentiality Profile (the 2024b table, applied by
dicom-anonymizer: names, IDs, dates, institution and device identifiers removed or replaced, UIDs replaced
consistently within the export, private tags removed); studies and reviewers become `study-0001`, `reviewer-1`;
PNG and JPEG images are written anew without their metadata; a file that cannot be de-identified (damaged, or no
image at all) is left out and named in `not-exported.txt`. Text burned into the pixels is not removed (Annex E's
Clean Pixel Data option is not applied): look at the images before they leave the clinic.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

from edge_app.config import Settings
from edge_app.errors import UserError
from edge_app.store import Store
from edge_app.store.reviews import Review, Reviews

FIELDS = [
    "study", "received", "image", "modality", "status", "model", "label", "probability", "threshold", "positive",
    "validated", "verdict", "reviewer",
]  # fmt: skip


def export(settings: Settings, parent: Path, *, deidentify: bool = False, since: dt.date | None = None) -> Path:
    """A new export folder in `parent` with every study received since `since` (all without); return it."""
    data = settings.storage.data_dir
    if not (data / "edge-app.sqlite3").is_file():
        raise UserError(f"nothing to export: {data / 'edge-app.sqlite3'} does not exist")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = parent / f"edge-app-export-{stamp}{'-deidentified' if deidentify else ''}"
    try:
        dest.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot make {dest}: {exc.strerror or exc}") from None
    store = Store(data)
    try:
        _write(store, dest, deidentify, since)
    finally:
        store.close()
    return dest


def _write(store: Store, dest: Path, deidentify: bool, since: dt.date | None) -> None:
    from edge_app.outputs.report import study_report

    reviews = Reviews(store)
    reviewers: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    not_exported: list[str] = []
    studies = [
        s for s in reversed(store.list_studies(-1)) if since is None or s["created_at"][:10] >= since.isoformat()
    ]
    for number, study in enumerate(studies, start=1):
        name = f"study-{number:04d}" if deidentify else study["uid"]
        folder = dest / name
        folder.mkdir()
        pictures, heatmaps, image_reviews = {}, {}, {}
        for n, image in enumerate(study["images"], start=1):
            fmt = str(image["metadata"].get("format", "unknown"))
            left_out = (
                None
                if image["purged_at"]
                else _write_image(store.read_file(image["sha256"]), folder / f"image-{n}", fmt, deidentify)
            )
            if left_out:
                not_exported.append(f"{name} image-{n}: {left_out}")
            if image["view_sha256"]:
                pictures[image["id"]] = store.read_file(image["view_sha256"])
            for result in image["results"]:
                if result["heatmaps"]:  # the most probable finding's
                    heatmaps[result["id"]] = (
                        result["heatmaps"][0]["label"],
                        store.read_file(result["heatmaps"][0]["sha256"]),
                    )
            found = reviews.of_image(image["id"])
            if deidentify:
                found = [_pseudonymous(r, reviewers) for r in found]
            image_reviews[image["id"]] = found
            rows += _rows(name, study, image, n, found, deidentify)
        shown = _deidentified_study(study, name) if deidentify else study
        (folder / "report.pdf").write_bytes(study_report(shown, pictures, heatmaps, image_reviews, _english))
    if not_exported:
        (dest / "not-exported.txt").write_text("\n".join(not_exported) + "\n", encoding="utf-8")
    with (dest / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _english(text: str, **values: Any) -> str:
    return text % values if values else text


def _rows(
    name: str, study: dict[str, Any], image: dict[str, Any], n: int, found: list[Review], deidentify: bool
) -> list[dict[str, Any]]:
    meta = image["metadata"]
    base = {
        "study": name,
        "received": "" if deidentify else study["created_at"],
        "image": n,
        "modality": meta.get("modality", "") or meta.get("format", ""),
        "status": image["status"],
    }
    ok = [r for r in image["results"] if r["status"] == "ok"]
    if not ok:
        return [{**base, "model": "", "label": image["reason"] or ""}]
    out = []
    for result in ok:
        review = next((r for r in found if r.result_id == result["id"]), None)
        model = f"{result['model'].get('name', '')} {result['model'].get('version', '')}"
        for f in result["findings"]:
            out.append(
                {
                    **base,
                    "model": model,
                    "label": f["label"],
                    "probability": f"{f['probability']:.4f}",
                    "threshold": f"{f['threshold']:.4f}",
                    "positive": f["positive"],
                    "validated": f.get("validated", ""),
                    "verdict": review.verdicts.get(f["label"], "") if review else "",
                    "reviewer": review.author if review else "",
                }
            )
    return out


def _pseudonymous(review: Review, reviewers: dict[str, str]) -> Review:
    alias = reviewers.setdefault(review.author, f"reviewer-{len(reviewers) + 1}")
    return Review(review.id, review.image_id, review.result_id, alias, "", review.verdicts, review.note)


def _deidentified_study(study: dict[str, Any], name: str) -> dict[str, Any]:
    """The study as the report shows it, with nothing that names the patient, the place or the time."""
    kept_meta = ("modality", "body_part", "view", "format", "exposure")
    images = [
        {
            **image,
            "filename": f"image {n}",
            "metadata": {k: v for k, v in image["metadata"].items() if k in kept_meta},
        }
        for n, image in enumerate(study["images"], start=1)
    ]
    return {**study, "uid": name, "patient_id": "", "created_at": "", "images": images}


_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}


def _write_image(data: bytes, stem: Path, fmt: str, deidentify: bool) -> str | None:
    """Write one stored image (as received, or de-identified); the reason where it is left out."""
    if not deidentify:
        stem.with_suffix(_SUFFIX.get(fmt, ".bin")).write_bytes(data)  # the clinic's own record: what arrived
        return None
    if fmt not in _SUFFIX:
        return "not an image (it was refused when it arrived): nothing to de-identify, left out"
    try:
        if fmt == "dicom":
            stem.with_suffix(".dcm").write_bytes(_deidentified_dicom(data))
            return None
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:  # pixels only: text chunks, EXIF and comments stay behind
            clean = Image.frombytes(img.mode, img.size, img.tobytes())
            if img.mode == "P":
                clean.putpalette(img.getpalette() or [])
            clean.save(stem.with_suffix(_SUFFIX[fmt]), format="PNG" if fmt == "png" else "JPEG", quality=95)
        return None
    except Exception as exc:  # a damaged file: de-identifying it cannot be vouched for, so it stays behind
        stem.with_suffix(_SUFFIX[fmt]).unlink(missing_ok=True)
        return f"cannot be de-identified ({type(exc).__name__}: {exc}), left out"


def _deidentified_dicom(data: bytes) -> bytes:
    import pydicom
    from dicomanonymizer import anonymize_dataset, initialize_actions_2024b

    ds = pydicom.dcmread(io.BytesIO(data))
    anonymize_dataset(ds, delete_private_tags=True, base_rules_gen=initialize_actions_2024b)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 Annex E Basic Profile (2024b), dicom-anonymizer"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()
