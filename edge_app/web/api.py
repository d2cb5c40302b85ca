"""The JSON API for tablets and integrations, under /api/v1."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from edge_app.errors import NotFound
from edge_app.pipeline import Diagnoser, Diagnosis
from edge_app.result import heatmap_png
from edge_app.store import Store
from edge_app.web import services

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Any:
    return jsonify(error="Not Found", detail=str(exc)), 404


@bp.get("/health")
def health() -> Any:
    svc = services.get()
    info = svc.diagnoser.model_info
    return jsonify(
        status="ok",
        runner=info["runner"],
        model=info["name"],
        version=info["version"],
        precision=info["precision"],
        bundle_sha256=svc.diagnoser.bundle.sha256,
    )


@bp.post("/studies")
def create_study() -> Any:
    """Take one image (multipart field `file`, or the raw body with ?filename=), keep it, diagnose it."""
    svc = services.get()
    if request.mimetype == "multipart/form-data":
        try:
            upload = request.files.get("file")
        except ValueError as exc:  # the parser is strict (see create_app): say what is wrong with the body
            return _bad_request(
                f"the multipart body cannot be read ({exc}); a part's headers, such as the file name, must be UTF-8"
            )
        if upload is None:
            return _bad_request("no image: send a multipart field 'file' or the raw bytes")
        digest, size = svc.store.put_stream(upload.stream)
        filename = upload.filename or "upload"
    else:  # the raw bytes, whatever Content-Type the sender put on them
        digest, size = svc.store.put_stream(request.stream)
        filename = request.args.get("filename", "upload")
    if size == 0:
        return _bad_request("no image (the body is empty): send a multipart field 'file' or the raw bytes")
    uid, image_id = svc.store.add_study(digest, size, filename=filename, source="api")
    diagnosis = _diagnose(svc.store, svc.diagnoser, image_id, digest, filename)
    study = svc.store.get_study(uid)
    if diagnosis.status == "rejected":
        return jsonify(error="Unprocessable image", detail=diagnosis.reason, study=study), 422
    if diagnosis.status == "failed":
        return jsonify(error="Internal error", detail=diagnosis.reason, study=study), 500
    return jsonify(study), 201, {"Location": f"/api/v1/studies/{uid}"}


def _bad_request(detail: str) -> Any:
    return jsonify(error="Bad Request", detail=detail), 400


def _diagnose(store: Store, diagnoser: Diagnoser, image_id: int, digest: str, filename: str) -> Diagnosis:
    """Diagnose a stored image and record the outcome, whatever it is."""
    diagnosis = diagnoser.diagnose(store.file_path(digest), source=filename)
    if diagnosis.metadata:
        meta = diagnosis.metadata
        store.set_image_metadata(image_id, meta, patient_id=str(meta.get("patient_id", "")))
    hm = diagnosis.heatmap
    store.add_result(
        image_id,
        status=diagnosis.status,
        model=diagnoser.model_info,
        bundle_sha256=diagnoser.bundle.sha256,
        reason=diagnosis.reason,
        findings=[f.as_dict() for f in diagnosis.findings],
        heatmap=(hm.label, heatmap_png(hm)) if hm is not None else None,
        timings=diagnosis.timings_ms,
    )
    return diagnosis


@bp.get("/studies")
def list_studies() -> Any:
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), 500)
    return jsonify(studies=services.get().store.list_studies(limit))


@bp.get("/studies/<uid>")
def get_study(uid: str) -> Any:
    return jsonify(services.get().store.get_study(uid))


@bp.get("/results/<int:result_id>/heatmap.png")
def result_heatmap(result_id: int) -> Response:
    store = services.get().store
    result = store.get_result(result_id)
    if "heatmap" not in result:
        raise NotFound(f"result {result_id} has no heatmap")
    return Response(store.read_file(result["heatmap"]["sha256"]), mimetype="image/png")
