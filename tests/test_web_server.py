"""The web server against slow and idle clients (slowloris, silent TLS connections), its TLS suites and HSTS,
through a real `edge-app serve`."""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_app.config import Settings
from edge_app.ops.secrets import init_tls
from support.processes import server_log
from support.tools import EDGE_APP

pytestmark = pytest.mark.system

ATTACKER = "127.0.0.2"  # another peer on the loopback network; the tablet's requests come from 127.0.0.1
Launch = Callable[..., subprocess.Popen[str]]
Served = tuple[ssl.SSLContext, subprocess.Popen[str]]


@pytest.fixture
def https(free_port: int, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Served]]:
    """Start `edge-app serve` over HTTPS (the certificate `edge-app tls init` makes) on `free_port`, with extra
    environment variables; returns, once the server answers, a client context trusting that certificate and the
    server's process."""
    procs: list[subprocess.Popen[str]] = []

    def start(**env: str) -> Served:
        settings = make_settings()
        data = settings.storage.data_dir
        cert, _, _ = init_tls(settings, [])
        context = ssl.create_default_context(cafile=str(cert))
        environ = {**os.environ, "EDGE_APP_STORAGE_DATA_DIR": str(data), "EDGE_APP_SERVER_PORT": str(free_port)}
        proc = subprocess.Popen(
            [*EDGE_APP, "serve"], env={**environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"https://localhost:{free_port}/api/v1/health", timeout=2, context=context)
                return context, proc
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def _connect(port: int, context: ssl.SSLContext | None = None, source: str = ATTACKER) -> socket.socket | None:
    """A connection from `source` (through the TLS handshake with `context`), or None where the server refused
    it."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
        return context.wrap_socket(sock, server_hostname="localhost") if context else sock
    except OSError:
        return None


def _silent(port: int, source: str = ATTACKER) -> socket.socket:
    """A TCP connection from `source` that sends nothing (connecting in the background: a server that stopped
    accepting leaves it pending)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    sock.connect_ex(("127.0.0.1", port))
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """The server answered (a 408) or closed: it sends these connections nothing else but TLS session tickets."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    timeout = sock.gettimeout()
    sock.settimeout(0.05)
    try:
        return sock.recv(1) is not None  # an answer, or b"": closed
    except (TimeoutError, ssl.SSLWantReadError):
        return False  # a ticket only
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class Attack:
    """`slow` connections sending a request head a line a second (slowloris; over TLS with `context`) and
    `silent` ones sending nothing, all from ATTACKER, opened again as the server closes them, as an attacker
    would."""

    def __init__(self, port: int, context: ssl.SSLContext | None, slow: int = 50, silent: int = 50) -> None:
        self.port, self.context = port, context
        self.slow = [self._slow() for _ in range(slow)]
        self.held = sum(s is not None for s in self.slow)
        self.silent = [_silent(port) for _ in range(silent)]  # a burst of connections, as the tablet comes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _slow(self) -> socket.socket | None:
        sock = _connect(self.port, self.context)
        try:
            if sock is not None:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            return None
        return sock

    def _run(self) -> None:
        while not self._stop.wait(1):
            for i, sock in enumerate(self.slow):
                try:
                    if sock is None or _closed_by_server(sock):
                        raise ConnectionError
                    sock.sendall(b"X-Slow: yes\r\n")
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.slow[i] = self._slow()
            for i, sock in enumerate(self.silent):
                if _closed_by_server(sock):
                    sock.close()
                    self.silent[i] = _silent(self.port)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in [*self.slow, *self.silent]:
            if sock is not None:
                sock.close()


def _tablet_waits(url: str, context: ssl.SSLContext | None) -> list[float]:
    """Seconds the login page took, asked every half second for 7 s (longer than a request head may take, so
    the attacker's cut connections are opened again meanwhile); no answer in 2 s counts as infinite."""
    waits = []
    for _ in range(14):
        start = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                assert resp.status == 200
                waits.append(time.monotonic() - start)
        except OSError:
            waits.append(float("inf"))
        time.sleep(0.5)
    return waits


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_tablet_is_served_while_slow_and_silent_clients_hold_connections(
    scheme: str, tmp_path: Path, free_port: int, launch: Launch, https: Callable[..., Served]
) -> None:
    """50 slowloris connections and 50 silent ones from one peer: the tablet's login page still answers
    within 1 s (issue 20: four of them stopped the service), and the log holds no traceback about them."""
    context: ssl.SSLContext | None = None
    if scheme == "https":
        context, proc = https()
        url = f"https://localhost:{free_port}/login"
    else:
        proc = launch(tmp_path / "data", free_port)
        url = f"http://127.0.0.1:{free_port}/login"
    attack = Attack(free_port, context)
    try:
        assert attack.held >= 4, "the attack holds at least as many connections as the server once had threads"
        waits = _tablet_waits(url, context)
    finally:
        attack.stop()
        time.sleep(0.5)  # the server sees them closed
        proc.terminate()
        # the HTTPS server's output is its pipe; the launched HTTP one's, its log file
        output = proc.communicate(timeout=20)[0] or server_log(tmp_path / "data", free_port).read_text()
    assert max(waits) < 1.0, waits
    assert "Traceback" not in output, output


def test_the_handshake_and_the_request_head_have_a_deadline(free_port: int, https: Callable[..., Served]) -> None:
    """A TCP connection that never starts its TLS handshake, and one sending its request head a line every half
    second, are both closed `server.header_timeout_s` after they came, without a traceback in the log."""
    context, proc = https(EDGE_APP_SERVER_HEADER_TIMEOUT_S="2")
    start = time.monotonic()
    silent = _silent(free_port)
    slow = _connect(free_port, context)
    assert slow is not None
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    closed: dict[str, float] = {}
    while len(closed) < 2 and time.monotonic() - start < 8:
        time.sleep(0.5)
        for name, sock in (("silent", silent), ("slow", slow)):
            if name not in closed and _closed_by_server(sock):
                closed[name] = time.monotonic() - start
        if "slow" not in closed:
            slow.sendall(b"X-Slow: yes\r\n")
    silent.close()
    slow.close()
    assert set(closed) == {"silent", "slow"}, closed
    assert all(1.5 <= seconds <= 3.5 for seconds in closed.values()), closed
    proc.terminate()
    assert "Traceback" not in proc.communicate(timeout=20)[0]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_one_peer_holds_at_most_max_connections_per_peer(
    scheme: str, tmp_path: Path, free_port: int, launch: Launch, https: Callable[..., Served]
) -> None:
    """With `server.max_connections_per_peer = 3`: a peer's kept-alive idle connections hold no worker and do not
    count (a browser keeps 6); three holding workers (request heads coming slowly) do: the peer's next request is
    answered 503 with Retry-After and Connection: close, not cut unanswered (a tablet's lost script), while another
    peer is served; once one of the three closes, the peer is served again. Over TLS too (its handshake made by
    the refusing thread)."""
    limit = {"EDGE_APP_SERVER_MAX_CONNECTIONS_PER_PEER": "3"}
    context: ssl.SSLContext | None = None
    if scheme == "https":
        context, proc = https(**limit)
    else:
        proc = launch(tmp_path / "data", free_port, limit)

    def get(source: str, status: int = 200) -> http.client.HTTPConnection:
        conn = (
            http.client.HTTPSConnection("localhost", free_port, timeout=5, source_address=(source, 0), context=context)
            if context
            else http.client.HTTPConnection("127.0.0.1", free_port, timeout=5, source_address=(source, 0))
        )
        conn.request("GET", "/api/v1/health")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == status, (resp.status, body)
        if status == 200:  # HSTS over HTTPS only
            assert (resp.getheader("Strict-Transport-Security") is None) == (context is None)
        if status == 503:
            assert resp.getheader("Retry-After") == "1" and resp.will_close and b"reloads" in body
        return conn

    try:
        idle = [get(ATTACKER) for _ in range(6)]  # kept alive, open, idle
        # back in cheroot's selector: the last one's worker counts until it puts it back, just after its answer
        time.sleep(0.3)
        busy = [_connect(free_port, context) for _ in range(3)]
        for sock in busy:
            assert sock is not None
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # the rest of the head never comes
        time.sleep(0.3)  # in their workers
        get(ATTACKER, 503).close()
        get("127.0.0.1").close()
        busy.pop().close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 3
        while True:
            try:
                get(ATTACKER).close()
                break
            except AssertionError:
                assert time.monotonic() < deadline, "a closed connection no longer holds a worker"
                time.sleep(0.1)
        for conn in idle:
            conn.close()
        for sock in busy:
            sock.close()  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _write_video(path: Path) -> None:
    """A second of grey frames (MJPEG in AVI), for a video source playing it in a loop."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (64, 48))
    for i in range(24):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stop_is_prompt_whatever_clients_hold(
    scheme: str,
    tmp_path: Path,
    free_port: int,
    launch: Launch,
    https: Callable[..., Served],
    token_for: Callable[..., dict[str, str]],
) -> None:
    """SIGTERM while the tablet watches the video preview, with kept-alive idle connections, request heads and
    handshakes that never end (their deadline 30 s away), and a peer over its limit opening connection after
    connection (the accept loop handing them to the refusing thread as the signal comes: a signal raising in
    that loop once left the refusals' queue waking no one, and the stop waited for ever): the server stops in
    order (exit status 0, "stopped" logged, no traceback) within 3 s."""
    video = tmp_path / "feed.avi"
    _write_video(video)
    env = {
        "EDGE_APP_SERVER_MAX_CONNECTIONS_PER_PEER": "3",
        "EDGE_APP_SERVER_HEADER_TIMEOUT_S": "30",
        "EDGE_APP_CAPTURE_VIDEO_ENABLED": "true",
        "EDGE_APP_CAPTURE_VIDEO_SOURCE": str(video),
        "EDGE_APP_CAPTURE_VIDEO_LOOP_FILE": "true",
    }
    context: ssl.SSLContext | None = None
    if scheme == "https":
        context, proc = https(**env)
    else:
        proc = launch(tmp_path / "data", free_port, env)
    host = "localhost" if context else "127.0.0.1"
    held: list[socket.socket | None] = []
    stopped = threading.Event()

    def flood() -> None:  # from ATTACKER, over its limit: each one refused
        while not stopped.wait(0.005):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", free_port), timeout=1, source_address=(ATTACKER, 0)).close()

    def watch(resp: http.client.HTTPResponse) -> None:  # the tablet reads the preview as it comes
        with contextlib.suppress(OSError, http.client.HTTPException):
            while resp.read1(65536):
                pass

    def client() -> http.client.HTTPConnection:
        if context:
            return http.client.HTTPSConnection(host, free_port, timeout=10, context=context)
        return http.client.HTTPConnection(host, free_port, timeout=10)

    flooding = threading.Thread(target=flood, daemon=True)
    try:
        preview = client()
        preview.request("GET", "/api/v1/video.mjpeg", headers=token_for(tmp_path / "data"))
        resp = preview.getresponse()
        assert resp.status == 200 and resp.read1(65536).startswith(b"--frame"), resp.status
        threading.Thread(target=watch, args=(resp,), daemon=True).start()
        idle = []
        for _ in range(6):  # kept alive, open, idle
            conn = client()
            conn.request("GET", "/api/v1/health")
            assert conn.getresponse().read()
            idle.append(conn)
        for peer in range(3, 9):  # three heads from each of six peers (the last three from ATTACKER: its limit)
            for _ in range(3):
                sock = _connect(free_port, context, ATTACKER if peer == 8 else f"127.0.0.{peer}")
                assert sock is not None
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                held.append(sock)
        held += [_silent(free_port, f"127.0.0.{peer}") for peer in (9, 10) for _ in range(3)]
        flooding.start()
        time.sleep(0.5)  # all in their workers, the refusals busy
        start = time.monotonic()
        proc.terminate()
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        took = time.monotonic() - start
    finally:
        stopped.set()
        proc.kill()
        for sock in held:
            if sock is not None:
                sock.close()
    output = proc.communicate(timeout=20)[0] or server_log(tmp_path / "data", free_port).read_text()
    assert status == 0 and took < 3.0, (status, took, output[-3000:])
    assert "INFO edge_app: stopped" in output and "Traceback" not in output, output[-3000:]


def test_tls_1_2_offers_only_aead_suites_and_answers_carry_hsts(free_port: int, https: Callable[..., Served]) -> None:
    """A TLS 1.2 client offering only CBC suites is refused; one offering its usual suites gets an AEAD one;
    answers over HTTPS carry Strict-Transport-Security, request after request on one connection."""
    context, _ = https()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cbc.check_hostname, cbc.verify_mode = False, ssl.CERT_NONE
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ALL:@SECLEVEL=0")
    suites = [c["name"] for c in cbc.get_ciphers() if not c["aead"] and c["protocol"] == "TLSv1.2"]
    assert "ECDHE-ECDSA-AES128-SHA256" in suites, "the suite Python's default server context offered"
    cbc.set_ciphers(":".join(suites) + ":@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(free_port, cbc)
    tls12 = _handshake(free_port, context)
    assert tls12.version() == "TLSv1.2" and ("GCM" in tls12.cipher()[0] or "CHACHA20" in tls12.cipher()[0])
    tls12.close()
    conn = http.client.HTTPSConnection("localhost", free_port, timeout=5, context=context)
    for _ in range(2):
        conn.request("GET", "/api/v1/health")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Strict-Transport-Security") == "max-age=31536000"
    assert not resp.will_close
    conn.close()


def _handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def test_a_burst_of_connections_leaves_room_for_the_tablet(tmp_path: Path, free_port: int, launch: Launch) -> None:
    """300 connections opened at once from one peer: the tablet's, coming in the middle of them, is not dropped
    (a full listen queue would make it wait a second for its connection to be tried again)."""
    proc = launch(tmp_path / "data", free_port)
    try:
        for _ in range(3):
            burst = [_silent(free_port) for _ in range(300)]
            start = time.monotonic()
            urllib.request.urlopen(f"http://127.0.0.1:{free_port}/login", timeout=5).close()
            assert time.monotonic() - start < 0.5
            for sock in burst:
                sock.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
