"""The study page in a real Chromium (Playwright) against a real front (`edge-app serve --no-worker`) and its
worker (`edge-app worker`), as the appliance's units run them: with the worker stopped, then running. Measured at
800x1280 and 1280x800 (touch) and 390x844 (a phone): the AI summary and the image on the first screen, side by side
in landscape, touch targets, the opacity slider moved by touch, no horizontal overflow; every image shown whatever
became of it; the worker's banner; the report offered only where a model read the study; the patient's context and
other studies."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.browser import ARGS, CHROMIUM, NEEDS_CHROMIUM, PASSWORD, SMALL_TARGETS
from support.dicom import dicom_bytes, dicom_file
from support.processes import free_port
from support.tools import EDGE_APP
from support.web import token_headers

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    NEEDS_CHROMIUM,
]
SIZES = [  # (width, height, touch, phone)
    (800, 1280, True, False),
    (1280, 800, True, False),
    (390, 844, True, True),
]


class Box:
    """A front and, once started, its worker, on one data directory; the API reached with a token."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "EDGE_APP_STORAGE_DATA_DIR": str(data),
            "EDGE_APP_SERVER_PORT": str(self.port),
            "EDGE_APP_SERVER_RESULT_WAIT_S": "0.5",
            "EDGE_APP_WORKER_BEHIND_S": "3600",
        }
        self.front = subprocess.Popen([*EDGE_APP, "serve", "--no-worker"], env=self.env, **_quiet())
        self.worker: subprocess.Popen[str] | None = None
        self.headers = token_headers(data)
        self._until(lambda: self._get("/api/v1/health") is not None, "the front did not start")

    def _get(self, path: str) -> Any:
        try:
            req = urllib.request.Request(self.base + path, headers=self.headers)
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except (OSError, urllib.error.HTTPError):
            return None

    def post(self, data: bytes, filename: str) -> str:
        req = urllib.request.Request(
            f"{self.base}/api/v1/studies?filename={filename}", data=data, headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return str(json.loads(resp.read())["uid"])
        except urllib.error.HTTPError as exc:  # 422: refused, with its study
            return str(json.loads(exc.read())["study"]["uid"])

    def status(self, uid: str) -> str:
        return str(self._get(f"/api/v1/studies/{uid}")["images"][0]["status"])

    def start_worker(self, *uids: str) -> None:
        self.worker = subprocess.Popen([*EDGE_APP, "worker"], env=self.env, **_quiet())
        self._until(lambda: all(self.status(u) != "queued" for u in uids), "the worker read nothing")

    def _until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 90
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in (self.worker, self.front):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _quiet() -> dict[str, Any]:
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "text": True}


def _chest(patient_id: str, study_uid: str, **header: str) -> bytes:
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.PatientID, ds.PatientName = patient_id, "Ade^Bisi"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return dicom_bytes(ds)


def _noise_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (512, 512), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Studies sent while the worker is stopped (pages looked at then), then read once it runs: a chest CR with
    its patient's context and an older study of the same patient, an ultrasound (no model reads it), noise (the
    input guard refuses it), a file that is no image and a chest image of another patient naming the chest study (kept
    apart: refused, no job)."""
    from pydicom.uid import generate_uid

    data = tmp_path_factory.mktemp("study-page") / "data"
    store = Store(data)
    try:
        Accounts(store).add_user("dr-ade", parse_roles("clinician"), PASSWORD)
    finally:
        store.close()
    server = Box(data)
    try:
        older = server.post(_chest("P-77", generate_uid(), StudyDate="20240105"), "older.dcm")
        chest_uid = generate_uid()
        chest = server.post(
            _chest(
                "P-77",
                chest_uid,
                StudyDate="20261201",
                PatientBirthDate="19800615",
                PatientSex="F",
                AccessionNumber="ACC-4411",
            ),
            "chest.dcm",
        )
        us = server.post(dicom_file("US1_UNCR.dcm").read_bytes(), "us.dcm")
        noise = server.post(_noise_png(), "noise.png")
        junk = server.post(b"\x00" * 300, "junk.bin")
        pair = generate_uid()
        server.post(_chest("P-88", pair, ViewPosition="PA"), "pa.dcm")
        server.post(_chest("P-88", pair, ViewPosition="AP"), "ap.dcm")
        apart = server.post(_chest("P-99", chest_uid), "apart.dcm")  # another patient's study: kept apart
        uids = {"older": older, "chest": chest, "us": us, "noise": noise, "junk": junk, "pair": pair, "apart": apart}
        yield {"box": server, "uids": uids}
    finally:
        server.stop()


def _browse(p: Any, base: str, width: int, height: int, touch: bool, phone: bool) -> tuple[Any, Any, list[str]]:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    context = browser.new_context(
        viewport={"width": width, "height": height}, has_touch=touch, is_mobile=phone, device_scale_factor=1
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/login")
    page.fill("#username", "dr-ade")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(base + "/")
    return browser, page, errors


def _rect(page: Any, selector: str) -> dict[str, float]:
    rect: dict[str, float] = page.eval_on_selector(selector, "e => e.getBoundingClientRect().toJSON()")
    return rect


def test_with_the_worker_stopped_a_banner_and_every_image_still_shown(box: dict[str, Any]) -> None:
    """Nothing read yet: the worklist and the study say the AI is not reading, the waiting chest image is shown
    (its view made at the page's request, in a decoder process), and no report is offered."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    server, uids = box["box"], box["uids"]
    assert server.worker is None and server.status(uids["chest"]) == "queued"
    with sync_api.sync_playwright() as p:
        browser, page, errors = _browse(p, server.base, 800, 1280, True, False)
        try:
            banner = page.inner_text("#worker-banner")
            waiting = "6 images wait"  # older, chest, US, noise and the pair (the junk file is refused)
            assert banner.startswith(f"The AI is not reading images: its worker is stopped. {waiting}")
            for name in ("chest", "us", "noise"):
                page.goto(f"{server.base}/studies/{uids[name]}")
                assert page.inner_text("#worker-banner").startswith("The AI is not reading images")
                page.wait_for_selector(".viewer[data-drawn]")
                assert page.inner_text(".ai-summary") == "AI: waiting for the model"
                assert page.locator("#report").count() == 0, "nothing to print yet"
        finally:
            browser.close()
    assert not errors, errors


def test_the_study_page_at_three_sizes_once_read(box: dict[str, Any]) -> None:
    """The worker runs: the chest study's summary and image on the first screen at every size, side by side in
    landscape; every control at least 44x44; the opacity slider moved by touch; nothing wider than the screen; the
    patient's context and other study; no banner."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    server, uids = box["box"], box["uids"]
    if server.worker is None:
        server.start_worker(*uids.values())
    assert server.status(uids["chest"]) == "done"
    with sync_api.sync_playwright() as p:
        for width, height, touch, phone in SIZES:
            browser, page, errors = _browse(p, server.base, width, height, touch, phone)
            try:
                page.goto(f"{server.base}/studies/{uids['chest']}")
                page.wait_for_selector(".viewer[data-drawn]")
                page.screenshot(path=str(_artifacts() / f"study-{width}x{height}.png"))
                assert page.locator("#worker-banner").count() == 0
                summary = page.inner_text(".ai-summary")
                assert summary.startswith("AI: ") and ("positive" in summary or "no finding" in summary), summary
                fold = page.evaluate("innerHeight")
                for selector in (".ai-summary", ".viewer canvas"):
                    rect = _rect(page, selector)
                    assert rect["top"] >= 0 and rect["bottom"] <= fold, (selector, rect, width, height)
                if width > height:
                    canvas, side = _rect(page, ".viewer canvas"), _rect(page, ".pane-side")
                    assert side["left"] >= canvas["right"] and side["top"] < canvas["bottom"], "side by side"
                    assert _rect(page, "table.findings")["top"] < fold, "findings on the first screen"
                    gaps = (canvas["left"], side["left"] - canvas["right"], width - side["right"])
                    assert max(gaps) <= 32, f"wide empty margins: {gaps}"
                assert page.evaluate("document.documentElement.scrollWidth") <= width, "wider than the screen"
                small = page.evaluate(SMALL_TARGETS)
                assert not small, f"touch targets under 44x44 at {width}x{height}: {small}"
                bars = page.eval_on_selector_all("td.bar svg", "es => es.map(e => e.getBoundingClientRect().width)")
                assert bars and min(bars) >= 40, f"the findings' bars at {width}: {bars}"
                assert not page.evaluate(_CUT_PILLS), "a positive pill is cut"
                text = page.inner_text(".patient")
                for part in ("2026-12-01", "46 y", "female", "ACC-4411"):
                    assert part in text, (part, text)
                prior = page.locator(f".priors a[href='/studies/{uids['older']}']")
                assert prior.inner_text() == "2024-01-05 · CR CHEST", "the patient's other study, linked"
                assert page.locator("#report").count() == 1
                _drag_by_touch(page, ".heatmap-opacity")
                assert int(page.input_value(".heatmap-opacity")) > 60, "the slider moved by touch"
            finally:
                browser.close()
            assert not errors, (width, errors)


def test_unread_studies_show_their_image_and_offer_no_report(box: dict[str, Any]) -> None:
    """The ultrasound (no model reads it) and the noise (the input guard refused it) show their picture, a
    one-line reason and no report, whose address answers 409; the file that is no image says it cannot be shown."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    server, uids = box["box"], box["uids"]
    if server.worker is None:
        server.start_worker(*uids.values())
    assert (server.status(uids["us"]), server.status(uids["noise"])) == ("no_model", "outside")
    with sync_api.sync_playwright() as p:
        browser, page, errors = _browse(p, server.base, 800, 1280, True, False)
        try:
            for name, why in (
                ("us", "no model on this appliance reads this kind of image"),
                ("noise", "it does not look like what the model was made for"),
            ):
                page.goto(f"{server.base}/studies/{uids[name]}")
                page.wait_for_selector(".viewer[data-drawn]")
                assert page.inner_text(".ai-summary") == f"Not read by the AI: {why}"
                assert page.locator("#report").count() == 0
                report = page.request.get(f"{server.base}/studies/{uids[name]}/report.pdf")
                assert report.status == 409 and "No findings" not in report.text()
            page.goto(f"{server.base}/studies/{uids['junk']}")
            assert page.inner_text(".unviewable").startswith("This image cannot be shown: it could not be decoded.")
        finally:
            browser.close()
    assert not errors, errors


def test_an_image_kept_apart_for_its_identity_is_shown(box: dict[str, Any]) -> None:
    """A chest image whose Study Instance UID names another patient's study is kept apart in a study of its own,
    refused and given to no model: its page says why and draws its image all the same."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    server, uids = box["box"], box["uids"]
    assert uids["apart"] not in (uids["chest"], uids["older"]) and server.status(uids["apart"]) == "rejected"
    with sync_api.sync_playwright() as p:
        browser, page, errors = _browse(p, server.base, 800, 1280, True, False)
        try:
            page.goto(f"{server.base}/studies/{uids['apart']}")
            assert page.inner_text(".study-head small") == "P-99"
            assert page.locator(".refusal[data-reason-kind=identity]").count() == 1
            page.wait_for_selector(".viewer[data-drawn]")
            assert page.locator(".unviewable").count() == 0 and page.locator("#report").count() == 0
            assert page.evaluate("document.querySelector('.viewer img.preview').naturalWidth") > 0
        finally:
            browser.close()
    assert not errors, errors


def test_the_diagnostic_view_loads_only_when_asked(box: dict[str, Any]) -> None:
    """The 8-bit preview says it is one; the diagnostic view's weight is on its button, nothing of it is loaded
    before the tap; after, the image's every value is there and window/level changes what is shown."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    server, uids = box["box"], box["uids"]
    if server.worker is None:
        server.start_worker(*uids.values())
    with sync_api.sync_playwright() as p:
        browser, page, errors = _browse(p, server.base, 800, 1280, True, False)
        try:
            asked: list[tuple[str, int]] = []
            page.on("requestfinished", lambda r: asked.append((r.url, r.sizes()["responseBodySize"])))
            page.goto(f"{server.base}/studies/{uids['chest']}")
            page.wait_for_selector(".viewer[data-drawn]")
            assert page.inner_text(".preview-note") == "8-bit preview, at most 1024 pixels a side."
            assert page.inner_text(".full-depth") == "Diagnostic view (7.2 MB)", "1955 x 1841 x 2 bytes"
            assert not [url for url, _ in asked if url.endswith("/full")], "nothing loaded before it is asked for"
            preview = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            page.click(".full-depth")
            page.wait_for_selector(".viewer[data-full]")
            (weight,) = [size for url, size in asked if url.endswith("/full")]
            assert weight == 1955 * 1841 * 2
            assert page.is_visible(".full-note") and not page.is_visible(".preview-note")
            assert not page.is_visible(".full-depth"), "loaded: its button goes"
            page.uncheck(".heatmap-toggle")
            shown = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            assert shown != preview
            page.click(".viewer .wl")
            canvas = _rect(page, ".viewer canvas")
            x, y = canvas["left"] + canvas["width"] / 2, canvas["top"] + canvas["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 60, y + 40, steps=4)
            page.mouse.up()
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != shown, "window/level"
            page.screenshot(path=str(_artifacts() / "study-diagnostic-800x1280.png"))
        finally:
            browser.close()
    assert not errors, errors


_CUT_PILLS = """() => [...document.querySelectorAll(".flag")].some(e => {
  const r = e.getBoundingClientRect();
  return e.scrollWidth > e.clientWidth + 1 || r.right > innerWidth;
})"""


def test_the_review_by_touch_agree_with_all_then_one_disagreement(box: dict[str, Any]) -> None:
    """A study of two images by touch at 800x1280, 1280x800 and 390x844: "Agree with all" is one tap and one review
    of both images; a disagreement with one finding of the second image and a referral take a few taps in the
    findings' order; every control at least 44x44; after each save the page shows the review where the clinician
    was; the worklist row says referred."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    from edge_app.store.reviews import Reviews

    server, uids = box["box"], box["uids"]
    if server.worker is None:
        server.start_worker(*uids.values())
    uid = uids["pair"]

    def saved() -> list[Any]:
        store = Store(server.data)
        try:
            return Reviews(store).of_study(uid)
        finally:
            store.close()

    with sync_api.sync_playwright() as p:
        for width, height, touch, phone in SIZES:
            browser, page, errors = _browse(p, server.base, width, height, touch, phone)
            try:
                before = len(saved())
                page.goto(f"{server.base}/studies/{uid}")
                if before:  # a review from the size before: the form is one tap away
                    page.tap("details.review-form > summary")
                page.locator(".agree-all").scroll_into_view_if_needed()
                small = page.evaluate(SMALL_TARGETS)
                assert not small, f"touch targets under 44x44 at {width}x{height}: {small}"
                page.tap(".agree-all")
                page.wait_for_selector("text=Review saved.")
                page.wait_for_selector(".viewer:not([data-drawn])", state="detached")  # each image shown
                assert page.url.endswith("#review")
                latest = _rect(page, ".past-review.latest")
                assert latest["top"] >= 0 and latest["bottom"] <= page.evaluate("innerHeight"), "the review, in view"
                assert "Agrees with all the AI's findings." in page.inner_text(".past-review.latest")
                reviews = saved()
                assert len(reviews) == before + 1, "one review of the study"
                assert len(reviews[0].verdicts) == 2 and not reviews[0].disagreements(), "both images, all agreed"

                page.tap("details.review-form > summary")
                page.tap("details.disagree > summary")
                shown = page.eval_on_selector_all(
                    "section.image:nth-of-type(2) table.findings th",
                    "ths => ths.map(t => t.firstChild.textContent.trim())",
                )
                ticks = page.locator("form.review label.verdict")
                offered = [t.strip() for t in page.locator("form.review label.verdict .name").all_inner_texts()]
                assert offered[len(offered) - len(shown) :] == shown, "the second image's findings, in their order"
                ticks.nth(len(offered) - len(shown)).tap()
                assert page.locator(".agree-all").is_hidden(), "a disagreement: Save, not Agree with all"
                page.tap("form.review label:has(input[value=referred])")
                page.fill("form.review textarea", "AP: not what the AI says; to the radiologist.")
                small = page.evaluate(SMALL_TARGETS)
                assert not small, f"touch targets under 44x44 at {width}x{height}: {small}"
                page.screenshot(path=str(_artifacts() / f"review-{width}x{height}.png"))
                page.tap("form.review .save")
                page.wait_for_selector("text=Review saved.")
                page.wait_for_selector(".viewer:not([data-drawn])", state="detached")
                assert page.url.endswith("#review")
                text = page.inner_text(".past-review.latest")
                assert "Referred" in text, text
                assert f"Disagrees with:\n{shown[0]} (image 2)" in text.replace(": ", ":\n"), text
                assert "to the radiologist" in text
                latest = _rect(page, ".past-review.latest")
                assert latest["top"] >= 0 and latest["bottom"] <= page.evaluate("innerHeight")
                newest = saved()[0]
                assert newest.state == "referred" and len(newest.disagreements()) == 1
                page.goto(server.base + "/")
                assert page.inner_text(f"tr[data-uid='{uid}'] .badge") == "referred"
            finally:
                browser.close()
            assert not errors, (width, errors)


def test_a_refused_save_keeps_the_review_until_one_is_saved(box: dict[str, Any]) -> None:
    """A review typed and ticked (note, referred, one finding disagreed with) whose save is refused, once for a
    stale CSRF token and once because the session ended: nothing saved, and back on the study the note and the
    choices are there again; a good save lets the draft go (the form comes back empty)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    from edge_app.store.reviews import Reviews

    server, uids = box["box"], box["uids"]
    if server.worker is None:
        server.start_worker(*uids.values())
    uid, note = uids["chest"], "Left base: not the consolidation the AI sees."
    study = f"{server.base}/studies/{uid}"

    def reviews() -> int:
        store = Store(server.data)
        try:
            return len(Reviews(store).of_study(uid))
        finally:
            store.close()

    def entered(page: Any) -> tuple[str, str, list[str]]:
        return (
            page.input_value("form.review textarea"),
            page.eval_on_selector("form.review input[name=state]:checked", "e => e.value"),
            page.eval_on_selector_all("form.review input[name=disagree]:checked", "es => es.map(e => e.value)"),
        )

    with sync_api.sync_playwright() as p:
        browser, page, errors = _browse(p, server.base, 800, 1280, True, False)
        try:
            before = reviews()
            page.goto(study)
            if page.locator(".past-review.latest").count():
                page.tap("details.review-form > summary")
            page.tap("details.disagree > summary")
            page.locator("form.review label.verdict").first.tap()
            page.tap("form.review label:has(input[value=referred])")
            page.fill("form.review textarea", note)
            typed = entered(page)
            assert typed[1] == "referred" and len(typed[2]) == 1

            page.eval_on_selector("form.review input[name=csrf_token]", "e => { e.value = 'stale' }")
            with page.expect_navigation() as refused:
                page.tap("form.review .save")
            assert refused.value is not None and refused.value.status == 400, "a stale token: refused"
            page.goto(study)
            assert entered(page) == typed, "the review put back after a refused save"
            assert page.is_visible("form.review textarea") and page.is_hidden(".agree-all")

            page.context.clear_cookies()  # the session ended (the server's idle logout, a restart)
            with page.expect_navigation() as refused:
                page.tap("form.review .save")
            assert refused.value is not None and refused.value.status == 400, "no session: refused"
            assert reviews() == before, "nothing saved"
            page.goto(server.base + "/login")
            page.fill("#username", "dr-ade")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.goto(study)
            assert entered(page) == typed, "the review put back after signing in again"

            page.tap("form.review .save")
            page.wait_for_selector("text=Review saved.")
            assert reviews() == before + 1 and note in page.inner_text(".past-review.latest")
            page.goto(study)
            page.tap("details.review-form > summary")
            assert entered(page) == ("", "read", []), "the draft let go once saved"
            assert not page.evaluate("Object.keys(sessionStorage).filter(k => k.startsWith('draft:'))")
        finally:
            browser.close()
    assert errors == ["Failed to load resource: the server responded with a status of 400 (BAD REQUEST)"] * 2, errors


def _drag_by_touch(page: Any, selector: str) -> None:
    """A finger on the slider's thumb, moved to 90 % of its track (Chrome DevTools' touch events)."""
    page.locator(selector).scroll_into_view_if_needed()
    rect = _rect(page, selector)
    start = float(page.input_value(selector)) / 100
    y = rect["top"] + rect["height"] / 2
    cdp = page.context.new_cdp_session(page)
    points = [rect["left"] + rect["width"] * f for f in (start, start + 0.1, 0.5, 0.7, 0.9)]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0], "y": y}]})
    for x in points[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def _artifacts() -> Path:
    from support.data import ROOT

    out = Path(os.environ.get("EDGE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out
