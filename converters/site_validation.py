"""A bundle measured on a clinic's reviewed cases (`edge-app export --reviewed`), recorded in its manifest.

The export's `site-export.json` lies beside its `labels.csv`; it is taken as the clinic's only where the labels
given are the ones it describes (their sha256) and every image it lists was read. The record changes the manifest,
so the bundle is another one (a new sha256) and a signature made before no longer holds: it is removed, to be made
again with `edge-convert sign`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from edge_app.bundles.bundle import Bundle, load_bundle, sha256_file, write_manifest
from edge_app.bundles.manifest import SiteValidation
from edge_app.bundles.signature import SIGNATURE_NAME
from edge_app.ops.reviewed import FORMAT, MARKER
from edge_app.system.clock import utc_text


def site_export(labels: Path, images_read: int) -> dict[str, Any]:
    """The export's marker beside `labels`, checked against the labels and the images read."""
    path = labels.parent / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"--record needs the data of edge-app export --reviewed: {path} ({exc})") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise ConversionError(f"{path} is not the marker of edge-app export --reviewed")
    if marker.get("labels_sha256") != sha256_file(labels):
        raise ConversionError(f"{labels} is not the labels file {path} was written with (its sha256 differs)")
    if marker.get("images") != images_read:
        raise ConversionError(f"{path} lists {marker.get('images')} images, {images_read} were read")
    return marker


def record(bundle: Bundle, marker: dict[str, Any], figures: dict[str, Any], images: int) -> Bundle:
    """Write the figure into the bundle's manifest (after any earlier one); the bundle as it is now."""
    entry = SiteValidation(
        site=str(marker["site"]),
        export=str(marker["export"]),
        exported_at=str(marker["exported_at"]),
        measured_at=utc_text("seconds"),
        images=images,
        decisions=figures["decisions"],
        agreement=round(figures["agreement"], 4),
        per_label={k: round(v, 4) for k, v in figures["per_label"].items()},
    )
    m = bundle.manifest
    write_manifest(bundle.path, m.model_copy(update={"site_validations": (*m.site_validations, entry)}))
    (bundle.path / SIGNATURE_NAME).unlink(missing_ok=True)
    return load_bundle(bundle.path)
