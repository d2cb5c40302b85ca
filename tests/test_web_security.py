"""Who may reach what: every route of the app by every role, sessions, tokens, CSRF, headers, the login throttle,
the first-run page, and the refusal to serve the network without TLS or users."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.errors import ConfigError
from edge_app.ops.secrets import init_tls
from edge_app.service import Service
from edge_app.store.accounts import ROLES, parse_roles
from edge_app.web import create_app, services

pytestmark = pytest.mark.system

PUBLIC = None
ANY_ROLE = set(ROLES)
CLINICAL = {"clinician", "technician"}
# Who may reach each endpoint, written out here (not read from the app): a route missing from this table fails.
EXPECTED: dict[str, set[str] | None] = {
    "static": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": PUBLIC,
    "auth.setup": PUBLIC,
    "auth.login_language": PUBLIC,
    "api.health": PUBLIC,
    "auth.language": ANY_ROLE,
    "auth.alive": ANY_ROLE,
    "worklist.index": CLINICAL,
    "worklist.rows": CLINICAL,
    "study.show": {"clinician"},
    "study.view": {"clinician"},
    "study.heatmap": {"clinician"},
    "study.full_depth": {"clinician"},
    "study.review": {"clinician"},
    "study.send_to_model": {"clinician"},
    "study.report": {"clinician"},
    "devices.index": {"technician", "admin"},
    "devices.capture": {"technician"},
    "devices.retry_outbox": {"admin"},
    "admin.users": {"admin"},
    "admin.add_user": {"admin"},
    "admin.change_user": {"admin"},
    "admin.tokens": {"admin"},
    "admin.create_token": {"admin"},
    "admin.revoke_token": {"admin"},
    "admin.models": {"admin"},
    "admin.upload_model": {"admin"},
    "admin.import_model": {"admin"},
    "admin.activate_model": {"admin"},
    "admin.rollback_model": {"admin"},
    "admin.set_thresholds": {"admin"},
    "admin.audit": {"admin"},
    "admin.audit_csv": {"admin"},
    "performance.index": {"admin"},
    "performance.acknowledge": {"admin"},
    "performance.export_csv": {"admin"},
    "performance.export_pdf": {"admin"},
    "api.create_study": CLINICAL,
    "api.retry_outbox": {"admin"},
    "api.capture": CLINICAL,
    "api.video_live": {"clinician"},
    "api.video_preview": CLINICAL,
    "api.list_studies": {"clinician"},
    "api.get_study": {"clinician"},
    "api.result_heatmap": {"clinician"},
}
PASSWORD = "a long enough password"


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def _login(app: Flask, name: str, roles: str) -> FlaskClient:
    services.get_from(app).accounts.add_user(name, parse_roles(roles), PASSWORD)
    client = app.test_client()
    resp = client.post("/login", data={"csrf_token": _csrf(client), "username": name, "password": PASSWORD})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


@pytest.fixture
def study(client: FlaskClient, nih_png: Path) -> dict[str, Any]:
    resp = client.post("/api/v1/studies?filename=chest.png", data=nih_png.read_bytes())
    assert resp.status_code == 201
    return resp.get_json()  # type: ignore[no-any-return]


def _urls(app: Flask, study: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every rule and method of the app, with real values for its arguments."""
    (image,) = study["images"]
    values = {
        "uid": study["uid"],
        "image_id": image["id"],
        "result_id": image["results"][0]["id"],
        "name": "someone",
        "action": "roles",
        "code": "fr",
        "filename": "app.css",
        "sha256": "0" * 64,
        "flag_id": 1,
    }
    out = []
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for arg in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{arg}>", str(values[arg]), path)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, path))
    return out


def test_every_route_by_every_role(app: Flask, study: dict[str, Any], nih_png: Path) -> None:
    """Anonymous: the login page (pages) or 401 (API); a wrong role: 403; the right role gets past the gate to
    the view's own answer (200, 201, a redirect after a form, 404 or 409 where no video source is attached)."""
    urls = sorted(_urls(app, study), key=lambda u: u[0] == "auth.logout")  # logging out: last
    missing = sorted({endpoint for endpoint, _, _ in urls} - EXPECTED.keys())
    assert not missing, f"routes left out of the matrix: {missing}"
    services.get_from(app).accounts.add_user("someone", parse_roles("clinician"), PASSWORD)
    clients = {role: _login(app, f"only-{role}", role) for role in ROLES}
    tokens = {
        role: _csrf(client, "/") if role != "admin" else _csrf(client, "/admin/users")
        for role, client in clients.items()
    }
    anonymous = app.test_client()
    checked = 0
    for endpoint, method, url in urls:
        allowed = EXPECTED[endpoint]
        if allowed is not None:
            resp = anonymous.open(url, method=method)
            if url.startswith("/api/"):
                assert resp.status_code == 401, (method, url)
            else:
                assert resp.status_code in (302, 400), (method, url)  # 400: a form posted without its CSRF token
                if resp.status_code == 302:
                    assert resp.location.startswith("/login"), (method, url)
        for role, client in clients.items():
            data: dict[str, Any] = {"csrf_token": tokens[role]}
            if endpoint == "api.create_study":
                data = {}
            kwargs: dict[str, Any] = {"headers": {"X-CSRFToken": tokens[role]}}
            if method == "POST":
                kwargs["data"] = nih_png.read_bytes() if endpoint == "api.create_study" else data
            resp = client.open(url, method=method, **kwargs)
            if allowed is None or role in allowed:
                assert resp.status_code not in (401, 403), (role, method, url, resp.status_code)
                if allowed is not None:  # public pages may well lead to the login page
                    assert not (resp.status_code == 302 and resp.location.startswith("/login")), (role, method, url)
                assert resp.status_code < 500, (role, method, url)
            elif (role, method, url) == ("admin", "GET", "/"):  # the landing page leads an admin alone to theirs
                assert resp.status_code == 302 and resp.location == "/admin/users"
            else:
                assert resp.status_code == 403, (role, method, url, resp.status_code)
            checked += 1
    assert checked >= 3 * len(EXPECTED)


def test_the_api_takes_a_token_until_it_is_revoked(app: Flask, anonymous: FlaskClient, study: dict[str, Any]) -> None:
    accounts = services.get_from(app).accounts
    secret = accounts.create_token("pacs-bridge", parse_roles("clinician"))
    bearer = {"Authorization": f"Bearer {secret}"}
    assert anonymous.get(f"/api/v1/studies/{study['uid']}", headers=bearer).status_code == 200
    assert anonymous.get("/api/v1/studies", headers={"Authorization": f"Bearer {secret}x"}).status_code == 401
    assert anonymous.get("/api/v1/studies", headers={"Authorization": "Basic abc"}).status_code == 401
    assert anonymous.get("/", headers=bearer).status_code == 302, "a token opens the API, not the pages"
    accounts.revoke_token("pacs-bridge")
    resp = anonymous.get("/api/v1/studies", headers=bearer)
    assert resp.status_code == 401 and "revoked" in resp.get_json()["detail"]
    assert [t.revoked for t in accounts.tokens() if t.name == "pacs-bridge"] == [True]


def test_health_is_open_and_tells_no_patient_data(app: Flask, anonymous: FlaskClient, client: FlaskClient) -> None:
    from support.dicom import dicom_file

    data = dicom_file("RG1_UNCR.dcm").read_bytes()
    assert client.post("/api/v1/studies?filename=rg1.dcm", data=data).status_code == 201
    body = anonymous.get("/api/v1/health").get_data(as_text=True)
    import pydicom

    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    for secret in (str(ds.PatientID), str(ds.PatientName).split("^")[0], str(ds.StudyInstanceUID)):
        assert secret and secret not in body


def test_a_form_without_its_csrf_token_is_refused(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("admin")
    resp = browser.post("/admin/tokens", data={"name": "x", "role": "clinician"})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    resp = browser.post("/admin/tokens", data={"name": "x", "role": "clinician", "csrf_token": "forged"})
    assert resp.status_code == 400
    assert services.get_from(app).accounts.tokens() == [], "nothing was made"
    ok = browser.post(
        "/admin/tokens", data={"name": "x", "role": "clinician", "csrf_token": auth.csrf("/admin/tokens")}
    )
    assert ok.status_code == 200 and [t.name for t in services.get_from(app).accounts.tokens()] == ["x"]


def test_the_api_from_a_logged_in_page_needs_the_csrf_header(auth: Any, browser: FlaskClient, nih_png: Path) -> None:
    auth.login("technician")
    assert browser.post("/api/v1/studies", data=nih_png.read_bytes()).status_code == 400
    token = auth.csrf("/")
    resp = browser.post("/api/v1/studies", data=nih_png.read_bytes(), headers={"X-CSRFToken": token})
    assert resp.status_code == 201


def test_a_tampered_session_cookie_is_logged_out(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("clinician")
    assert browser.get("/").status_code == 200
    cookie = browser.get_cookie("edge_session")
    assert cookie is not None
    value = cookie.value
    forged = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    browser.set_cookie("edge_session", forged)
    resp = browser.get("/")
    assert resp.status_code == 302 and resp.location.startswith("/login")


def test_session_cookie_flags(auth: Any) -> None:
    resp = auth.login("clinician")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie, "plain HTTP on loopback: a Secure cookie would never come back"


def test_the_cookie_is_secure_under_tls(tmp_path: Path, service: Callable[..., Service]) -> None:
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path)}, "model": {"threads": 1}})
    init_tls(settings, [])
    app = create_app(service(settings))
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_security_headers_on_every_answer(auth: Any, browser: FlaskClient, anonymous: FlaskClient) -> None:
    auth.login("clinician")
    for client, path in ((anonymous, "/login"), (anonymous, "/api/v1/health"), (browser, "/"), (browser, "/nowhere")):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin", "none would break every form over HTTPS (Flask-WTF)"
    assert browser.get("/").headers["Cache-Control"] == "no-store", "patient data is not cached"


def test_no_page_holds_an_inline_script_or_style(auth: Any, browser: FlaskClient, study: dict[str, Any]) -> None:
    """The CSP forbids them: one would silently not run."""
    auth.login("clinician,technician,admin", name="all")
    for path in ("/", f"/studies/{study['uid']}", "/devices", "/admin/users", "/admin/tokens", "/admin/audit"):
        page = browser.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), path
        assert "<style" not in page and " style=" not in page and " on" + "click=" not in page, path


def test_login_failures_are_throttled_and_audited(tmp_path: Path, service: Callable[..., Service]) -> None:
    """`login_attempts` failures on a name from one address (no delay per account here): refused from there, the
    right password too, and recorded; another tablet still logs in."""
    settings = {"storage": {"data_dir": str(tmp_path)}, "model": {"threads": 1}, "server": {"login_delay_s": 0.0}}
    app = create_app(service(settings))
    services.get_from(app).accounts.add_user("nurse", parse_roles("clinician"), PASSWORD)
    tablet = app.test_client()

    def login(password: str, client: FlaskClient = tablet, address: str = "127.0.0.1") -> int:
        data = {"csrf_token": _csrf(client), "username": "nurse", "password": password}
        return client.post("/login", data=data, environ_base={"REMOTE_ADDR": address}).status_code

    assert [login("wrong password!") for _ in range(5)] == [401] * 5
    assert login(PASSWORD) == 429, "the right password too, once the limit is reached"
    assert tablet.get("/").status_code == 302
    actions = [e["action"] for e in services.get_from(app).store.audit_trail()]
    assert actions.count("login.failure") == 5 and actions.count("login.refused") == 1
    assert "login.success" not in actions
    assert login(PASSWORD, app.test_client(), "10.0.0.8") == 302, "one tablet's failures do not lock another"


def test_the_throttle_counts_per_address_too(app: Flask) -> None:
    """Spraying one password over many names from one address: 4 x login_attempts failures, then refused."""
    accounts = services.get_from(app).accounts
    accounts.add_user("nurse", parse_roles("clinician"), PASSWORD)
    client = app.test_client()
    for n in range(19):
        data = {"csrf_token": _csrf(client), "username": f"guess{n}", "password": "x" * 12}
        client.post("/login", data=data)
    data = {"csrf_token": _csrf(client), "username": "nurse", "password": PASSWORD}
    assert client.post("/login", data=data).status_code == 302, "19 failures over 19 names: not yet"
    client.post("/logout", data={"csrf_token": _csrf(client, "/")})
    for n in range(1):
        data = {"csrf_token": _csrf(client), "username": f"guess{n}", "password": "x" * 12}
        client.post("/login", data=data)
    data = {"csrf_token": _csrf(client), "username": "nurse", "password": PASSWORD}
    assert client.post("/login", data=data).status_code == 429
    other = app.test_client()
    data = {"csrf_token": _csrf(other), "username": "nurse", "password": PASSWORD}
    assert other.post("/login", data=data, environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 302


def test_an_idle_session_logs_out_and_a_background_refresh_does_not_hold_it(
    tmp_path: Path, service: Callable[..., Service]
) -> None:
    settings = Settings.model_validate(
        {"storage": {"data_dir": str(tmp_path)}, "model": {"threads": 1}, "server": {"idle_logout_min": 1}}
    )
    app = create_app(service(settings))
    client = _login(app, "nurse", "clinician")
    with client.session_transaction() as session:
        session["seen"] = time.time() - 50
    assert client.get("/worklist/rows", headers={"X-Background": "1"}).status_code == 200
    with client.session_transaction() as session:
        assert time.time() - session["seen"] > 49, "a refresh is not activity"
    assert client.get("/").status_code == 200
    with client.session_transaction() as session:
        assert time.time() - session["seen"] < 5, "a page opened is"
        session["seen"] = time.time() - 61
    resp = client.get("/")
    assert resp.status_code == 302 and resp.location.startswith("/login")
    assert client.get("/").status_code == 302, "and the session is gone"


def test_a_password_change_or_a_disabled_account_ends_its_sessions(app: Flask) -> None:
    services.get_from(app).accounts.add_user("boss", parse_roles("admin"), PASSWORD)
    client = _login(app, "nurse", "clinician")
    accounts = services.get_from(app).accounts
    accounts.set_password("nurse", "another long password")
    assert client.get("/").status_code == 302
    client = app.test_client()
    data = {"csrf_token": _csrf(client), "username": "nurse", "password": "another long password"}
    assert client.post("/login", data=data).status_code == 302
    accounts.set_disabled("nurse", True)
    assert client.get("/").status_code == 302
    data = {"csrf_token": _csrf(client), "username": "nurse", "password": "another long password"}
    assert client.post("/login", data=data).status_code == 401, "a disabled account cannot log in"


def test_login_goes_back_where_it_was_asked_only_on_this_server(app: Flask, study: dict[str, Any]) -> None:
    services.get_from(app).accounts.add_user("doc", parse_roles("clinician"), PASSWORD)
    client = app.test_client()
    target = f"/studies/{study['uid']}"
    assert client.get(target).location == f"/login?next={target}"
    for given, expected in (
        (target, target),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/%09/evil.example", "/"),  # a browser drops the tab: //evil.example
        ("/%0d%0aSet-Cookie:%20x=y", "/"),
        ("/\\evil.example", "/"),
    ):
        client = app.test_client()
        data = {"csrf_token": _csrf(client), "username": "doc", "password": PASSWORD}
        assert client.post(f"/login?next={given}", data=data).location == expected


def test_the_first_administrator_only_from_the_box_itself(app: Flask) -> None:
    remote = app.test_client()
    assert remote.get("/setup", environ_base={"REMOTE_ADDR": "192.168.1.7"}).status_code == 404
    assert remote.get("/login", environ_base={"REMOTE_ADDR": "192.168.1.7"}).status_code == 200
    local = app.test_client()
    assert local.get("/login").location == "/setup", "on the box, the login page leads to the first-run page"
    data = {"csrf_token": _csrf(local, "/setup"), "username": "boss", "password": PASSWORD, "confirm": PASSWORD}
    assert local.post("/setup", data=data).location == "/admin/users"
    assert services.get_from(app).accounts.user("boss").roles == {"admin"}
    assert local.get("/admin/users").status_code == 200
    assert app.test_client().get("/setup").status_code == 404, "once a user exists, never again"


def test_the_first_run_page_refuses_a_short_password(app: Flask) -> None:
    local = app.test_client()
    data = {"csrf_token": _csrf(local, "/setup"), "username": "boss", "password": "short", "confirm": "short"}
    assert local.post("/setup", data=data).status_code == 200
    assert services.get_from(app).accounts.active_count() == 0


def test_no_listening_beyond_loopback_without_tls_and_a_user(tmp_path: Path, service: Callable[..., Service]) -> None:
    raw = {"storage": {"data_dir": str(tmp_path)}, "server": {"host": "0.0.0.0"}, "model": {"threads": 1}}
    with pytest.raises(ConfigError, match="needs TLS"):
        service(raw)
    init_tls(Settings.model_validate(raw), ["clinic.local"])
    with pytest.raises(ConfigError, match="no user can log in yet; add one first with `edge-app user add"):
        service(raw)
    with Service(Settings.model_validate({**raw, "server": {"host": "127.0.0.1"}})) as svc:
        svc.accounts.add_user("boss", parse_roles("admin"), PASSWORD)
    create_app(service(raw))


def test_the_audit_log_is_append_only(app: Flask) -> None:
    import sqlite3

    store = services.get_from(app).store
    store.audit("tester", "something")
    for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), store.transaction() as db:
            db.execute(statement)
    assert store.audit_trail()[0]["actor"] == "tester"


def test_the_upload_limit_holds_for_a_logged_in_page(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    app = create_app(
        service({"storage": {"data_dir": str(tmp_path)}, "server": {"max_upload_mb": 1}, "model": {"threads": 1}})
    )
    resp = api_client(app).post("/api/v1/studies", data=b"\0" * (1024 * 1024 + 1))
    assert resp.status_code == 413
    client = _login(app, "tech", "technician")
    resp = client.post("/api/v1/studies", data=b"\0" * (1024 * 1024 + 1), headers={"X-CSRFToken": _csrf(client, "/")})
    assert resp.status_code == 413


def test_a_real_server_over_https_with_its_own_certificate(
    free_port: int, make_settings: Callable[..., Settings]
) -> None:
    """`edge-app tls init`, a user, then `edge-app serve` on all interfaces: HTTPS only, verified against the
    certificate it made, and the session cookie is Secure."""
    import http.cookiejar
    import os
    import ssl
    import subprocess
    import urllib.error
    import urllib.parse
    import urllib.request

    from support.tools import EDGE_APP

    settings = make_settings()
    data = settings.storage.data_dir
    cert, _, _ = init_tls(settings, [])
    from edge_app.store import Store
    from edge_app.store.accounts import Accounts

    store = Store(data)
    Accounts(store).add_user("nurse", parse_roles("clinician"), PASSWORD)
    store.close()
    env = {
        **os.environ,
        "EDGE_APP_STORAGE_DATA_DIR": str(data),
        "EDGE_APP_SERVER_PORT": str(free_port),
        "EDGE_APP_SERVER_HOST": "0.0.0.0",
    }
    proc = subprocess.Popen([*EDGE_APP, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = ssl.create_default_context(cafile=str(cert))
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), urllib.request.HTTPCookieProcessor(jar)
    )
    base = f"https://localhost:{free_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(base + "/api/v1/health", timeout=2).close()
                break
            except (OSError, urllib.error.URLError):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the HTTPS server did not answer"
                time.sleep(0.2)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{free_port}/api/v1/health", timeout=5)
        page = opener.open(base + "/login", timeout=10).read().decode()
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token
        form = urllib.parse.urlencode({"csrf_token": token.group(1), "username": "nurse", "password": PASSWORD})
        req = urllib.request.Request(base + "/login", data=form.encode(), headers={"Referer": base + "/login"})
        with opener.open(req, timeout=30) as resp:
            assert resp.url == base + "/", "logged in, on the worklist"
        cookies = {c.name: c for c in jar}
        assert cookies["edge_session"].secure
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_logging_out_ends_the_session_even_for_a_copied_cookie(app: Flask, auth: Any, browser: FlaskClient) -> None:
    auth.login("clinician")
    cookie = browser.get_cookie("edge_session")
    assert cookie is not None
    copy = app.test_client()
    copy.set_cookie("edge_session", cookie.value)
    assert copy.get("/").status_code == 200
    auth.logout()
    resp = copy.get("/")
    assert resp.status_code == 302 and resp.location.startswith("/login")


def test_a_technician_sends_images_and_reads_no_results(
    app: Flask, client: FlaskClient, anonymous: FlaskClient
) -> None:
    """The technician's answer to a POST carries the image's status, not the study: no patient, no findings. An
    image claiming another patient's study is refused, not slipped into that patient's record."""
    import pydicom

    from support.dicom import dicom_file

    first = client.post("/api/v1/studies?filename=rg1.dcm", data=dicom_file("RG1_UNCR.dcm").read_bytes())
    uid = first.get_json()["uid"]
    secret = services.get_from(app).accounts.create_token("modality", parse_roles("technician"))
    bearer = {"Authorization": f"Bearer {secret}"}
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.SOPInstanceUID, ds.PatientID, ds.PatientName = "1.2.3.4.5.6.7", "OTHER-PATIENT", "OTHER^PATIENT"
    import io

    buf = io.BytesIO()
    ds.save_as(buf)
    resp = anonymous.post("/api/v1/studies?filename=x.dcm", data=buf.getvalue(), headers=bearer)
    body = resp.get_json()
    assert resp.status_code == 422 and body["reason"] == (
        "its Study Instance UID belongs to another patient's study: kept apart, not diagnosed"
    )
    assert body["uid"] != uid and "images" not in body and "study" not in body
    assert str(pydicom.dcmread(dicom_file("RG1_UNCR.dcm")).PatientID) not in resp.get_data(as_text=True)
    (image,) = client.get(f"/api/v1/studies/{uid}").get_json()["images"]
    assert image["id"] == first.get_json()["image_id"], "the patient's study holds only its own image"
    ds.PatientID = pydicom.dcmread(dicom_file("RG1_UNCR.dcm")).PatientID
    ds.SOPInstanceUID = "1.2.3.4.5.6.8"
    buf = io.BytesIO()
    ds.save_as(buf)
    resp = anonymous.post("/api/v1/studies?filename=y.dcm", data=buf.getvalue(), headers=bearer)
    assert resp.status_code == 201 and set(resp.get_json()) == {"uid", "status", "image_id", "duplicate", "kept"}
    assert resp.get_json()["uid"] == uid, "the same patient's next image joins the study"
