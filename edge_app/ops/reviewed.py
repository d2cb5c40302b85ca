"""`edge-app export --reviewed DIR`: the clinic's reviewed cases, labelled by its clinicians, in the layout
`edge-convert validate` reads, so that a new bundle can be measured on them before it is put in service.

DIR receives:

- `images/case-0001.dcm` ... : each reviewed image as it was stored (DICOM as received, PNG or JPEG), named by its
  number in the export only (no header value, no patient name in a file name); `--deidentify` applies the
  de-identification of `edge-app export --deidentify` to them.
- `labels.csv`: a `file` column and one 0/1 column per label. A finding's label is the AI's decision as the
  clinician saw it (positive or not) where the clinician agreed, the other where they disagreed, from the image's
  newest review. An image is exported when that review gives a verdict on every finding of the result it reviewed;
  the columns are the labels every exported image has (another model's extra labels are left out).
- `site-export.json`: this box's site id, the export's own id and time, the images and the labels file's sha256.
  `edge-convert validate --record` copies it into the bundle's manifest with the figure measured, and the
  model-update page of the box whose id it carries shows that figure.

    edge-convert validate BUNDLE --reference MODEL.onnx --data DIR/images --labels DIR/labels.csv [--record]
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge_app.config import Settings
from edge_app.errors import ConfigError, UserError
from edge_app.ops.export import _SUFFIX, _write_image
from edge_app.outputs import csv_cells
from edge_app.store import Image, Store
from edge_app.store.reviews import Review, Reviews
from edge_app.system.clock import utc_text
from edge_app.system.fileio import atomic_write

MARKER = "site-export.json"
LABELS = "labels.csv"
IMAGES = "images"
FORMAT = "edge-app reviewed cases 1"


def site_id(settings: Settings) -> str:
    """This box's site id: random, made once in <data_dir>/site_id and kept (a backup restored keeps it)."""
    path = settings.storage.data_dir / "site_id"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            made = path.with_name(f".site_id-{uuid.uuid4().hex}")
            atomic_write(made, uuid.uuid4().hex.encode())
            try:
                os.link(made, path)  # never replaces one made meanwhile by another process
            except FileExistsError:
                pass
            finally:
                made.unlink()
        return path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(f"the site id {path} cannot be made or read: {exc}") from exc


@dataclass(frozen=True)
class ReviewedExport:
    folder: Path
    images: int
    labels: tuple[str, ...]
    left_out: int  # reviewed images not exported: purged, a partial review, a file that could not be de-identified


def export_reviewed(
    settings: Settings, dest: Path, actor: str, *, deidentify: bool = False, force: bool = False
) -> ReviewedExport:
    """Write the reviewed cases into `dest` (new or empty, unless `force`); audited as `actor`."""
    data = settings.storage.data_dir
    if not (data / "edge-app.sqlite3").is_file():
        raise UserError(f"nothing to export: {data / 'edge-app.sqlite3'} does not exist")
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not force)):
        raise UserError(f"{dest} is not an empty folder (--force writes into it all the same)")
    store = Store(data)
    try:
        cases, left_out = _cases(store)
        labels = tuple(sorted(set.intersection(*(set(c[1]) for c in cases)))) if cases else ()
        if not labels:
            raise UserError("no reviewed image to export" if not cases else "the reviewed images share no label")
        try:
            (dest / IMAGES).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot make {dest / IMAGES}: {exc.strerror or exc}") from None
        rows: list[dict[str, object]] = []
        for image, truth in cases:
            number = len(rows) + 1
            fmt = str(image.metadata.get("format", "unknown"))
            stem = dest / IMAGES / f"case-{number:04d}"
            if fmt not in _SUFFIX or _write_image(store.read_file(image.sha256), stem, fmt, deidentify):
                left_out += 1
                continue
            rows.append({"file": stem.with_suffix(_SUFFIX[fmt]).name, **{k: truth[k] for k in labels}})
        with (dest / LABELS).open("w", newline="", encoding="utf-8") as fh:
            csv_cells.write(fh, ["file", *labels], rows)
        marker = {
            "format": FORMAT,
            "site": site_id(settings),
            "export": uuid.uuid4().hex,
            "exported_at": utc_text("seconds"),
            "images": len(rows),
            "labels": list(labels),
            "labels_sha256": hashlib.sha256((dest / LABELS).read_bytes()).hexdigest(),
            "deidentified": deidentify,
        }
        atomic_write(dest / MARKER, (json.dumps(marker, indent=2) + "\n").encode())
        store.audit(actor, "export.reviewed", str(dest), f"{len(rows)} images, export {marker['export']}")
    finally:
        store.close()
    return ReviewedExport(dest, len(rows), labels, left_out)


def _cases(store: Store) -> tuple[list[tuple[Image, dict[str, int]]], int]:
    """Each reviewed image still held, with its label per finding, oldest first; and how many reviewed images are
    not (purged, or a finding without a verdict)."""
    newest = Reviews(store).newest_by_image()
    out = []
    for study in reversed(store.list_studies(-1)):
        for image in study.images:
            review = newest.get(image.id)
            truth = _truth(image, review) if review is not None and not image.purged_at else None
            if truth is not None:
                out.append((image, truth))
    return out, len(newest) - len(out)


def _truth(image: Image, review: Review) -> dict[str, int] | None:
    """1/0 per finding of the reviewed result: its decision, flipped where the clinician disagreed; None where the
    review leaves a finding without a verdict."""
    result = next((r for r in image.results if r.id == review.result_id), None)
    if result is None or any(f.label not in review.verdicts for f in result.findings):
        return None
    return {f.label: int(f.positive != (review.verdicts[f.label] == "disagree")) for f in result.findings}
