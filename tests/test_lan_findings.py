"""Issue 20's smaller findings on the tablet, each through a real `edge-app serve` over HTTP: what a technician's
worklist shows, the session cookie on a link from another site, the first-run page, and no file name in the log."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.tools import EDGE_APP

pytestmark = pytest.mark.system

PASSWORD = "a long enough password"
POSITIVE = "00000442_000.png"  # three positive findings with the reference model (test_browser.py)


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer to look at, not to follow


class Tablet:
    """A browser on the clinic's Wi-Fi: keeps its cookies, posts forms with their CSRF token, follows nothing."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _Stay())

    def open(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Message, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=60) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read().decode()

    def csrf(self, path: str) -> str:
        _, _, page = self.open("GET", path)
        match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def login(self, name: str) -> Message:
        status, headers, body = self.open(
            "POST", "/login", {"csrf_token": self.csrf("/login"), "username": name, "password": PASSWORD}
        )
        assert status == 302, body
        return headers


Served = tuple[str, Path]


@pytest.fixture
def served(tmp_path: Path, free_port: int, launch: Callable[..., subprocess.Popen[str]]) -> Iterator[Served]:
    """`edge-app serve` on loopback with a clinician and a technician; yields (base URL, data directory)."""
    data = tmp_path / "data"
    store = Store(data)
    try:
        accounts = Accounts(store)
        accounts.add_user("dr-ade", parse_roles("clinician"), PASSWORD)
        accounts.add_user("tech-kofi", parse_roles("technician"), PASSWORD)
    finally:
        store.close()
    proc = launch(data, free_port)
    try:
        yield f"http://127.0.0.1:{free_port}", data
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _upload(base: str, headers: dict[str, str], body: bytes, filename: str) -> dict[str, object]:
    req = urllib.request.Request(f"{base}/api/v1/studies?filename={filename}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-uid="([^"]+)"', page)


def test_a_technician_s_worklist_shows_statuses_and_no_ai_result(
    served: Served, nih: Path, token_for: Callable[..., dict[str, str]]
) -> None:
    """Results are the clinician's (the API refuses them to a technician): the technician's worklist shows each
    study's status, newest first, with no finding, no positive flag and no triage order; a clinician's shows them."""
    base, data = served
    headers = token_for(data)
    positive = _upload(base, headers, (nih / "images" / POSITIVE).read_bytes(), "a.png")
    labels = [f["label"] for f in positive["images"][0]["results"][0]["findings"] if f["positive"]]  # type: ignore[index]
    assert labels, "the reference model finds something on this image"
    junk = _upload(base, headers, b"\x00" * 300, "junk.bin")["study"]  # newer, refused

    clinician = Tablet(base)
    clinician.login("dr-ade")
    _, _, page = clinician.open("GET", "/")
    assert _rows(page) == [positive["uid"], junk["uid"]], "the unreviewed positive first"
    assert "AI positive" in page and all(label in page for label in labels)

    technician = Tablet(base)
    technician.login("tech-kofi")
    for path in ("/", "/worklist/rows"):
        status, _, page = technician.open("GET", path, headers={"X-Background": "1"})
        assert status == 200
        assert _rows(page) == [junk["uid"], positive["uid"]], "newest first: the order tells nothing either"
        assert ">done<" in page.replace(" ", "") and "rejected" in page, "each study's status"
        for leak in [*labels, "AI positive", "positive", "Findings", "reviewed"]:
            assert leak not in page, f"{leak!r} shown to a technician on {path}"
    status, _, _ = technician.open("GET", "/api/v1/video/live")
    assert status == 403, "the live video's findings are results too"


def test_a_link_from_another_site_keeps_the_tablet_logged_in(served: Served) -> None:
    """The session cookie is SameSite=Lax: a top-level GET from a link on another site carries it (Strict logged
    the tablet out), while a cross-site POST still needs its CSRF token, refused without it even with the cookie."""
    base, _ = served
    tablet = Tablet(base)
    cookie = tablet.login("dr-ade")["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie
    followed = {"Referer": "http://intranet.example/links.html", "Sec-Fetch-Site": "cross-site"}
    status, _, page = tablet.open("GET", "/", headers={**followed, "Sec-Fetch-Mode": "navigate"})
    assert status == 200 and "dr-ade" in page, "the worklist, not the login page"
    forged = {"Origin": "http://intranet.example", **followed}
    for path in ("/logout", "/language", "/api/v1/capture"):
        status, _, body = tablet.open("POST", path, {"language": "fr"}, headers=forged)
        assert status == 400 and "CSRF" in body, path
    status, _, page = tablet.open("GET", "/")
    assert status == 200 and 'lang="en"' in page, "still logged in, nothing changed"


def test_the_first_run_page_stays_closed_while_any_account_exists(
    tmp_path: Path, free_port: int, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    """Every account disabled is not a new box: /setup (open to any process on the box) stays 404 and the login
    page does not lead there; `edge-app user enable` is the way back. With no account at all it is offered."""
    data = tmp_path / "data"
    proc = launch(data, free_port)
    try:
        tablet = Tablet(f"http://127.0.0.1:{free_port}")
        assert tablet.open("GET", "/setup")[0] == 200, "a new box: the first administrator"
        store = Store(data)
        try:
            Accounts(store).add_user("boss", parse_roles("admin"), PASSWORD)
            Accounts(store).set_disabled("boss", True)
        finally:
            store.close()
        assert tablet.open("GET", "/setup")[0] == 404
        form = {"csrf_token": tablet.csrf("/login"), "username": "mallory", "password": PASSWORD, "confirm": PASSWORD}
        assert tablet.open("POST", "/setup", form)[0] == 404
        status, headers, _ = tablet.open("GET", "/login")
        assert status == 200 and headers["Location"] is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_no_file_name_reaches_the_log_even_at_debug_level(
    tmp_path: Path, free_port: int, nih_png: Path, token_for: Callable[..., dict[str, str]]
) -> None:
    """A file name may name the patient: `edge-app -v serve` logs the image's number, never the name it came
    with, for an upload and for a watched-folder drop, taken or refused."""
    data, inbox, log = tmp_path / "data", tmp_path / "inbox", tmp_path / "serve.log"
    inbox.mkdir()
    env = {
        **os.environ,
        "EDGE_APP_STORAGE_DATA_DIR": str(data),
        "EDGE_APP_SERVER_PORT": str(free_port),
        "EDGE_APP_CAPTURE_FOLDER_ENABLED": "true",
        "EDGE_APP_CAPTURE_FOLDER_PATH": str(inbox),
        "EDGE_APP_CAPTURE_FOLDER_POLL_S": "0.2",
        "EDGE_APP_CAPTURE_FOLDER_STABLE_S": "0",
    }
    base = f"http://127.0.0.1:{free_port}"
    with log.open("w") as out:
        proc = subprocess.Popen([*EDGE_APP, "-v", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/api/v1/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        headers = token_for(data)
        assert _upload(base, headers, nih_png.read_bytes(), "PATIENT-NAME-XYZ.png")["images"]
        assert _upload(base, headers, b"\x00" * 300, "PATIENT-NAME-XYZ.bin")["error"] == "Unprocessable image"
        (inbox / "PATIENT-NAME-XYZ-2.png").write_bytes(nih_png.read_bytes())
        (inbox / "PATIENT-NAME-XYZ-3.dcm").write_bytes(b"\x00" * 300)
        while not ((inbox / "done").is_dir() and (inbox / "failed").is_dir() and not list(inbox.glob("*.*"))):
            assert time.monotonic() < deadline + 60, "the watched folder's files were not taken"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert " DEBUG " in text and "image 4" in text, "the debug log, naming images by number"
    assert "PATIENT-NAME-XYZ" not in text
