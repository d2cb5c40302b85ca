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
import re
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
    left_out: tuple[str, ...]  # a line per reviewed image not exported: which, and why


# An earlier export's case files (`--force` replaces them: validate would read them as cases of this one).
_CASE = re.compile(r"case-\d{4,}\.(dcm|png|jpg)")


def export_reviewed(
    settings: Settings, dest: Path, actor: str, *, deidentify: bool = False, force: bool = False
) -> ReviewedExport:
    """Write the reviewed cases into `dest` (new or empty, unless `force`); audited as `actor`. The store is only
    read (the audit entry aside); a stored file missing or not matching its sha256 is left out, with a line."""
    data = settings.storage.data_dir
    if not (data / "edge-app.sqlite3").is_file():
        raise UserError(f"nothing to export: {data / 'edge-app.sqlite3'} does not exist")
    if dest.resolve().is_relative_to(data.resolve()):  # the store's own folder: an export never writes into it
        raise UserError(f"{dest} is inside the data directory {data}: choose a folder outside it (a USB stick)")
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not force)):
        raise UserError(f"{dest} is not an empty folder (--force writes into it all the same)")
    store = Store(data)
    try:
        cases, left_out = _cases(store)
        labels = tuple(sorted(set.intersection(*(set(c[1]) for c in cases)))) if cases else ()
        if not labels:
            raise UserError("no reviewed image to export" if not cases else "the reviewed images share no label")
        try:
            _clear_earlier(dest)
            (dest / IMAGES).mkdir(parents=True, exist_ok=True)
            rows: list[dict[str, object]] = []
            for image, truth in cases:
                stem = dest / IMAGES / f"case-{len(rows) + 1:04d}"
                fmt = str(image.metadata.get("format", "unknown"))
                content, why = _stored_bytes(store, image)
                if fmt not in _SUFFIX:
                    why = f"stored as {fmt}, not an image edge-convert validate reads"
                why = why or _write_image(content, stem, fmt, deidentify)
                if why:
                    left_out.append(f"image {image.id}: {why}")
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
        except OSError as exc:  # a full or read-only stick, one pulled out: the marker is written last, so never
            where = exc.filename or dest
            raise UserError(
                f"cannot write the export into {dest} ({where}: {exc.strerror or exc}); free space there or choose "
                f"another folder: what was written is incomplete (no {MARKER}) and edge-convert validate --record "
                "refuses it"
            ) from None
        store.audit(actor, "export.reviewed", str(dest), f"{len(rows)} images, export {marker['export']}")
    finally:
        store.close()
    return ReviewedExport(dest, len(rows), labels, tuple(left_out))


def _clear_earlier(dest: Path) -> None:
    """Remove an earlier export's marker, labels and cases from `dest` (what `--force` writes into): validate reads
    every image under images/, so a file there that is not a case of this export is refused, never deleted."""
    images = dest / IMAGES
    others = sorted(p.name for p in images.iterdir() if not _CASE.fullmatch(p.name)) if images.is_dir() else []
    if others:
        raise UserError(
            f"{images} holds files no export wrote ({', '.join(others[:3])}): edge-convert validate would read them "
            "as cases; move them away or choose another folder"
        )
    for path in [dest / MARKER, dest / LABELS, *(images.iterdir() if images.is_dir() else ())]:
        path.unlink(missing_ok=True)


def _stored_bytes(store: Store, image: Image) -> tuple[bytes, str | None]:
    """The image's stored file, or why it cannot be exported as it arrived: missing, or not the bytes its name
    (their sha256) says."""
    path = store.file_path(image.sha256)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return b"", f"its stored file {path} is missing (restore the data directory from a backup to export it)"
    if hashlib.sha256(content).hexdigest() != image.sha256:
        return b"", f"its stored file {path} does not match its sha256: damaged on disk (restore it from a backup)"
    return content, None


def _cases(store: Store) -> tuple[list[tuple[Image, dict[str, int]]], list[str]]:
    """Each reviewed image still held, with its label per finding, oldest first; and a line for each reviewed image
    that is not (purged, or a finding without a verdict)."""
    newest = Reviews(store).newest_by_image()
    out, left_out = [], []
    for study in reversed(store.list_studies(-1)):
        for image in study.images:
            review = newest.pop(image.id, None)
            if review is None:
                continue
            truth = None if image.purged_at else _truth(image, review)
            if truth is not None:
                out.append((image, truth))
            elif image.purged_at:
                left_out.append(f"image {image.id}: its file was removed by retention on {image.purged_at[:10]}")
            else:
                left_out.append(f"image {image.id}: its newest review leaves a finding without a verdict")
    left_out += [f"image {i}: no longer held" for i in newest]
    return out, left_out


def _truth(image: Image, review: Review) -> dict[str, int] | None:
    """1/0 per finding of the reviewed result: its decision, flipped where the clinician disagreed; None where the
    review leaves a finding without a verdict."""
    result = next((r for r in image.results if r.id == review.result_id), None)
    if result is None or any(f.label not in review.verdicts for f in result.findings):
        return None
    return {f.label: int(f.positive != (review.verdicts[f.label] == "disagree")) for f in result.findings}
