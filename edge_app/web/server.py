"""The web server: cheroot's WSGI server, made to survive slow and idle clients.

cheroot (11) leaves three ways for a client without credentials to stop the service; each is closed here with as
little of cheroot overridden as could be found (it has no setting for any of them):
- it shakes hands (TLS) in its accept loop, under the connection timeout (10 s): one silent TCP connection stops
  every accept for that long. Here the accept loop only wraps the socket, and a worker shakes hands.
- a worker reads the request head with a timeout on each read only: a header line every few seconds holds it
  for ever (slowloris). Here the handshake and each request head must arrive within `header_timeout_s`.
- it takes any number of connections from one address, each holding a worker while it reads. Here one address
  holds at most `max_connections_per_peer`, fewer than the threads: the others always find one free.
"""

from __future__ import annotations

import contextlib
import logging
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


class _Connection(HTTPConnection):
    RequestHandlerClass = _Request
    counted = False  # against its peer's connections (see Server.process_conn)
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
        self.max_per_peer = settings.max_connections_per_peer
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        super().prepare()
        self.deadlines.start()

    def stop(self) -> None:
        super().stop()
        self.deadlines.stop()

    def process_conn(self, conn: _Connection) -> None:
        """Every connection cheroot accepts, and every one with a next request, on its way to a worker: a new one
        from a peer holding `max_per_peer` already is closed instead."""
        if not conn.counted:
            with self._lock:
                conn.counted = self._open[conn.remote_addr] < self.max_per_peer
                if conn.counted:
                    self._open[conn.remote_addr] += 1
            if not conn.counted:
                log.debug("%s: closed, %d connections open from there already", conn.remote_addr, self.max_per_peer)
                conn.close()
                return
        super().process_conn(conn)

    def release(self, conn: _Connection) -> None:
        """A connection closed (cheroot may close one twice)."""
        with self._lock:
            if conn.counted:
                conn.counted = False
                self._open -= Counter({conn.remote_addr: 1})  # a peer down to none is dropped
