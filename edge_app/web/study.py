"""A study for the clinician: each image with its heatmap and findings, the review, the printable report."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import format_decimal, get_locale, ngettext
from flask_babel import gettext as _

from edge_app.errors import DecoderUnavailable, ImageRejected, NotFound, UserError
from edge_app.imaging.decode import full_depth_bytes, has_full_depth
from edge_app.imaging.header import age_string
from edge_app.store import Image, Result, Study
from edge_app.store.reviews import ResultsChanged
from edge_app.web import audit, security, services
from edge_app.web.forms import ActionForm, ReviewForm
from edge_app.web.words import label_of

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
    return _page(uid, ReviewForm())


def _page(uid: str, form: ReviewForm, disagree: frozenset[str] = frozenset(), status: int = 200) -> Any:
    """The study page; `form` and `disagree` (the "<result id>:<label>" ticked) as the clinician entered them where
    a review could not be saved."""
    svc = services.get()
    study = _study(uid)
    unviewable = _make_views(study)
    if unviewable is not None:
        study = _study(uid)  # with the views just made
    shas = {result.bundle_sha256 for image in study.images for result in image.results}
    cards = {
        sha: svc.lifecycle.manifest_of(sha) for sha in shas
    }  # each result's model card, where its bundle is still here
    first = study.images[0].metadata if study.images else {}
    return render_template(
        "study.html",
        main_class="wide",  # the image and its findings side by side take the whole width
        cards=cards,
        summaries={image.id: ai_summary(image) for image in study.images},
        full_weights={
            image.id: _weight(full_depth_bytes(image.metadata))
            for image in study.images
            if has_full_depth(image.metadata) and not image.purged_at
        },
        patient=patient_context(first),
        priors=[
            (prior, _shown_date(prior), ai_summary(prior.images[0]) if prior.images else "")
            for prior in svc.store.patient_studies(study.patient_id)
            if prior.uid != study.uid
        ],
        has_result=has_result(study),
        unviewable=unviewable or {},
        study=study,
        reviews=svc.reviews.of_study(study.uid),
        reviewed=[(image, image.latest_ok) for image in study.images if image.latest_ok is not None],
        form=form,
        disagree=disagree,
        action=ActionForm(),
        models=svc.lifecycle.in_service(),
    ), status


@bp.get("/<uid>/images/<int:image_id>/view.jpg")
@security.requires("clinician")
@audit.reads("image.view")
def view(uid: str, image_id: int) -> Response:
    image = _image(_study(uid), image_id)
    if not image.view_sha256:
        abort(404)
    return Response(services.get().store.read_file(image.view_sha256), mimetype="image/jpeg")


@bp.get("/<uid>/images/<int:image_id>/full")
@security.requires("clinician")
@audit.reads("image.full")
def full_depth(uid: str, image_id: int) -> Response:
    """The diagnostic view's data, asked for by the clinician: the image's values at full bit depth, 16-bit
    little-endian row by row, their size, scale and the header's window in X-Full-* headers (viewer.js windows
    them); 422 saying why where an image has none."""
    image = _image(_study(uid), image_id)
    if image.purged_at:
        abort(404)
    try:
        full = services.get().views.full_depth(image)
    except ImageRejected as exc:
        return Response(exc.reason, status=422, mimetype="text/plain")
    height, width = full.values.shape
    headers = {
        "X-Full-Width": str(width),
        "X-Full-Height": str(height),
        "X-Full-Offset": repr(full.offset),
        "X-Full-Step": repr(full.step),
        "X-Full-Center": repr(full.center),
        "X-Full-Window": repr(full.width),
        "X-Full-Inverted": "1" if full.inverted else "0",
    }
    return Response(full.values.astype("<u2").tobytes(), mimetype="application/octet-stream", headers=headers)


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


@bp.post("/<uid>/review")
@security.requires("clinician")
def review(uid: str) -> Any:
    """One review of the study: "Agree with all" (`all`), or agree except the findings ticked `disagree`
    ("<result id>:<label>"); read or referred; the note. `result`: the result ids the page showed. Saved: back to
    the review on the page; not saved: the page again with what was entered."""
    svc = services.get()
    _study(uid)  # 404 where there is no such study
    form = ReviewForm()
    ticked = frozenset(request.form.getlist("disagree"))
    disagree = set() if request.form.get("all") else {_pair(value) for value in ticked}
    principal = security.current()
    if not form.validate() or principal is None:
        flash(_("The review could not be saved: %(reason)s", reason="; ".join(_errors(form))), "error")
        return _page(uid, form, ticked, 400)
    try:
        saved = svc.reviews.review_study(
            uid,
            principal.name,
            form.state.data,
            form.note.data or "",
            disagree,
            seen=[int(v) for v in request.form.getlist("result") if v.isdigit()],
        )
    except ResultsChanged:
        flash(_("The AI's results changed since the page was opened: check them and save again."), "error")
        return _page(uid, form, ticked, 409)
    except UserError as exc:
        flash(_("The review could not be saved: %(reason)s", reason=str(exc)), "error")
        return _page(uid, form, ticked, 400)
    results = " ".join(f"result={rid}" for rid in saved.verdicts)
    svc.store.audit(principal.name, "review.add", uid, f"review={saved.id} state={saved.state} {results}".strip())
    flash(_("Review saved."), "saved")  # "saved": the page lets go of the review's draft kept in the tablet
    return redirect(url_for("study.show", uid=uid, _anchor="review"))


def _pair(value: str) -> tuple[int, str]:
    """ "<result id>:<label>" as (result id, label); result 0 (none: the store refuses it) where not that form."""
    rid, _sep, label = value.partition(":")
    return int(rid) if rid.isdigit() else 0, label


@bp.get("/<uid>/report.pdf")
@security.requires("clinician")
@audit.reads("report.export")
def report(uid: str) -> Response:
    from edge_app.outputs.report import study_report

    svc = services.get()
    study = _study(uid)
    if not has_result(study):  # a refused or unread study has no findings to print: never "No findings"
        return Response(
            _("No report: no model has read this study (see the study page for why)."),
            status=409,
            mimetype="text/plain",
        )
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


def _make_views(study: Study) -> dict[int, str] | None:
    """Make the view of each image that has none yet and may decode (waiting while the worker is down, or read
    by no model before views were made for such images, or kept apart for its identity: refused, never decoded);
    None where none was missing, else why each image that does not decode cannot be shown. An image refused by the
    decoder is not tried again, nor one whose view was refused (`Views.make`)."""
    missing = [
        i
        for i in study.images
        if not i.view_sha256 and not i.purged_at and (i.status != "rejected" or i.reason_kind == "identity")
    ]
    if not missing:
        return None
    unviewable = {}
    for image in missing:
        try:
            services.get().views.make(image)
        except ImageRejected as exc:
            unviewable[image.id] = exc.reason
        except DecoderUnavailable as exc:  # the image may decode later: the page still opens
            unviewable[image.id] = str(exc)
    return unviewable


def _weight(size: int) -> str:
    """A download's size in the clinician's language (7.2 MB, 7,2 Mo)."""
    if size >= 1e6:
        return str(_("%(mb)s MB", mb=format_decimal(round(size / 1e6, 1), format="#,##0.0")))
    return str(_("%(kb)s KB", kb=format_decimal(size // 1000)))


def has_result(study: Study) -> bool:
    """Whether a model read an image of the study (what a report prints)."""
    return any(image.latest_ok is not None for image in study.images)


def ai_summary(image: Image) -> str:
    """One line: what the AI made of the image (its positive findings by their names in the page's language, most
    probable first), or why it did not read it."""
    result = image.latest_ok
    if result is not None:
        positive = sorted((f for f in result.findings if f.positive), key=lambda f: -f.probability)
        if not positive:
            return str(_("AI: no finding above threshold"))
        named = ", ".join(f"{label_of(result.bundle_sha256, f.label)} {f.probability:.2f}" for f in positive)
        return str(
            ngettext(
                "AI: %(num)d finding positive — %(findings)s",
                "AI: %(num)d findings positive — %(findings)s",
                len(positive),
                findings=named,
            )
        )
    if image.status == "queued":
        return str(_("AI: waiting for the model"))
    why = {
        "rejected": _("the image was refused"),
        "no_model": _("no model on this appliance reads this kind of image"),
        "outside": _("it does not look like what the model was made for"),
    }.get(image.status, _("the model failed on this image"))
    return str(_("Not read by the AI: %(why)s", why=why))


def patient_context(meta: Any) -> dict[str, str]:
    """Study date, age, sex and accession number as the first image's DICOM header gives them (shown as given
    where a value is not the DICOM form)."""
    study_date = _date(str(meta.get("study_date", "")))
    age = _age(str(meta.get("patient_age", "")), _date(str(meta.get("patient_birth_date", ""))), study_date)
    sex = {"F": _("female"), "M": _("male"), "O": _("other")}.get(str(meta.get("patient_sex", "")), "")
    return {
        "study_date": study_date.isoformat() if study_date else str(meta.get("study_date", "")),
        "age": age,
        "sex": sex,
        "accession": str(meta.get("accession_number", "")),
    }


def _shown_date(study: Study) -> str:
    """A study's date as its DICOM gives it (else the day it arrived), as the page shows dates."""
    given = study.images[0].metadata.get("study_date", "") if study.images else ""
    return patient_context({"study_date": given})["study_date"] or study.created_at[:10]


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _age(patient_age: str, born: dt.date | None, on: dt.date | None) -> str:
    """Patient Age as given (its unit kept: "3 mo"), else the birth date against the study date."""
    units = {"Y": _("%(n)d y"), "M": _("%(n)d mo"), "W": _("%(n)d wk"), "D": _("%(n)d d")}
    if (given := age_string(patient_age)) is not None:
        return str(units[given[1]] % {"n": given[0]})
    if born is None or on is None or on < born:
        return ""
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return str(units["Y"] % {"n": years} if years >= 2 else units["M"] % {"n": (on - born).days * 12 // 365})


def _errors(form: ReviewForm) -> list[str]:
    return [str(message) for messages in form.errors.values() for message in messages]
