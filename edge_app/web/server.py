"""The web server: cheroot's WSGI server, made to survive slow and idle clients.

cheroot (11) leaves three ways for a client without credentials to stop the service; each is closed here with as
little of cheroot overridden as could be found (it has no setting for any of them):
- it shakes hands (TLS) in its accept loop, under the connection timeout (10 s): one silent TCP connection stops
  every accept for that long. Here the accept loop only wraps the socket, and a worker shakes hands.
- a worker reads the request head with a timeout on each read only: a header line every few seconds holds it
  for ever (slowloris). Here the handshake and each request head must arrive within `header_timeout_s`.
- it takes any number of connections from one address, each holding a worker while it reads. Here one address
  holds at most `max_connections_per_peer` workers, fewer than the threads: the others always find one free.
  Only connections in a worker count: a browser's kept-alive idle ones hold none (two tablets behind the clinic's
  NAT keep 12). One over the limit is answered 503 with Retry-After by a thread of its own, not closed unanswered
  (a tablet's lost script).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter

from edge_app.config import ServerSettings

log = logging.getLogger(__name__)
TLS12_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20"  # forward secrecy and AEAD only; TLS 1.3's suites all are both
RETRY_AFTER_S = 1
# Over the limit: a page the browser reloads (the API's clients read Retry-After); both languages, before any login.
BUSY_PAGE = (
    '<!doctype html><html lang="en"><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>Busy</title>'
    "<p>Too many requests from this address at once: this page reloads in a moment.</p>"
    '<p lang="fr">Trop de requêtes depuis cette adresse à la fois : la page se recharge dans un instant.</p>'
).encode()
BUSY = (
    f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_S}\r\nContent-Type: text/html; charset=utf-8\r\n"
    f"Content-Length: {len(BUSY_PAGE)}\r\nConnection: close\r\n\r\n"
).encode() + BUSY_PAGE


class _Request(HTTPRequest):
    def parse_request(self) -> None:
        """The request head, within its deadline. A peer gone meanwhile (or cut for being late) ends the
        connection quietly: cheroot would log a traceback, then another trying to answer 500 to no one."""
        try:
            super().parse_request()
        except OSError as exc:
            log.debug("%s: the connection ended in the request head: %s", self.conn.remote_addr, exc)
        finally:
            self.server.deadlines.done(self.conn)

    def respond(self) -> None:
        if not self.conn.refused:
            super().respond()
            return
        self.close_connection = True
        self.conn.wfile.write(BUSY)
        self.conn.wfile.flush()


class _Connection(HTTPConnection):
    RequestHandlerClass = _Request
    counted = False  # holds one of its peer's workers (see Server.process_conn)
    refused = False  # over its peer's limit: answered 503 (see _Refusals)
    due = 0.0  # the monotonic time its handshake and request head must be in by

    def communicate(self) -> bool:
        server: Server = self.server
        server.deadlines.watch(self)
        try:
            if isinstance(self.socket, ssl.SSLSocket):
                try:
                    self.socket.do_handshake()  # at once on the next requests: the handshake is done
                except OSError as exc:  # a scanner, a client refusing the certificate, plain HTTP, too slow
                    log.debug("%s: no TLS handshake: %s", self.remote_addr, exc)
                    return False
            return bool(super().communicate())  # type: ignore[no-untyped-call]
        finally:
            server.deadlines.done(self)

    def close(self) -> None:
        super().close()
        self.server.release(self)


class _Deadlines:
    """Connections reading a handshake or a request head, and when each must be done. A thread looks four times
    a second and shuts the socket of the late ones: the worker blocked reading gets an end of file and goes back
    to the pool. (A timeout per read cannot bound a whole head, and a timer thread per connection would spend a
    thread per slow client, the very thing attacked.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._watched: set[_Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-head-deadlines", daemon=True)

    def watch(self, conn: _Connection) -> None:
        conn.due = time.monotonic() + self.seconds
        with self._lock:
            self._watched.add(conn)

    def done(self, conn: _Connection) -> None:
        with self._lock:
            self._watched.discard(conn)

    def start(self) -> None:
        self._thread.start()

    def hurry(self) -> None:
        """Every head, those coming and those to come, is late: the server stops, and no one there has a request
        in hand yet."""
        self.seconds = 0.0
        with self._lock:
            for conn in self._watched:
                conn.due = 0.0

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [conn for conn in self._watched if conn.due <= now]
                self._watched.difference_update(late)
            for conn in late:
                with contextlib.suppress(OSError):  # closed meanwhile
                    # the TCP socket's own shutdown, under TLS too: SSLSocket.shutdown would unwrap it under the
                    # reading worker's feet
                    socket.socket.shutdown(conn.socket, socket.SHUT_RDWR)


class _Refusals:
    """Connections over their peer's limit, answered `BUSY` one at a time by a thread of their own, within the
    request head's deadline: the pool's workers stay the others'. At most `size` wait; more are closed unanswered
    (only an attacker comes that many). cheroot's own 503 thread (for a full queue) writes before reading the
    request, which the client may then lose to a reset, and has no Retry-After."""

    def __init__(self, size: int = 16) -> None:
        self._queue: queue.Queue[_Connection | None] = queue.Queue(size)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="over-the-limit", daemon=True)

    def offer(self, conn: _Connection) -> bool:
        """Whether `conn` will be answered (else: close it)."""
        try:
            self._queue.put_nowait(conn)
        except queue.Full:
            return False
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Those still waiting are closed unanswered."""
        self._stopping = True
        if self._thread.ident is not None:
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (conn := self._queue.get()) is not None:
            try:
                if not self._stopping:
                    conn.communicate()  # cheroot's: a failing peer is logged, never raised
            finally:
                conn.close()


class _TLS(BuiltinSSLAdapter):
    """TLS 1.2 (the default context's minimum) and 1.3 with AEAD suites only; the handshake left to the worker."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(str(cert), str(key), ciphers=TLS12_SUITES)

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), {}


class Server(wsgi.Server):
    """cheroot's WSGI server on `settings.host:port`, over TLS with `tls` (certificate, key) files."""

    ConnectionClass = _Connection

    def __init__(self, app: Any, settings: ServerSettings, tls: tuple[Path, Path] | None) -> None:
        super().__init__(
            (settings.host, settings.port),
            app,
            numthreads=settings.threads,
            server_name="edge-app",
            # cheroot's backlog of 5 drops the tablet's connection (a second's wait) under a burst of others
            request_queue_size=socket.SOMAXCONN,
        )
        self.software = "edge-app"
        if tls is not None:
            self.ssl_adapter = _TLS(*tls)
        self.deadlines = _Deadlines(settings.header_timeout_s)
        self.refusals = _Refusals()
        self.max_per_peer = settings.max_connections_per_peer
        self._busy: Counter[str] = Counter()  # workers held, by peer
        self._lock = threading.Lock()

    def prepare(self) -> None:
        super().prepare()
        self.deadlines.start()
        self.refusals.start()

    def stop(self) -> None:
        """Prompt whatever clients hold: the connections still reading a request head or a handshake are cut (cheroot
        would wait `shutdown_timeout` for their workers), the idle ones closed by cheroot."""
        self.deadlines.hurry()
        super().stop()
        self.refusals.stop()  # before the deadlines: they cut its reading short
        self.deadlines.stop()

    def process_conn(self, conn: _Connection) -> None:
        """Every connection cheroot accepts, and every kept-alive one with a next request, on its way to a worker:
        one from a peer holding `max_per_peer` workers already goes to the refusals instead."""
        with self._lock:
            conn.counted = self._busy[conn.remote_addr] < self.max_per_peer
            if conn.counted:
                self._busy[conn.remote_addr] += 1
        if conn.counted:
            super().process_conn(conn)
            return
        log.debug("%s: over the limit, %d requests in hand from there already", conn.remote_addr, self.max_per_peer)
        conn.refused = True
        if not self.refusals.offer(conn):
            conn.close()

    def put_conn(self, conn: _Connection) -> None:
        """A kept-alive connection back to cheroot's selector, waiting idle: it holds no worker."""
        self.release(conn)
        super().put_conn(conn)

    def release(self, conn: _Connection) -> None:
        """A connection out of its worker: idle or closed (cheroot may close one twice)."""
        with self._lock:
            if conn.counted:
                conn.counted = False
                self._busy -= Counter({conn.remote_addr: 1})  # a peer down to none is dropped
