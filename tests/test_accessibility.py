"""axe-core (npm's package, see the `axe` fixture) on every page of a real `edge-app serve` in Chromium, as the
role that uses it sees it: the first-run page, login, the worklist, a study with the model's result (its diagnostic
view open too), a reviewed study with the patient's other study, studies whose image was refused, a queued study
under the worker-down banner, the 403 and 404 pages, a study page in French, the devices page, every admin page and
the model performance page, each at 800x1280, 1280x800 and 390x844. Any violation fails."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.browser import ARGS, CHROMIUM, NEEDS_CHROMIUM, PASSWORD
from support.dicom import dicom_bytes, dicom_file
from support.processes import free_port, launch, launch_config, own_environ
from support.tools import EDGE_APP
from support.web import axe_violations, token_headers

SIZES = [(800, 1280), (1280, 800), (390, 844)]  # the tablet upright and on its side, a phone
pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    NEEDS_CHROMIUM,
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A new appliance, no account yet, on localhost (where the first-run page answers), its front and its worker
    apart (`serve --no-worker` and `worker`, as the units run them); yields its base URL and a function that starts
    (True) or stops (False) the worker."""
    data, port = tmp_path / "data", free_port()
    front = launch(data, port, args=("--no-worker",))
    env = own_environ(data, port, launch_config(data, port))  # the front's configuration
    worker: list[subprocess.Popen[Any]] = []

    def run(on: bool) -> None:
        if on:
            worker.append(subprocess.Popen([*EDGE_APP, "worker"], env=env, stdout=subprocess.DEVNULL))
        else:
            stopped = worker.pop()
            stopped.terminate()
            stopped.wait(timeout=30)

    try:
        run(True)
        yield f"http://127.0.0.1:{port}", run
    finally:
        for proc in [*worker, front]:
            proc.terminate()
            proc.wait(timeout=30)


def _post(base: str, headers: dict[str, str], body: bytes, filename: str) -> str:
    req = urllib.request.Request(f"{base}/api/v1/studies?filename={filename}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return str(json.loads(resp.read())["uid"])
    except urllib.error.HTTPError as exc:  # 422: refused, with its study
        return str(json.loads(exc.read())["study"]["uid"])


def _read(base: str, headers: dict[str, str], uid: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        req = urllib.request.Request(f"{base}/api/v1/studies/{uid}", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            if all(i["status"] != "queued" for i in json.loads(resp.read())["images"]):
                return
        assert time.monotonic() < deadline, f"{uid} was not read"
        time.sleep(0.3)


def test_axe_core_is_run_and_reports(axe: Path) -> None:
    """The helper injects axe-core and reports what it finds: an image without a text alternative."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.set_content('<!doctype html><html lang="en"><title>t</title><main><img src="x.png"></main></html>')
            found = axe_violations(page, axe)
            assert [v for v in found if v.startswith("image-alt (critical)")], found
        finally:
            browser.close()


def test_axe_core_finds_no_violation_on_any_page(
    served: tuple[str, Callable[[bool], None]], tmp_path: Path, axe: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    import numpy as np
    from PIL import Image

    (base, worker), data = served, tmp_path / "data"
    found: dict[str, list[str]] = {}
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:

            def person() -> Any:
                page = browser.new_context(viewport={"width": 800, "height": 1280}, has_touch=True).new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                return page

            def check(page: Any, path: str, ready: Callable[[], None] = lambda: None, status: int = 200) -> None:
                """The page loaded once (answered with `status`), then axe-core at each size (the viewport
                resized: the page's layout is the stylesheet's, for that width, on the same document)."""
                page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
                answer = page.goto(base + path)
                assert answer is not None and answer.status == status, (path, answer and answer.status)
                ready()
                for width, height in SIZES:
                    page.set_viewport_size({"width": width, "height": height})
                    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                    shown = f"{path} ({page.url.removeprefix(base)}) at {width}x{height}"
                    found[shown] = axe_violations(page, axe)
                    assert page.evaluate("innerWidth") == width, shown

            def sign_in(page: Any, name: str) -> None:
                page.goto(base + "/login")
                page.fill("#username", name)
                page.fill("#password", PASSWORD)
                page.click("#login-form button[type=submit]")
                page.wait_for_load_state()

            admin = person()
            check(admin, "/setup")
            admin.fill("#username", "admin")
            admin.fill("#password", PASSWORD)
            admin.fill("#confirm", PASSWORD)
            admin.click("form button[type=submit]")
            admin.wait_for_url(base + "/admin/users")
            for path in ("/admin/users", "/admin/tokens", "/admin/models", "/admin/performance", "/admin/audit"):
                check(admin, path)
            check(admin, "/devices")

            store = Store(data)
            try:
                Accounts(store).add_user("dr-ade", parse_roles("clinician"), PASSWORD)
                Accounts(store).add_user("tech", parse_roles("technician"), PASSWORD)
            finally:
                store.close()
            headers = token_headers(data)
            chest = _post(base, headers, dicom_file("RG1_UNCR.dcm").read_bytes(), "chest.dcm")
            again = _post(base, headers, _another_study(), "again.dcm")  # the same patient's other study
            noise = np.random.default_rng(3).integers(0, 256, (512, 512), dtype=np.uint8)
            png = tmp_path / "noise.png"
            Image.fromarray(noise).save(png)
            outside = _post(base, headers, png.read_bytes(), "noise.png")
            junk = _post(base, headers, b"\x00" * 300, "junk.bin")
            for uid in (chest, again, outside):
                _read(base, headers, uid)

            tech = person()
            check(tech, "/login")
            sign_in(tech, "tech")
            check(tech, "/")
            check(tech, "/devices")
            check(tech, f"/studies/{chest}", status=403)

            # The three people share 127.0.0.1, their contexts' kept-alive connections open (issue 23: they once
            # counted against the server's cap per address, and the clinician's viewer script was refused)
            clinician = person()
            sign_in(clinician, "dr-ade")
            check(clinician, "/")
            check(clinician, "/?positive=1&q=nobody")

            def drawn() -> None:
                clinician.wait_for_selector(".viewer[data-drawn]")

            for uid in (chest, outside):
                check(clinician, f"/studies/{uid}", drawn)
            check(clinician, f"/studies/{junk}")
            check(clinician, "/studies/1.2.3.4.5.6.7.8.9", status=404)

            def diagnostic() -> None:
                drawn()
                clinician.click(".full-depth")
                clinician.wait_for_selector(".viewer[data-full]")

            check(clinician, f"/studies/{chest}", diagnostic)

            clinician.goto(f"{base}/studies/{again}")
            clinician.click("form.review .agree-all")
            clinician.wait_for_selector(".past-review.latest")

            def reviewed() -> None:
                drawn()
                assert clinician.locator(".past-review.latest").count() == 1
                assert clinician.locator(f".priors a[href='/studies/{chest}']").count() == 1, "the other study"

            check(clinician, f"/studies/{again}", reviewed)

            worker(False)
            queued = _post(base, headers, _another_study(), "queued.dcm")

            def waiting() -> None:
                drawn()
                assert clinician.inner_text("#worker-banner").startswith("The AI is not reading images")
                assert clinician.inner_text(".ai-summary") == "AI: waiting for the model"

            check(clinician, f"/studies/{queued}", waiting)

            clinician.select_option("select.autosubmit", "fr")
            clinician.wait_for_selector("html[lang=fr]")
            check(clinician, f"/studies/{again}", reviewed)
            assert clinician.locator("html[lang=fr]").count() == 1, "the page in French"
        finally:
            browser.close()
    violations = {page: v for page, v in found.items() if v}
    assert not violations, json.dumps(violations, indent=1)
    refused = "Failed to load resource: the server responded with a status of"
    assert errors == [f"{refused} 403 (FORBIDDEN)", f"{refused} 404 (NOT FOUND)"], errors


def _another_study() -> bytes:
    """RG1_UNCR's patient in a study, series and image of new UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return dicom_bytes(ds)
