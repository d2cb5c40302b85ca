"""The outbox against real peers: a real Orthanc, pynetdicom storage SCPs, a socket that takes connections and
answers nothing, one that answers HTTP. Each destination on its own; errors told apart; `edge-app check` echoes
every destination; several objects per association; given-up results re-sent through the API."""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, Verification

from edge_app.config import Settings
from edge_app.outputs.sender import Peer, echo
from edge_app.service import Service
from edge_app.web import create_app
from support.dicom import dicom_bytes, dicom_file
from support.orthanc import Orthanc, toml_destinations
from support.processes import free_port
from support.web import AuthActions, token_headers

pytestmark = pytest.mark.integration


def _until(check: Callable[[], object], timeout: float = 30.0, what: str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Pacs:
    """A pynetdicom storage SCP that keeps what it receives, answers `status`, and counts its associations."""

    def __init__(self, port: int, status: int = 0x0000) -> None:
        self.received: list[Any] = []
        self.associations = 0
        self.status = status
        ae = AE(ae_title="PACS")
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage, Verification):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ESTABLISHED, self._established)],
        )

    def _established(self, event: Any) -> None:
        self.associations += 1

    def _store(self, event: Any) -> int:
        if self.status == 0x0000:
            self.received.append(event.dataset)
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    o = Orthanc(tmp_path / "orthanc")
    yield o
    o.stop()


def _image() -> bytes:
    """A real CR with UIDs of its own (a new study each time)."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return dicom_bytes(ds)


def _settings(tmp_path: Path, destinations: list[tuple[str, int]], **outputs: Any) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1},
            "outputs": {
                "destinations": [{"ae_title": ae, "host": "127.0.0.1", "port": port} for ae, port in destinations],
                "retry_s": 0.5,
                "answer_timeout_s": 2.0,
                **outputs,
            },
        }
    )


def _post(client: FlaskClient, image: bytes) -> None:
    assert client.post("/api/v1/studies?filename=cr.dcm", data=image).status_code == 201


def _web_server(port: int) -> socket.socket:
    """A TCP server that answers whatever it gets with an HTTP error and hangs up (a web server)."""
    listener = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_check_echoes_every_destination_and_tells_each_failure_apart(
    tmp_path: Path, orthanc: Orthanc, cli: Callable[..., Any]
) -> None:
    """`edge-app check` C-ECHOes each destination: Orthanc answers; Orthanc called by another AE title, a closed
    port, a port that takes the connection and says nothing, a web server and a PACS that does not know our AE title
    each fail in their own words."""
    hung = socket.create_server(("127.0.0.1", 0))  # the kernel takes connections into its backlog; no one answers
    web = _web_server(free_port())
    picky_port = free_port()
    picky = AE(ae_title="PICKY")
    picky.add_supported_context(Verification)
    picky.require_calling_aet = ["MODALITY"]
    server = picky.start_server(("127.0.0.1", picky_port), block=False)
    destinations = {
        "ORTHANC": orthanc.dicom_port,
        "NOTORTHANC": orthanc.dicom_port,
        "CLOSED": free_port(),
        "HUNG": hung.getsockname()[1],
        "WEB": web.getsockname()[1],
        "PICKY": picky_port,
    }
    try:
        result = cli(
            "check",
            env={
                "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"),
                "EDGE_APP_OUTPUTS_DESTINATIONS": toml_destinations(destinations),
                "EDGE_APP_OUTPUTS_ANSWER_TIMEOUT_S": "5",  # a loaded machine's Orthanc may take a second
            },
        )
    finally:
        server.shutdown()
        hung.close()
        web.close()
    said = {
        line.split()[2].split("@")[0]: line
        for line in result.stdout.splitlines()
        if line.split()[1:2] == ["destination"]
    }
    assert said["ORTHANC"].startswith("ok") and said["ORTHANC"].endswith("answers C-ECHO")
    expected = {
        "NOTORTHANC": "called AE title rejected",
        "CLOSED": "connection refused",
        "HUNG": "not answered",
        "WEB": "not a DICOM peer",
        "PICKY": "association rejected: the peer does not know our AE title EDGEAPP",
    }
    for ae, words in expected.items():
        assert said[ae].startswith("FAIL") and words in said[ae], said[ae]
    assert result.returncode == 1


def test_the_association_socket_sends_without_nagles_delay(tmp_path: Path) -> None:
    """TCP_NODELAY on the sender's socket while the association is open: a small PDU (a C-ECHO, an SR) goes at
    once, not after the peer's delayed ACK."""
    pacs = Pacs(free_port())
    outputs = _settings(tmp_path, [("PACS", pacs.server.server_address[1])]).outputs
    peer = Peer(outputs.destinations[0], outputs)
    try:
        assert peer.associate({Verification}) is None
        assert peer.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert peer.echo() is None
    finally:
        peer.release()
        pacs.stop()


def _unconnectable() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full, so that Linux drops further SYNs and a connect to it hangs (as
    to a host that is down, or behind a firewall that drops); with the connections that fill its queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filling: list[socket.socket] = []
    while len(filling) < 8:
        client = socket.socket()
        client.settimeout(0.5)
        try:
            client.connect(listener.getsockname())
        except TimeoutError:
            client.close()
            return listener, filling
        filling.append(client)
    raise AssertionError("the accept queue never filled: a connect does not hang here")


def test_a_destination_that_takes_no_connection_times_out_in_the_connect_timeout(tmp_path: Path) -> None:
    """A connect that hangs fails after `connect_timeout_s` (not the longer answer timeout), in its own words."""
    listener, filling = _unconnectable()
    try:
        outputs = _settings(
            tmp_path, [("PACS", listener.getsockname()[1])], connect_timeout_s=2.0, answer_timeout_s=30.0
        ).outputs
        started = time.monotonic()
        error = echo(outputs.destinations[0], outputs)
        elapsed = time.monotonic() - started
    finally:
        for s in (listener, *filling):
            s.close()
    assert error == "timed out: no connection within 2 s (host down, or a firewall drops it)"
    assert 1.8 <= elapsed < 8.0, elapsed


def test_a_frozen_destination_delays_no_other(
    tmp_path: Path, orthanc: Orthanc, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """Orthanc stopped dead (SIGSTOP: it takes connections and answers nothing) while results are made: the other
    destination gets every one of them meanwhile, well within the minute the sender waits for Orthanc's answer (a
    sender shared by both would hold them all that minute); Orthanc gets them all once it runs again."""
    pacs = Pacs(free_port())
    destinations = [("ORTHANC", orthanc.dicom_port), ("PACS", pacs.server.server_address[1])]
    try:
        svc = service(_settings(tmp_path, destinations, answer_timeout_s=60.0))
        client = api_client(create_app(svc))
        orthanc.freeze()
        for _ in range(4):
            _post(client, _image())  # answered once diagnosed: the documents follow at once
        _until(lambda: len(pacs.received) == 8, 40, "the healthy destination waits for the frozen one")
        assert orthanc.proc.poll() is None
        orthanc.thaw()
        _until(lambda: len(orthanc.instances("SR")) == 4, 60, "Orthanc gets them once it runs again")
    finally:
        orthanc.thaw()
        pacs.stop()


def test_what_is_due_goes_in_one_association_after_a_restart(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """Results queued while the destination was away, then a restart: all of them go in one association, at once
    (not after the hold or the retry wait of before)."""
    port = free_port()
    settings = _settings(tmp_path, [("PACS", port)], retry_s=3600.0)
    with Service(settings) as svc:
        client = api_client(create_app(svc))
        for _ in range(3):
            _post(client, _image())
        _until(lambda: svc.store.query("SELECT count(*) FROM outbox WHERE attempts = 1")[0][0] == 6)
    pacs = Pacs(port)
    try:
        with Service(settings):
            _until(lambda: len(pacs.received) == 6, 10)
        assert pacs.associations == 1
    finally:
        pacs.stop()


def test_a_result_given_up_shows_on_health_and_is_sent_again_through_the_api(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """A destination answering 0xA700 until max_attempts: the item is kept as failed, health says degraded with
    the status's meaning, and an administrator's POST /api/v1/outbox/retry sends it once the PACS has room."""
    pacs = Pacs(free_port(), status=0xA700)
    try:
        svc = service(_settings(tmp_path, [("PACS", pacs.server.server_address[1])], max_attempts=2))
        app = create_app(svc)
        client = api_client(app)
        _post(client, _image())
        _until(lambda: sum(b.failed for b in svc.store.backlog()) == 2)
        health = client.get("/api/v1/health").get_json()
        assert health["status"] == "degraded"
        assert "2 result(s) for PACS given up" in health["problem"]
        (entry,) = health["outbox"]
        assert entry["destination"] == "PACS" and entry["failed"] == 2 and entry["waiting"] == 0
        assert entry["last_error"] == "C-STORE status 0xA700 (Refused: Out of Resources)"
        assert client.post("/api/v1/outbox/retry").status_code == 403, "an administrator's action"
        pacs.status = 0x0000
        admin = app.test_client()
        answer = admin.post("/api/v1/outbox/retry", headers=token_headers(tmp_path / "data", "admin"))
        assert answer.get_json() == {"queued": 2}
        _until(lambda: len(pacs.received) == 2, 10)
        _until(lambda: client.get("/api/v1/health").get_json()["status"] == "ok", 10)
        assert svc.store.audit_trail(1)[0]["action"] == "outbox.retry"
    finally:
        pacs.stop()


def test_a_result_given_up_stays_given_up_after_a_restart_until_sent_again(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], cli: Callable[..., Any]
) -> None:
    """Given up while the PACS was away, then a restart with the PACS back: still given up (not sent at start),
    health still degraded saying so; `edge-app outbox retry` then sends it to the running service's sender."""
    port = free_port()
    settings = _settings(tmp_path, [("PACS", port)], max_attempts=1)
    with Service(settings) as svc:
        _post(api_client(create_app(svc)), _image())
        _until(lambda: sum(b.failed for b in svc.store.backlog()) == 2)
    pacs = Pacs(port)
    try:
        with Service(settings) as svc:
            client = api_client(create_app(svc))
            time.sleep(1.0)  # the sender, started, took what was due at once: nothing
            assert pacs.associations == 0 and pacs.received == []
            health = client.get("/api/v1/health").get_json()
            assert health["status"] == "degraded"
            assert "2 result(s) for PACS given up (connection refused" in health["problem"]
            assert [(o["waiting"], o["failed"]) for o in health["outbox"]] == [(0, 2)]
            data, destinations = str(tmp_path / "data"), toml_destinations({"PACS": port})
            env = {"EDGE_APP_STORAGE_DATA_DIR": data, "EDGE_APP_OUTPUTS_DESTINATIONS": destinations}
            result = cli("outbox", "retry", env=env)
            assert result.returncode == 0 and "2 result(s) queued again" in result.stdout, result.stderr
            _until(lambda: len(pacs.received) == 2, 20, "the sender takes them within its idle wait")
            _until(lambda: client.get("/api/v1/health").get_json()["status"] == "ok", 10)
    finally:
        pacs.stop()


def test_documents_not_made_show_on_health_and_the_devices_page_and_are_made_again_when_sent_again(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """A result whose documents cannot be made (its heatmap file gone): given up for the destination in words of
    its own, on health and the devices page, after a restart too; once the file is back, an administrator's
    POST /api/v1/outbox/retry makes them again and the PACS gets the SR and the SC."""
    with Service(_settings(tmp_path, [])) as svc:  # no destination: nothing made yet
        _post(api_client(create_app(svc)), _image())
        ((result_id, image_id),) = svc.store.query("SELECT id, image_id FROM results")
        assert svc.store.documents_due(image_id, [result_id]) == 1
        heatmaps = [svc.store.read_file(sha) for (sha,) in svc.store.query("SELECT sha256 FROM heatmaps")]
        for (sha,) in svc.store.query("SELECT sha256 FROM heatmaps"):
            svc.store.file_path(sha).unlink()
    pacs = Pacs(free_port())
    settings = _settings(tmp_path, [("PACS", pacs.server.server_address[1])])
    reason = "documents not made: a stored file they need is gone, see the log"
    try:
        with Service(settings) as svc:
            _until(lambda: [b.failed for b in svc.store.backlog()] == [1], 30, "made, or tried, at start")
        with Service(settings) as svc:
            app = create_app(svc)
            client = api_client(app)
            health = client.get("/api/v1/health").get_json()
            assert health["status"] == "degraded"
            assert health["problem"] == f"1 result(s) for PACS given up ({reason}): re-send them"
            assert [(o["waiting"], o["failed"], o["last_error"]) for o in health["outbox"]] == [(0, 1, reason)]
            auth = AuthActions(app, app.test_client())
            auth.login("admin")
            assert _outbox_rows(auth.client.get("/devices").get_data(as_text=True))["PACS"][:2] == ("0", "1")
            assert pacs.received == []
            for data in heatmaps:
                svc.store.put_file(data)
            answer = app.test_client().post("/api/v1/outbox/retry", headers=token_headers(tmp_path / "data", "admin"))
            assert answer.get_json() == {"queued": 1}
            _until(lambda: len(pacs.received) == 2, 20, "made again and sent")
            assert sorted(str(ds.SOPClassUID.name) for ds in pacs.received) == [
                "Comprehensive 3D SR Storage",
                "Secondary Capture Image Storage",
            ]
            _until(lambda: client.get("/api/v1/health").get_json()["status"] == "ok", 10)
    finally:
        pacs.stop()


def test_health_is_degraded_while_results_wait_too_long(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    svc = service(_settings(tmp_path, [("PACS", free_port())], backlog_age_s=1.0))
    client = api_client(create_app(svc))
    _post(client, _image())
    _until(lambda: client.get("/api/v1/health").get_json()["status"] == "degraded", 10)
    health = client.get("/api/v1/health").get_json()
    assert "a result for PACS has waited" in health["problem"] and "connection refused" in health["problem"]
    assert health["outbox"][0]["waiting"] == 2 and health["outbox"][0]["oldest_age_s"] >= 1.0


def test_health_is_degraded_while_too_many_results_wait(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """More items waiting than `backlog_count` (a destination away, its items not given up yet): degraded, saying
    how many wait; as many as the threshold is still ok."""
    port = free_port()
    with Service(_settings(tmp_path, [("PACS", port)], backlog_count=1)) as svc:
        client = api_client(create_app(svc))
        _post(client, _image())
        _until(lambda: svc.store.query("SELECT count(*) FROM outbox WHERE attempts >= 1")[0][0] == 2, 10)
        health = client.get("/api/v1/health").get_json()
        assert (health["status"], health["problem"]) == ("degraded", "2 results waiting to be sent (more than 1)")
        assert health["outbox"][0]["waiting"] == 2 and health["outbox"][0]["failed"] == 0
    with Service(_settings(tmp_path, [("PACS", port)], backlog_count=2)) as svc:
        health = api_client(create_app(svc)).get("/api/v1/health").get_json()
        assert (health["status"], health["outbox"][0]["waiting"]) == ("ok", 2)


def _outbox_rows(page: str) -> dict[str, tuple[str, ...]]:
    """The devices page's outbox table: destination -> (waiting, given up, oldest, last error)."""
    rows = re.findall(
        r'<tr class="(?:down|ok)"><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>\s*<td>(.*?)</td><td>(.*?)</td>', page
    )
    return {row[0].split("@")[0]: row[1:] for row in rows}


def test_the_devices_page_shows_the_backlog_and_an_administrator_sends_again(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """One destination away (its items given up at once), one that takes the connection and says nothing (its
    items waiting): each row says how many wait, how many were given up, how old the oldest is, the last error."""
    hung = socket.create_server(("127.0.0.1", 0))
    destinations = [("GONE", free_port()), ("HUNG", hung.getsockname()[1])]
    try:
        svc = service(_settings(tmp_path, destinations, max_attempts=1, answer_timeout_s=60.0))
        app = create_app(svc)
        _post(api_client(app), _image())
        _until(lambda: sum(b.failed for b in svc.store.backlog()) == 2)
        with sqlite3.connect(tmp_path / "data" / "edge-app.sqlite3") as db:  # GONE's items queued 2 h ago
            db.execute("UPDATE outbox SET queued_at = queued_at - 7200 WHERE destination LIKE 'GONE@%'")
        auth = AuthActions(app, app.test_client())
        auth.login("admin")
        page = auth.client.get("/devices").get_data(as_text=True)
        rows = _outbox_rows(page)
        assert rows["GONE"][:3] == ("0", "2", "120 min") and rows["GONE"][3].startswith("connection refused")
        assert rows["HUNG"] == ("2", "0", "0 min", ""), "held by a sender waiting for the answer"
        assert page.count("Send again") == 1, "only where something was given up"
    finally:
        hung.close()  # the waiting association is reset: the sender stops at once
    destination = str(svc.settings.outputs.destinations[0])
    auth.client.post("/devices/outbox/retry", data={"destination": destination})
    failed = [b.failed for b in svc.store.backlog() if b.destination == destination]
    assert failed == [2], "no CSRF token: nothing queued again"
    token = auth.csrf("/devices")
    answer = auth.client.post("/devices/outbox/retry", data={"csrf_token": token, "destination": destination})
    assert answer.status_code == 302
    (entry,) = svc.store.audit_trail(1)
    assert (entry["actor"], entry["subject"], entry["detail"]) == ("admin", destination, "2 item(s) queued again")


def test_why_documents_were_not_made_is_said_without_the_exception_s_text() -> None:
    """The reason goes to /api/v1/health, which anyone may read: a timeout and a missing file in words, any other
    failure by its kind alone, never its text (it may hold the patient's name; the log has it). A timeout as pebble
    raises it."""
    from edge_app.errors import NotFound
    from edge_app.outputs.outbox import MAKE_TIMEOUT_S, not_made

    timed_out = not_made(TimeoutError("Task timeout", MAKE_TIMEOUT_S))
    assert timed_out == f"documents not made: not made within {MAKE_TIMEOUT_S:g} s, see the log"
    assert not_made(NotFound("file abc")) == "documents not made: a stored file they need is gone, see the log"
    assert not_made(FileNotFoundError("x")) == "documents not made: a stored file they need is gone, see the log"
    assert not_made(ValueError("Müller^Zoë: bad name")) == "documents not made: ValueError, see the log"
