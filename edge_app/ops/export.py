"""`edge-app export`: the studies and their results onto a USB stick, as they are or de-identified.

The export is a folder `edge-app-export-<time>[-deidentified]/` holding `results.csv` (one row per finding, with
the newest review's verdict; every cell made inert for spreadsheets, `outputs/csv_cells.py`) and one folder per
study: its images and its one-page report. A study's folder is named by its Study Instance UID only where that is a
valid UID (digits and dots, at most 64 characters), else by its number in the export (`study-0003`), results.csv
giving the UID: no header value is ever a path. De-identified, it follows DICOM PS3.15 Annex E's Basic Application
Level Confidentiality Profile (the 2024b table, applied by dicom-anonymizer: names, IDs, dates, institution and
device identifiers removed or replaced, UIDs replaced consistently within the export, private tags removed; the
file's preamble zeroed and its file meta rebuilt, which the profile does not reach); studies and reviewers become
`study-0001`, `reviewer-1`; review notes (free text) are left out; PNG and JPEG images are written anew without
their metadata; a file that cannot be de-identified (damaged, or no image at all) is left out and named in
`not-exported.txt`. Text burned into the pixels is not removed (Annex E's Clean Pixel Data option is not applied):
look at the images before they leave the clinic.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_app.config import Settings
from edge_app.errors import UserError
from edge_app.outputs import csv_cells
from edge_app.store import Image, Store, Study
from edge_app.store.reviews import Review, Reviews
from edge_app.system.clock import utc_now

FIELDS = [
    "study", "study_uid", "received", "image", "modality", "status", "model", "label", "probability", "threshold",
    "positive", "validated", "verdict", "reviewer",
]  # fmt: skip


def export(settings: Settings, parent: Path, *, deidentify: bool = False, since: dt.date | None = None) -> Path:
    """A new export folder in `parent` with every study received since `since` (all without); return it."""
    data = settings.storage.data_dir
    if not (data / "edge-app.sqlite3").is_file():
        raise UserError(f"nothing to export: {data / 'edge-app.sqlite3'} does not exist")
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
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
    studies = [s for s in reversed(store.list_studies(-1)) if since is None or s.created_at[:10] >= since.isoformat()]
    for number, study in enumerate(studies, start=1):
        name = study.uid if not deidentify and _valid_uid(study.uid) else f"study-{number:04d}"
        folder = dest / name
        folder.mkdir()
        pictures, heatmaps, image_reviews = {}, {}, {}
        for n, image in enumerate(study.images, start=1):
            fmt = str(image.metadata.get("format", "unknown"))
            left_out = (
                None
                if image.purged_at
                else _write_image(store.read_file(image.sha256), folder / f"image-{n}", fmt, deidentify)
            )
            if left_out:
                not_exported.append(f"{name} image-{n}: {left_out}")
            if image.view_sha256:
                pictures[image.id] = store.read_file(image.view_sha256)
            for result in image.results:
                if (top := result.heatmap()) is not None:  # the most probable finding's
                    heatmaps[result.id] = (top.label, store.read_file(top.sha256))
            found = reviews.of_image(image.id)
            if deidentify:
                found = [_pseudonymous(r, reviewers) for r in found]
            image_reviews[image.id] = found
            rows += _rows(name, study, image, n, found, deidentify)
        shown = _deidentified_study(study, name) if deidentify else study
        (folder / "report.pdf").write_bytes(study_report(shown, pictures, heatmaps, image_reviews, _english))
    if not_exported:
        (dest / "not-exported.txt").write_text("\n".join(not_exported) + "\n", encoding="utf-8")
    with (dest / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        csv_cells.write(fh, FIELDS, rows)


# The UID grammar of DICOM PS3.5 9.1 (pydicom's `UID.is_valid` takes "1.2.3\n": its pattern ends in `$`).
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and _UID.fullmatch(uid) is not None


def _english(text: str, **values: Any) -> str:
    return text % values if values else text


def _rows(name: str, study: Study, image: Image, n: int, found: list[Review], deidentify: bool) -> list[dict[str, Any]]:
    meta = image.metadata
    base = {
        "study": name,
        "study_uid": "" if deidentify else study.uid,
        "received": "" if deidentify else study.created_at,
        "image": n,
        "modality": meta.get("modality", "") or meta.get("format", ""),
        "status": image.status,
    }
    ok = [r for r in image.results if r.status == "ok"]
    if not ok:
        return [{**base, "model": "", "label": image.reason or ""}]
    out = []
    for result in ok:
        review = next((r for r in found if r.result_id == result.id), None)
        model = f"{result.model.get('name', '')} {result.model.get('version', '')}"
        for f in result.findings:
            out.append(
                {
                    **base,
                    "model": model,
                    "label": f.label,
                    "probability": f"{f.probability:.4f}",
                    "threshold": f"{f.threshold:.4f}",
                    "positive": f.positive,
                    "validated": f.validated,
                    "verdict": review.verdicts.get(f.label, "") if review else "",
                    "reviewer": review.author if review else "",
                }
            )
    return out


def _pseudonymous(review: Review, reviewers: dict[str, str]) -> Review:
    """The review under an alias, with no time, its note (free text: it may name anyone) said to be left out."""
    alias = reviewers.setdefault(review.author, f"reviewer-{len(reviewers) + 1}")
    note = _NOTE_LEFT_OUT if review.note else ""
    return Review(review.id, review.image_id, review.result_id, alias, "", review.verdicts, note)


def _deidentified_study(study: Study, name: str) -> Study:
    """The study as the report shows it, with nothing that names the patient, the place or the time."""
    kept_meta = ("modality", "body_part", "view", "format", "exposure")
    images = tuple(
        replace(image, filename=f"image {n}", metadata={k: v for k, v in image.metadata.items() if k in kept_meta})
        for n, image in enumerate(study.images, start=1)
    )
    return replace(study, uid=name, patient_id="", created_at="", images=images)


_NOTE_LEFT_OUT = "Note left out of a de-identified export."
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
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.dcmread(io.BytesIO(data))
    anonymize_dataset(ds, delete_private_tags=True, base_rules_gen=initialize_actions_2024b)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 Annex E Basic Profile (2024b), dicom-anonymizer"
    # Outside the data set, where the profile does not reach: the 128-byte preamble, free for any use (a name or ID
    # put there stays), and the file meta's sender AE titles, implementation name and private fields.
    ds.preamble = bytes(128)
    meta = FileMetaDataset()
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        setattr(meta, keyword, ds.file_meta[keyword].value)
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # with pydicom's group length, version and implementation UID
    return out.getvalue()
