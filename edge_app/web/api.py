"""The JSON API for tablets and integrations, under /api/v1: a session or a Bearer token (`edge-app token
create`) for everything but /health, which tells no patient data."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from edge_app.errors import NotFound
from edge_app.imaging.encode import jpeg
from edge_app.ingest import Event
from edge_app.outputs.sender import ae_title, backlog_problem
from edge_app.runtime.engines.ensure import engine_status
from edge_app.store.monitoring import Monitoring
from edge_app.web import audit, security, services, worklist

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Any:
    return jsonify(error="Not Found", detail=str(exc)), 404


@bp.get("/health")
@security.public
def health() -> Any:
    svc = services.get()
    models = svc.lifecycle.in_service()
    first = models[0].info() if models else dict.fromkeys(("name", "version", "precision", "runner", "bundle_sha256"))
    backlog = svc.store.backlog()
    flags = Monitoring(svc.store).flags()  # an acknowledged one is listed, and no longer degrades
    worker = svc.worker_state()
    now = time.time()
    problem = "; ".join(
        p
        for p in (
            svc.lifecycle.problem() or (None if models else "no model can be read"),
            backlog_problem(backlog, svc.settings.outputs, now),
            *(f"model monitoring: {f.reason}" for f in flags if f.acknowledged_at is None),
        )
        if p
    )
    return jsonify(
        status="degraded" if problem else "ok",
        problem=problem or None,
        runner=first["runner"],
        model=first["name"],
        version=first["version"],
        precision=first["precision"],
        bundle_sha256=first["bundle_sha256"],
        models=[m.info() for m in models],
        queued=worker.queued,
        # What the study page's banner says: running or not, and how long the oldest queued image has waited.
        worker={
            "state": worker.problem or "ok",
            "running": worker.running,
            "oldest_wait_s": round(worker.waiting_s, 1),
        },
        # Aggregates only: a bundle, a finding, a group (a sex, an age band, a modality, a station), no patient.
        monitoring=[{"kind": f.kind, "reason": f.reason, "acknowledged": f.acknowledged_at is not None} for f in flags],
        # Open to anyone on the Wi-Fi: each source's name and state, not its address, path or credentials.
        sources=[{key: state[key] for key in ("name", "connected")} for state in (s.state() for s in svc.sources)],
        engines=engine_status(svc.settings.engine_cache),
        # Results not sent yet, per destination (by AE title, as sources are named: no address).
        outbox=[
            {
                "destination": ae_title(b),
                "waiting": b.waiting,
                "failed": b.failed,
                "oldest_age_s": round(now - b.oldest_at, 1),
                "last_error": b.last_error,
            }
            for b in backlog
        ],
    )


@bp.post("/outbox/retry")
@security.requires("admin")
def retry_outbox() -> Any:
    """Queue again the results given up (JSON `{"destination": "AE@host:port"}` for one destination, else all);
    audited; answers how many."""
    svc = services.get()
    body = request.get_json(silent=True) or {}
    destination = body.get("destination") if isinstance(body, dict) else None
    if destination is not None and not isinstance(destination, str):
        return _bad_request("destination: a string, AE@host:port as configured")
    principal = security.current()
    count = svc.retry_outputs(principal.name if principal else "api", destination)
    return jsonify(queued=count)


_ANSWERS = {
    "done": (201, None),
    "queued": (202, None),
    "rejected": (422, "Unprocessable image"),
    "no_model": (422, "No model for this image"),
    "outside": (422, "Not what the model reads"),
    "failed": (500, "Internal error"),
}


@bp.post("/studies")
@security.requires("clinician", "technician")
def create_study() -> Any:
    """Take one image (multipart field `file`, or the raw body with ?filename=), hand it to ingest and wait for
    its result: 201 with the study, 202 while it is still queued, 422 or 500 with the reason and the study; 201
    with the reason for an object kept with its study and not diagnosed (`kept`: an SR, a KOS...). A sender
    without the clinician role gets the image's status and the study's UID, not the study."""
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
        stream, filename = upload.stream, upload.filename or "upload"
    else:  # the raw bytes, whatever Content-Type the sender put on them
        stream, filename = request.stream, request.args.get("filename", "upload")
    try:
        added = svc.ingest.submit(stream, filename, "api")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return jsonify(error="Insufficient Storage", detail=exc.strerror or str(exc)), 507
    if added is None:
        return _bad_request("no image (the body is empty): send a multipart field 'file' or the raw bytes")
    wait = svc.settings.server.result_wait_s if svc.worker_running() else 0.0  # no worker: 202 at once
    status, reason = svc.store.wait_for(added.image_id, wait, until=svc.stopping)
    # An object kept with its study, never diagnosed (an SR, one of the box's own): a success, as the receiver says.
    code, error = (201, None) if added.kept else _ANSWERS[status]
    headers = {"Location": f"/api/v1/studies/{added.study_uid}"}
    image = {"image_id": added.image_id, "duplicate": added.duplicate, "kept": added.kept}
    principal = security.current()
    if principal is None or "clinician" not in principal.roles:  # a technician sends images, reads no results
        answer = {"uid": added.study_uid, "status": status, **({"reason": reason} if reason else {}), **image}
        return (jsonify(error=error, **answer) if error else jsonify(answer)), code, headers
    study = svc.store.get_study(added.study_uid).json()
    if error is not None:
        return jsonify(error=error, detail=reason, study=study, **image), code, headers
    return jsonify({**study, **image, **({"reason": reason} if added.kept else {})}), code, headers


@bp.post("/capture")
@security.requires("clinician", "technician")
def capture() -> Any:
    """Take the current video frame as a study (the tablet's capture button; a footswitch does the same)."""
    svc = services.get()
    if not svc.ingest.has_capture:
        return jsonify(error="Conflict", detail="no video source is configured ([capture.video])"), 409
    svc.ingest.event(Event("capture", {}, "api"))
    return jsonify(status="requested"), 202


@bp.get("/video/live")
@security.requires("clinician")
def video_live() -> Any:
    """The newest live-inference result on the video feed ([capture.video] infer_every): findings, so a
    clinician's, as every result."""
    live = services.get().live
    if live is None:
        raise NotFound("live inference is off ([capture.video] enabled and infer_every)")
    latest = live.latest()
    if latest is None:
        return jsonify(status="waiting for the first frame"), 202
    return jsonify(latest)


@bp.get("/video.mjpeg")
@security.requires("clinician", "technician")
def video_preview() -> Response:
    """The video feed as MJPEG for the tablet (multipart/x-mixed-replace), at most PREVIEW_FPS frames a second;
    each viewer holds one request thread while it watches."""
    svc = services.get()
    grabber = next((s for s in svc.sources if s.name == "video"), None)
    if grabber is None:
        raise NotFound("no video source is configured ([capture.video])")
    latest = grabber.latest  # type: ignore[attr-defined]

    def frames() -> Iterator[bytes]:
        shown = -1
        while not svc.stopping.is_set():
            number, rgb = latest()
            if rgb is not None and number != shown:
                shown = number
                yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg(rgb, quality=70) + b"\r\n"
            svc.stopping.wait(1.0 / PREVIEW_FPS)

    return Response(frames(), mimetype="multipart/x-mixed-replace; boundary=frame")


PREVIEW_FPS = 10


def _bad_request(detail: str) -> Any:
    return jsonify(error="Bad Request", detail=detail), 400


MAX_STUDIES = 200  # studies a page of GET /studies holds at most (docs/integrator.md); more: the `next` link


@bp.get("/studies")
@security.requires("clinician")
@audit.reads("studies.list")
def list_studies() -> Any:
    """A page of studies (newest first unless `sort` says otherwise), the worklist's filters honoured, with the
    number matching in all and the link to the next page."""
    limit = request.args.get("limit", 50, type=int)
    offset = request.args.get("offset", 0, type=int)
    if limit < 1 or offset < 0:
        return _bad_request("limit is a whole number from 1, offset one from 0")
    limit = min(limit, MAX_STUDIES)
    args = {"sort": "newest", **request.args.to_dict()}
    found = services.get().store.find_studies(worklist.study_query(args, True, offset, limit))
    kept: dict[str, Any] = {k: v for k, v in request.args.items() if k in worklist.FILTERS}
    more = offset + limit < found.total
    return jsonify(
        studies=[study.json() for study in found.studies],
        total=found.total,
        offset=offset,
        limit=limit,
        next=url_for("api.list_studies", **kept, limit=limit, offset=offset + limit) if more else None,
    )


@bp.get("/studies/<uid>")
@security.requires("clinician")
@audit.reads("study.view")
def get_study(uid: str) -> Any:
    return jsonify(services.get().store.get_study(uid).json())


@bp.get("/results/<int:result_id>/heatmap.png")
@security.requires("clinician")
@audit.reads("heatmap.view")
def result_heatmap(result_id: int) -> Response:
    """The heatmap of the positive finding `?label=` (default: the most probable)."""
    store = services.get().store
    result = store.get_result(result_id)
    label = request.args.get("label")
    shown = result.heatmap(label)
    if shown is None:
        about = f"for {label!r} (it has: {', '.join(m.label for m in result.heatmaps)})" if label else ""
        raise NotFound(f"result {result_id} has no heatmap {about}".strip())
    return Response(store.read_file(shown.sha256), mimetype="image/png")
