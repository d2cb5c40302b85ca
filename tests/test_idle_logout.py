"""The idle logout in a real Chromium (Playwright, its clock fast-forwarded) against a real `edge-app serve` whose
timeout is 2 minutes: the warning a minute before, "Stay signed in", the note kept through the logout, the message
after it, and sign-in back to the same study."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.browser import ARGS, CHROMIUM, NEEDS_CHROMIUM, PASSWORD
from support.dicom import dicom_file
from support.processes import free_port, launch
from support.web import token_headers

NOTE = "Faint opacity, right base; ask for a lateral view."
pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    NEEDS_CHROMIUM,
]


@pytest.fixture
def study(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A served appliance logging out after 2 idle minutes, a clinician and a chest study the model has read;
    yields (base URL, the study's UID)."""
    data, port = tmp_path / "data", free_port()
    store = Store(data)
    try:
        Accounts(store).add_user("dr-ade", parse_roles("clinician"), PASSWORD)
    finally:
        store.close()
    proc = launch(data, port, {"EDGE_APP_SERVER_IDLE_LOGOUT_MIN": "2"})
    base, headers = f"http://127.0.0.1:{port}", token_headers(data)
    try:
        req = urllib.request.Request(
            f"{base}/api/v1/studies?filename=chest.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes(), headers=headers
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            uid = str(json.loads(resp.read())["uid"])
        deadline = time.monotonic() + 90
        while True:
            req = urllib.request.Request(f"{base}/api/v1/studies/{uid}", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as resp:
                if json.loads(resp.read())["images"][0]["status"] == "done":
                    break
            assert time.monotonic() < deadline, "the study was not read"
            time.sleep(0.3)
        yield base, uid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_idle_logout_warns_keeps_the_note_and_leads_back(study: tuple[str, str]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    base, uid = study
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 800, "height": 1280}, has_touch=True).new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.clock.install()
            page.goto(base + "/login")
            page.fill("#username", "dr-ade")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.goto(f"{base}/studies/{uid}")
            page.fill("form.review textarea", NOTE)
            banner = page.locator("#idle-warning")

            page.clock.fast_forward(58_000)
            assert banner.is_hidden(), "no warning before the last minute"
            page.clock.fast_forward(4_000)
            assert banner.is_visible(), "a warning a minute before"
            assert banner.inner_text().startswith("You will be signed out in a minute")
            stay = page.locator("#stay-signed-in").bounding_box()
            assert stay is not None and min(stay["width"], stay["height"]) >= 44, f"a touch target: {stay}"
            with page.expect_response("**/session/alive") as alive:
                page.click("#stay-signed-in")
            assert alive.value.status == 204, "the server's session kept"
            assert banner.is_hidden()
            page.clock.fast_forward(100_000)
            assert page.url == f"{base}/studies/{uid}", "still signed in 100 s after 'Stay signed in'"

            page.clock.fast_forward(10_000)
            assert banner.is_visible(), "warned again"
            with page.expect_navigation():
                page.clock.fast_forward(15_000)  # 2 minutes without a touch
            assert page.url.startswith(base + "/login"), page.url
            assert "You were signed out after 2 minutes without activity." in page.inner_text(".flash")
            page.fill("#username", "dr-ade")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_url(f"{base}/studies/{uid}")
            assert page.input_value("form.review textarea") == NOTE, "the note typed before the logout"
        finally:
            browser.close()
    assert not errors, errors
