"""The tablet in a real browser: Debian's Chromium driven by Playwright against a real `edge-app serve` holding a
study that came in through its DICOM receiver. Screenshots at 800x1280 and 1280x800 are kept in
tests/artifacts/browser/ (or $EDGE_TEST_ARTIFACTS). Skipped, with the reason, where Chromium or Playwright is
absent (CI installs both; never `playwright install`, which downloads a browser). Served over HTTPS, as on the
clinic's Wi-Fi: the Secure cookie and the CSRF check's Referer rule are the browser's to honour."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_app.config import Settings
from edge_app.ops.secrets import init_tls
from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.browser import ARGS, CHROMIUM, NEEDS_CHROMIUM, PASSWORD, SMALL_TARGETS
from support.data import ROOT
from support.dicom import dicom_file
from support.tools import EDGE_APP

ARTIFACTS = Path(os.environ.get("EDGE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "browser"

Tablet = tuple[str, str, Callable[[bytes], str]]
pytestmark = [
    pytest.mark.system,
    NEEDS_CHROMIUM,
    pytest.mark.slow,
]


@pytest.fixture
def tablet_server(
    tmp_path: Path, free_port: int, token_for: Callable[..., Any], make_settings: Callable[..., Settings]
) -> Iterator[Tablet]:
    """A served appliance as on the clinic's Wi-Fi (HTTPS with the certificate `edge-app tls init` makes, all
    interfaces), with one clinician and one study received over DICOM; yields (base URL, study UID, a function
    that uploads a PNG through the API and returns its study's UID once diagnosed)."""
    import pydicom
    from pynetdicom import AE

    settings = make_settings()
    data = settings.storage.data_dir
    cert, _, _ = init_tls(settings, [])
    store = Store(data)
    try:
        Accounts(store).add_user("dr-ade", parse_roles("clinician"), PASSWORD)
    finally:
        store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dicom_port = s.getsockname()[1]
    env = {
        **os.environ,
        "EDGE_APP_STORAGE_DATA_DIR": str(data),
        "EDGE_APP_SERVER_HOST": "0.0.0.0",
        "EDGE_APP_SERVER_PORT": str(free_port),
        "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
        "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
        "EDGE_APP_CAPTURE_DICOM_PORT": str(dicom_port),
    }
    proc = subprocess.Popen([*EDGE_APP, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"https://localhost:{free_port}"
    tls = ssl.create_default_context(cafile=str(cert))
    headers = token_for(data)

    def get(path: str) -> bytes:
        req = urllib.request.Request(base + path, headers=headers)
        with urllib.request.urlopen(req, timeout=10, context=tls) as resp:
            return bytes(resp.read())

    def upload(png: bytes) -> str:
        req = urllib.request.Request(
            base + "/api/v1/studies?filename=upload.png",
            data=png,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=60, context=tls) as resp:
            return str(json.loads(resp.read())["uid"])

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/api/v1/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="EDGEAPP")
        assert assoc.is_established
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        while True:
            try:
                if b'"status":"done"' in get(f"/api/v1/studies/{ds.StudyInstanceUID}").replace(b" ", b""):
                    break
            except urllib.error.HTTPError:
                pass  # not received yet
            assert time.monotonic() < deadline + 60, "the study was not diagnosed"
            time.sleep(0.3)
        yield base, str(ds.StudyInstanceUID), upload
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_clinician_reviews_a_study_on_the_tablet(tablet_server: Tablet) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    base, uid, _ = tablet_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # The box's own certificate: the tablet was told to trust it (its fingerprint); this browser is not.
            context = browser.new_context(viewport={"width": 800, "height": 1280}, ignore_https_errors=True)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base + "/")
            assert page.url.startswith(base + "/login")
            page.fill("#username", "dr-ade")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector(f"tr[data-uid='{uid}']")
            page.screenshot(path=str(ARTIFACTS / "worklist-800x1280.png"), full_page=True)

            page.click(f"tr[data-uid='{uid}'] a")
            viewer = page.locator(".viewer").first
            page.wait_for_selector(".viewer[data-drawn]")
            with_heatmap = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            page.uncheck(".heatmap-toggle")
            without = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            assert with_heatmap != without, "the heatmap toggles"
            page.check(".heatmap-toggle")
            page.fill(".heatmap-opacity", "90")
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != with_heatmap, "opacity"
            box = viewer.locator("canvas").bounding_box()
            assert box is not None
            before = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -400)
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != before, "zoom"
            before = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 - 80, box["y"] + box["height"] / 2 - 50, steps=4)
            page.mouse.up()
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != before, "pan"
            page.click(".viewer .wl")
            before = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 40, steps=4)
            page.mouse.up()
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != before, "window/level"
            page.screenshot(path=str(ARTIFACTS / "study-800x1280.png"), full_page=True)

            page.fill("form.review textarea", "Agreed; refer to the district hospital.")
            page.click("form.review .agree-all")
            page.wait_for_selector("text=Review saved.")
            assert "dr-ade" in page.locator(".past-review.latest").inner_text()

            pdf = context.request.get(f"{base}/studies/{uid}/report.pdf")
            assert pdf.ok and pdf.body()[:5] == b"%PDF-"
            (ARTIFACTS / "report.pdf").write_bytes(pdf.body())

            page.select_option("select.autosubmit", "fr")
            page.wait_for_selector("text=Votre relecture")
            page.set_viewport_size({"width": 1280, "height": 800})
            page.screenshot(path=str(ARTIFACTS / "study-fr-1280x800.png"), full_page=True)
            page.click("text=Liste de travail")
            page.wait_for_selector(".badge:has-text('lu')")
            page.screenshot(path=str(ARTIFACTS / "worklist-fr-1280x800.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, f"the browser reported errors (a CSP violation is one): {errors}"


def test_the_clinician_picks_which_finding_s_heatmap(tablet_server: Tablet, nih: Path) -> None:
    """An NIH image with three positive findings: the tablet shows the most probable one's heatmap, another is
    picked from the list, the canvas changes, and the printed report follows the pick."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    base, _, upload = tablet_server
    uid = upload((nih / "images" / "00000442_000.png").read_bytes())
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 800, "height": 1280}, ignore_https_errors=True)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/login")
            page.fill("#username", "dr-ade")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.goto(f"{base}/studies/{uid}")
            page.wait_for_selector(".viewer[data-drawn]")
            labels = page.eval_on_selector_all(".heatmap-choice option", "os => os.map(o => o.dataset.label)")
            assert len(labels) == 3, "one heatmap per positive finding"
            first = page.evaluate("document.querySelector('.viewer canvas').toDataURL()")
            drawn = page.get_attribute(".viewer", "data-drawn")
            page.select_option(".heatmap-choice", index=1)
            page.wait_for_selector(f".viewer[data-drawn]:not([data-drawn='{drawn}'])")
            assert page.evaluate("document.querySelector('.viewer canvas').toDataURL()") != first, "another map"
            href = page.get_attribute("#report", "href")
            assert href is not None and href.endswith(f"report.pdf?heatmap={labels[1]}")
            pdf = context.request.get(base + href)
            assert pdf.ok and pdf.body()[:5] == b"%PDF-"
            page.screenshot(path=str(ARTIFACTS / "study-heatmap-choice-800x1280.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors


def test_a_link_from_another_site_opens_the_tablet_logged_in(
    tmp_path: Path, free_port: int, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    """A link to the tablet on another site's page (here http://localhost, another site than http://127.0.0.1)
    opens the worklist, not the login page: the session cookie goes with a top-level navigation."""
    import http.server
    import threading

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    data = tmp_path / "data"
    store = Store(data)
    try:
        Accounts(store).add_user("dr-ade", parse_roles("clinician"), PASSWORD)
    finally:
        store.close()
    proc = launch(data, free_port)
    base = f"http://127.0.0.1:{free_port}"
    page_html = f'<!doctype html><a id="tablet" href="{base}/">the tablet</a>'.encode()

    class Links(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

    other = http.server.HTTPServer(("127.0.0.1", 0), Links)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_context().new_page()
                page.goto(base + "/login")
                page.fill("#username", "dr-ade")
                page.fill("#password", PASSWORD)
                page.click("#login-form button[type=submit]")
                page.wait_for_url(base + "/")
                page.goto(f"http://localhost:{other.server_port}/links.html")
                page.click("#tablet")
                page.wait_for_load_state()
                assert page.url == base + "/" and page.locator("#worklist").count() == 1, page.url
            finally:
                browser.close()
    finally:
        other.shutdown()
        proc.terminate()
        proc.wait(timeout=30)


def test_a_busy_day_on_the_worklist_by_touch_at_three_sizes(tablet_server: Tablet, nih: Path) -> None:
    """220 studies: the oldest, an unreviewed positive CR, is reached by its patient's name, its filter and paging;
    the refresh announces a new study without changing the row under a finger until tapped; a tap anywhere on a
    row opens its study; every control (the login page's too, and the news once shown) is at least 44x44 CSS px;
    nothing is wider than a 390-px phone."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    import pydicom

    base, oldest, upload = tablet_server
    name = str(pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True).PatientName).split("^")[0]
    upload((nih / "images" / "00000442_000.png").read_bytes())
    for n in range(218):
        try:
            upload(b"\x00" * 300 + n.to_bytes(2, "big"))
        except urllib.error.HTTPError as exc:
            assert exc.code == 422  # refused: a study all the same
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for i, (width, height) in enumerate(((800, 1280), (1280, 800), (390, 844))):
                total = 220 + i  # each size adds one study
                context = browser.new_context(
                    viewport={"width": width, "height": height}, has_touch=True, ignore_https_errors=True
                )
                page = context.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base + "/login")
                small = page.evaluate(SMALL_TARGETS)
                assert not small, f"touch targets under 44x44 on the login page at {width}x{height}: {small}"
                page.fill("#username", "dr-ade")
                page.fill("#password", PASSWORD)
                page.click("#login-form button[type=submit]")
                page.goto(base + "/?sort=newest")
                assert f"1\u201320 of {total}" in page.inner_text(".count")
                if width < 600:  # a phone: cards, not the wide table
                    _assert_cards(page, width)
                for _ in range(12):  # by paging: newest first, it is on the last page
                    if page.locator(f"[data-uid='{oldest}']").count():
                        break
                    with page.expect_navigation():
                        page.tap("a[rel=next]")
                assert page.inner_text(".count").endswith(f"\u2013{total} of {total}"), "on the last page"
                page.goto(base + "/?positive=1&unreviewed=1")
                assert oldest in page.eval_on_selector_all("tbody tr[data-uid]", "rs => rs.map(r => r.dataset.uid)")
                page.fill("input[name=q]", name.lower())
                with page.expect_navigation():
                    page.tap("form.finder > button")
                assert page.eval_on_selector_all("tbody tr[data-uid]", "rs => rs.map(r => r.dataset.uid)") == [oldest]
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{overflow} px wider than the screen at {width}"
                small = page.evaluate(
                    """() => [...document.querySelectorAll('a, button, select, input, summary, label.check')]
                      .filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
                      .filter(e => !(e.type === 'checkbox' && e.closest('label')))
                      .filter(e => !e.classList.contains('open'))
                      .map(e => [e.outerHTML.slice(0, 60), e.getBoundingClientRect()])
                      .filter(([, r]) => r.width < 44 || r.height < 44)"""
                )
                assert not small, f"touch targets under 44 px at {width}: {small}"
                row = page.locator("tbody tr[data-uid]").bounding_box()
                assert row is not None and row["height"] >= 44
                # A fixed point on the first row of the list; a new positive study arrives and the list refreshes.
                page.goto(base + "/")
                x, y = width / 2, page.locator("tbody tr[data-uid]").first.bounding_box()["y"] + 10  # type: ignore[index]
                under = f"document.elementFromPoint({x}, {y}).closest('tr').dataset.uid"
                before = page.evaluate(under)
                newer = upload((nih / "images" / "00000442_000.png").read_bytes()[:-1] + bytes([i]))
                shown = "document.getElementById('news').classList.contains('shown')"
                deadline = time.monotonic() + 40  # the page asks every 15 s
                while not page.evaluate(shown):  # polled from here: the page's CSP forbids wait_for_function's eval
                    assert time.monotonic() < deadline, "no announcement"
                    time.sleep(0.5)
                assert page.evaluate(under) == before, "the row under the finger did not change"
                assert "1 new study" in page.inner_text("#news")
                news = page.locator("#news").bounding_box()
                assert news is not None and min(news["width"], news["height"]) >= 44, f"the news button: {news}"
                page.tap("#news")
                assert page.locator(f"[data-uid='{newer}']").count() == 1
                page.screenshot(path=str(ARTIFACTS / f"worklist-{width}x{height}.png"), full_page=True)
                page.goto(f"{base}/?q={name}")
                box = page.locator(f"tr[data-uid='{oldest}'] td").last.bounding_box()
                assert box is not None
                page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.wait_for_url(f"**/studies/{oldest}")
                context.close()
        finally:
            browser.close()
    assert not errors, errors


def _assert_cards(page: Any, width: int) -> None:
    """The worklist on a phone: no table header, each row a card (a grid of its cells, within the screen), and the
    header bar in at most two rows."""
    assert page.eval_on_selector("table.worklist thead", "e => getComputedStyle(e).display") == "none"
    cards = page.eval_on_selector_all(
        "tbody tr[data-uid]", "rs => rs.map(r => [getComputedStyle(r).display, r.getBoundingClientRect().toJSON()])"
    )
    assert len(cards) == 20 and all(d == "grid" and 0 <= r["left"] < r["right"] <= width for d, r in cards), cards
    # The bar's rows: its shown items in order of their tops, a new row where one starts below the row before.
    rows = page.eval_on_selector(
        ".bar",
        """b => { let rows = 0, bottom = -Infinity;
          const boxes = [...b.children].filter(e => e.getClientRects().length).map(e => e.getBoundingClientRect());
          for (const r of boxes.sort((x, y) => x.top - y.top)) {
            if (r.top >= bottom - 1) { rows++; bottom = r.bottom; } else bottom = Math.max(bottom, r.bottom); }
          return rows; }""",
    )
    height = page.eval_on_selector(".bar", "e => e.getBoundingClientRect().height")
    # Each row holds 44-px controls: two rows, the 8-px gap between them, the 4-px padding and the 1-px border make
    # 105 px; a third row adds at least 52.
    assert rows <= 2 and height <= 2 * 44 + 8 + 2 * 4 + 1, f"the header bar: {rows} rows, {height} px"


def test_two_tablets_behind_one_address_open_the_study_page_at_once(tablet_server: Tablet) -> None:
    """Two browsers sharing one address (two tablets behind the clinic's NAT; Chromium opens up to 6 connections a
    host in each) open the study page at the same moment, each having kept its connections from the worklist
    alive: every script, style and image loads in both (issue 23: the server's cap per address closed one
    unanswered, ERR_EMPTY_RESPONSE) and both viewers draw."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    base, uid, _ = tablet_server
    failed: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pages = []
            for _ in range(2):
                page = browser.new_context(viewport={"width": 800, "height": 1280}, ignore_https_errors=True).new_page()
                page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
                page.on("response", lambda r: failed.append(f"{r.url}: {r.status}") if r.status >= 400 else None)
                page.goto(base + "/login")
                page.fill("#username", "dr-ade")
                page.fill("#password", PASSWORD)
                page.click("#login-form button[type=submit]")
                page.wait_for_selector(f"tr[data-uid='{uid}']")
                pages.append(page)
            for page in pages:  # both at once: the second starts as the first's answer begins
                page.goto(f"{base}/studies/{uid}", wait_until="commit")
            for page in pages:
                page.wait_for_load_state("load")
            assert not failed, failed
            for page in pages:
                page.wait_for_selector(".viewer[data-drawn]")
        finally:
            browser.close()
