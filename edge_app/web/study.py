"""A study for the clinician: each image with its heatmap and findings, the review, the printable report."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _

from edge_app.errors import NotFound, UserError
from edge_app.store import Image, Result, Study
from edge_app.store.reviews import VERDICTS
from edge_app.web import audit, security, services
from edge_app.web.forms import ActionForm, ReviewForm

bp = Blueprint("study", __name__, url_prefix="/studies")


def _study(uid: str) -> Study:
    try:
        return services.get().store.get_study(uid)
    except NotFound:
        abort(404)


def _image(study: Study, image_id: int) -> Image:
    image = study.image(image_id)
    if image is None:
        abort(404)
    return image


def _result(study: Study, result_id: int) -> tuple[Image, Result]:
    for image in study.images:
        for result in image.results:
            if result.id == result_id:
                return image, result
    abort(404)


@bp.get("/<uid>")
@security.requires("clinician")
@audit.reads("study.view")
def show(uid: str) -> Any:
    svc = services.get()
    study = _study(uid)
    reviews = {image.id: svc.reviews.of_image(image.id) for image in study.images}
    shas = {result.bundle_sha256 for image in study.images for result in image.results}
    cards = {
        sha: svc.lifecycle.manifest_of(sha) for sha in shas
    }  # each result's model card, where its bundle is still here
    return render_template(
        "study.html",
        cards=cards,
        study=study,
        reviews=reviews,
        form=ReviewForm(),
        action=ActionForm(),
        models=svc.lifecycle.in_service(),
        verdicts=VERDICTS,
    )


@bp.get("/<uid>/images/<int:image_id>/view.jpg")
@security.requires("clinician")
@audit.reads("image.view")
def view(uid: str, image_id: int) -> Response:
    image = _image(_study(uid), image_id)
    if not image.view_sha256:
        abort(404)
    return Response(services.get().store.read_file(image.view_sha256), mimetype="image/jpeg")


@bp.get("/<uid>/results/<int:result_id>/heatmap.png")
@security.requires("clinician")
@audit.reads("heatmap.view")
def heatmap(uid: str, result_id: int) -> Response:
    """The heatmap of the finding `?label=` (default: the most probable positive one)."""
    _, result = _result(_study(uid), result_id)
    shown = result.heatmap(request.args.get("label"))
    if shown is None:
        abort(404)
    return Response(services.get().store.read_file(shown.sha256), mimetype="image/png")


@bp.post("/<uid>/images/<int:image_id>/model")
@security.requires("clinician")
def send_to_model(uid: str, image_id: int) -> Any:
    """Send an image another model refused, or none read, to a model the clinician picks."""
    svc = services.get()
    image = _image(_study(uid), image_id)
    principal = security.current()
    if not ActionForm().validate() or principal is None:
        flash(_("The request could not be used. Reload the page and try again."), "error")
    else:
        try:
            model = svc.send_to_model(image.id, request.form.get("bundle", ""), principal.name)
        except UserError as exc:
            flash(str(exc), "error")
        else:
            flash(_("Sent to %(model)s.", model=f"{model.name} {model.version}"), "info")
    return redirect(url_for("study.show", uid=uid, _anchor=f"image-{image.id}"))


@bp.post("/<uid>/results/<int:result_id>/review")
@security.requires("clinician")
def review(uid: str, result_id: int) -> Any:
    svc = services.get()
    image, result = _result(_study(uid), result_id)
    form = ReviewForm()
    labels = [f.label for f in result.findings]
    verdicts = {label: request.form.get(f"verdict-{label}", "") for label in labels}
    missing = [label for label, verdict in verdicts.items() if verdict not in VERDICTS]
    principal = security.current()
    if not form.validate() or principal is None:
        flash(_("The review could not be saved: %(reason)s", reason="; ".join(_errors(form))), "error")
    elif missing:
        flash(_("Agree or disagree with each finding (missing: %(labels)s).", labels=", ".join(missing)), "error")
    else:
        try:
            saved = svc.reviews.add(result_id, principal.name, verdicts, form.note.data or "")
        except UserError as exc:
            flash(str(exc), "error")
        else:
            svc.store.audit(principal.name, "review.add", uid, f"image={image.id} result={result_id} review={saved.id}")
            flash(_("Review saved."), "info")
    return redirect(url_for("study.show", uid=uid, _anchor=f"image-{image.id}"))


@bp.get("/<uid>/report.pdf")
@security.requires("clinician")
@audit.reads("report.export")
def report(uid: str) -> Response:
    from edge_app.outputs.report import study_report

    svc = services.get()
    study = _study(uid)
    pictures = {image.id: svc.store.read_file(image.view_sha256) for image in study.images if image.view_sha256}
    chosen = request.args.get("heatmap")  # the finding whose heatmap the clinician shows on the tablet
    heatmaps = {
        result.id: (shown.label, svc.store.read_file(shown.sha256))
        for image in study.images
        for result in image.results
        if (shown := result.heatmap(chosen) or result.heatmap()) is not None
    }
    reviews = {image.id: svc.reviews.of_image(image.id) for image in study.images}
    shas = {result.bundle_sha256 for image in study.images for result in image.results}
    pdf = study_report(
        study,
        pictures,
        heatmaps,
        reviews,
        _,
        cards={sha: svc.lifecycle.manifest_of(sha) for sha in shas},
        language=str(get_locale()),
    )
    return Response(
        pdf,
        mimetype="application/pdf",
        headers={"Content-Disposition": f'inline; filename="report-{uid[-24:]}.pdf"'},
    )


def _errors(form: ReviewForm) -> list[str]:
    return [str(message) for messages in form.errors.values() for message in messages]
