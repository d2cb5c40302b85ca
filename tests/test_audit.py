"""The audit log and the login limits, through a real `edge-app serve` reached from several loopback addresses
(127.0.0.x: the address the service sees and records): every read of patient data and every refused login
recorded, rate-limited; the log chained by hashes that `edge-app check` and the audit page verify; a delay per
account that grows with each failed login on it and survives a restart."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles

pytestmark = pytest.mark.system

PASSWORD = "a long enough password"
Launch = Callable[..., subprocess.Popen[str]]
Cli = Callable[..., subprocess.CompletedProcess[str]]


class Tablet:
    """A browser (or an integration, with a token) at one address: keeps its session cookie, posts forms."""

    def __init__(self, port: int, address: str = "127.0.0.1", headers: dict[str, str] | None = None) -> None:
        self.port, self.address, self.headers = port, address, dict(headers or {})
        self.cookie = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.headers, **({"Cookie": self.cookie} if self.cookie else {})}
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=(self.address, 0))
        try:
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.getheader("Set-Cookie"):
            self.cookie = str(resp.getheader("Set-Cookie")).split(";", 1)[0]
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def get(self, path: str) -> int:
        return self.request("GET", path)[0]

    def login(self, name: str, password: str) -> tuple[int, dict[str, str], str]:
        page = self.request("GET", "/login")[2].decode()
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token, page
        status, headers, body = self.request(
            "POST", "/login", {"csrf_token": token.group(1), "username": name, "password": password}
        )
        return status, headers, body.decode()


def _accounts(data: Path, **users: str) -> str:
    """Users (name=roles) and a clinician token; returns the token's secret."""
    store = Store(data)
    try:
        accounts = Accounts(store)
        for name, roles in users.items():
            accounts.add_user(name, parse_roles(roles), PASSWORD)
        return accounts.create_token("ris", parse_roles("clinician,technician"))
    finally:
        store.close()


def _trail(data: Path) -> list[dict[str, Any]]:
    store = Store(data)
    try:
        return list(reversed(store.audit_trail(-1)))
    finally:
        store.close()


def _stop(proc: subprocess.Popen[str]) -> None:
    """As systemd stops the unit: SIGTERM, and as long as its TimeoutStopSec (90 s) to end (a loaded CI machine
    once took over 30 s)."""
    proc.terminate()
    proc.wait(timeout=90)


def test_every_read_of_patient_data_is_audited_with_who_and_from_where(
    tmp_path: Path, launch: Launch, free_port: int, nih: Path
) -> None:
    """Token and session, list and detail, images, heatmaps, report: one row each, saying who, what and from
    where; the same read again within the window adds none, a study that does not exist adds none."""
    data = tmp_path / "data"
    secret = _accounts(data, **{"dr-ade": "clinician"})
    proc = launch(data, free_port)
    try:
        api = Tablet(free_port, "127.0.0.3", {"Authorization": f"Bearer {secret}"})
        chest = (nih / "images" / "00000442_000.png").read_bytes()  # three positive findings: heatmaps
        status, headers, _ = api.request("POST", "/api/v1/studies?filename=chest.png", body=chest)
        assert status == 201
        uid = headers["location"].rsplit("/", 1)[1]
        study = json.loads(api.request("GET", f"/api/v1/studies/{uid}")[2])
        image = study["images"][0]
        result = image["results"][0]
        label = result["heatmaps"][1]["label"]
        for _ in range(5):  # again and again: one row
            assert api.get(f"/api/v1/studies/{uid}") == 200
        assert api.get("/api/v1/studies?limit=5") == 200
        assert api.get(f"/api/v1/results/{result['id']}/heatmap.png") == 200
        assert api.get("/api/v1/studies/1.2.3.4") == 404
        tablet = Tablet(free_port, "127.0.0.4")
        assert tablet.login("dr-ade", PASSWORD)[0] == 302
        for path in (
            "/",
            "/worklist/rows",
            f"/studies/{uid}",
            f"/studies/{uid}/images/{image['id']}/view.jpg",
            f"/studies/{uid}/results/{result['id']}/heatmap.png?label={label}",
            f"/studies/{uid}/report.pdf?heatmap={label}",
        ):
            assert tablet.get(path) == 200, path
    finally:
        _stop(proc)
    reads = {
        (e["actor"], e["action"], e["subject"], e["detail"])
        for e in _trail(data)
        if e["action"] in ("studies.list", "worklist.view", "study.view", "image.view", "heatmap.view", "report.export")
    }
    assert reads == {
        ("token:ris", "study.view", uid, "api.get_study from 127.0.0.3"),
        ("token:ris", "studies.list", "", "api.list_studies limit=5 from 127.0.0.3"),
        ("token:ris", "heatmap.view", uid, f"api.result_heatmap result_id={result['id']} from 127.0.0.3"),
        ("dr-ade", "worklist.view", "", "worklist.index from 127.0.0.4"),
        ("dr-ade", "worklist.view", "", "worklist.rows from 127.0.0.4"),
        ("dr-ade", "study.view", uid, "study.show from 127.0.0.4"),
        ("dr-ade", "image.view", uid, f"study.view image_id={image['id']} from 127.0.0.4"),
        ("dr-ade", "heatmap.view", uid, f"study.heatmap result_id={result['id']} label={label} from 127.0.0.4"),
        ("dr-ade", "report.export", uid, f"study.report heatmap={label} from 127.0.0.4"),
    }
    assert [e["action"] for e in _trail(data)].count("study.view") == 2, "five reads of one study: one row"


def test_a_flood_of_reads_is_counted_not_written_row_by_row(
    tmp_path: Path, launch: Launch, free_port: int, nih_png: Path
) -> None:
    """At most `audit_rows_per_window` rows per person in a window: the first read over it writes a notice, the
    rest are counted in one row when the window ends; the same read after the window is written again."""
    data = tmp_path / "data"
    secret = _accounts(data)
    env = {"EDGE_APP_SERVER_AUDIT_WINDOW_S": "2", "EDGE_APP_SERVER_AUDIT_ROWS_PER_WINDOW": "3"}
    proc = launch(data, free_port, env)
    try:
        api = Tablet(free_port, "127.0.0.5", {"Authorization": f"Bearer {secret}"})
        assert api.request("POST", "/api/v1/studies?filename=chest.png", body=nih_png.read_bytes())[0] == 201
        for limit in range(1, 41):
            assert api.get(f"/api/v1/studies?limit={limit}") == 200
        time.sleep(2.5)
        assert api.get("/api/v1/studies?limit=1") == 200
    finally:
        _stop(proc)
    rows = [(e["action"], e["subject"], e["detail"]) for e in _trail(data) if e["actor"] == "token:ris"]
    assert rows == [
        ("studies.list", "", "api.list_studies limit=1 from 127.0.0.5"),
        ("studies.list", "", "api.list_studies limit=2 from 127.0.0.5"),
        ("studies.list", "", "api.list_studies limit=3 from 127.0.0.5"),
        ("audit.suppressed", "", "more than 3 rows in 2 s: the rest of this window are counted, not written"),
        ("audit.suppressed", "", "37 not written"),
        ("studies.list", "", "api.list_studies limit=1 from 127.0.0.5"),
    ]


def test_forty_guesses_from_ten_addresses_are_slowed_and_a_restart_keeps_the_delay(
    tmp_path: Path, launch: Launch, free_port: int
) -> None:
    """A delay per account, doubling with each failed login on it: the guesses during it, sent ten at a time, are
    answered "wait" without the password being checked, and recorded (once per address in the window); a restart
    keeps the count; the right password after the delay logs in."""
    data = tmp_path / "data"
    _accounts(data, nurse="clinician")
    proc = launch(data, free_port)
    try:
        with ThreadPoolExecutor(10) as pool:  # ten at a time: no two checked in one opening of the delay
            answers = list(
                pool.map(lambda n: Tablet(free_port, f"127.0.0.{10 + n % 10}").login("nurse", "guess!!"), range(40))
            )
        checked = [status for status, _, _ in answers].count(401)
        assert 1 <= checked <= 3, [status for status, _, _ in answers]
        waited = [(h, page) for status, h, page in answers if status == 429]
        assert len(waited) == 40 - checked and all(int(h["retry-after"]) >= 1 for h, _ in waited)
        assert all("Too many failed logins on this account: wait" in page for _, page in waited)
    finally:
        _stop(proc)
    refused = [e for e in _trail(data) if e["action"] == "login.refused"]
    assert 1 <= len(refused) <= 10 and all(e["actor"] == "nurse" for e in refused)
    assert [e["action"] for e in _trail(data)].count("login.failure") == checked

    proc = launch(data, free_port)
    try:
        tablet = Tablet(free_port, "127.0.0.30")
        while (answer := tablet.login("nurse", "one more guess!"))[0] == 429:  # the delay of before the restart
            time.sleep(int(answer[1]["retry-after"]))
        assert answer[0] == 401
        status, headers, _ = tablet.login("nurse", PASSWORD)
        assert status == 429, "the right password too is not checked during the delay"
        assert int(headers["retry-after"]) == 2**checked, "the failures of before the restart still count"
        time.sleep(int(headers["retry-after"]))
        assert tablet.login("nurse", PASSWORD)[0] == 302
        assert Tablet(free_port, "127.0.0.31").login("nurse", "wrong again!!")[0] == 401, "a success starts afresh"
    finally:
        _stop(proc)


def test_the_limits_per_address_survive_a_restart(tmp_path: Path, launch: Launch, free_port: int) -> None:
    """`login_attempts` failures on a name from one address: refused from there (and recorded), also after a
    restart; another address still logs in."""
    data = tmp_path / "data"
    _accounts(data, nurse="clinician")
    env = {"EDGE_APP_SERVER_LOGIN_DELAY_S": "0"}
    proc = launch(data, free_port, env)
    try:
        tablet = Tablet(free_port, "127.0.0.40")
        assert [tablet.login("nurse", "not the password")[0] for _ in range(5)] == [401] * 5
    finally:
        _stop(proc)
    proc = launch(data, free_port, env)
    try:
        assert tablet.login("nurse", PASSWORD)[0] == 429
        assert Tablet(free_port, "127.0.0.41").login("nurse", PASSWORD)[0] == 302
    finally:
        _stop(proc)
    (refused,) = [e for e in _trail(data) if e["action"] == "login.refused"]
    assert refused["actor"] == "nurse" and refused["detail"] == "from 127.0.0.40: too many failures from there"


def _tamper(data: Path, statement: str) -> None:
    """What the issue's attacker did: drop the triggers, change the log, put the triggers back."""
    db = sqlite3.connect(data / "edge-app.sqlite3", isolation_level=None)
    triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")
    kept = triggers.fetchall()
    assert len(kept) == 2
    for name, _ in kept:
        db.execute(f"DROP TRIGGER {name}")
    db.execute(statement)
    for _, sql in kept:
        db.execute(sql)
    db.close()


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("UPDATE audit SET actor = 'someone else' WHERE id = 3", "entry 3 was changed (or an entry before it)"),
        ("DELETE FROM audit WHERE id = 3", "entry 4 does not follow entry 2: entries between them were deleted"),
    ],
)
def test_an_edited_audit_log_is_found_by_the_check_and_the_audit_page(
    tmp_path: Path, cli: Cli, launch: Launch, free_port: int, statement: str, shown: str
) -> None:
    data = tmp_path / "data"
    _accounts(data, boss="admin")
    store = Store(data)
    for n in range(5):
        store.audit("dr-ade", "study.view", f"1.2.{n}")
    store.close()
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(data), "EDGE_APP_SERVER_PORT": "1"}
    intact = cli("check", env=env)
    assert "ok    audit log: 7 entries, each chained to the one before" in intact.stdout.splitlines()
    _tamper(data, statement)
    check = cli("check", env=env)
    assert check.returncode == 1
    failed = f"FAIL  audit log: {shown}: the log was altered outside edge-app; keep a copy of the data directory"
    assert any(line.startswith(failed) for line in check.stdout.splitlines()), check.stdout
    proc = launch(data, free_port)
    try:
        admin = Tablet(free_port)
        assert admin.login("boss", PASSWORD)[0] == 302
        page = admin.request("GET", "/admin/audit")[2].decode()
    finally:
        _stop(proc)
    assert f"The audit log was altered outside edge-app: {shown}." in page


def test_the_delay_per_account_doubles_up_to_a_minute() -> None:
    from edge_app.store.logins import account_delay

    assert [account_delay(n, 1.0) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert account_delay(10_000, 1.0) == 60 and account_delay(3, 0.0) == 0, "0 s: no delay"
