"""Serving the app with cheroot: deliberate limits, JSON for cheroot's own errors, clean shutdown."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi

from wogit import __version__
from wogit.api import create_app
from wogit.framing import ChunkedReader, StrictHeaderReader
from wogit.settings import Settings
from wogit.store import Store

log = logging.getLogger("wogit")


class _Request(cheroot_server.HTTPRequest):
    """cheroot's request, with strict framing, JSON for its own errors, and no unread body reused."""

    header_reader = StrictHeaderReader()

    def read_request_headers(self) -> bool:
        if not super().read_request_headers():
            return False
        length = self.inheaders.get(b"Content-Length")
        if length is not None and b"Transfer-Encoding" in self.inheaders:
            return self._refuse("a request may not carry both Content-Length and Transfer-Encoding")
        if length is not None and not length.isdigit():
            return self._refuse(f"invalid Content-Length {length.decode('latin-1')!r}")
        return True

    def _refuse(self, msg: str) -> bool:
        self.close_connection = True
        self.simple_response("400 Bad Request", msg)
        return False

    def simple_response(self, status, msg="") -> None:
        status = str(status)
        if self.response_protocol != "HTTP/1.1" and status[:3] in ("413", "414"):
            status = "400 Bad Request"
        if int(status[:3]) >= 400:
            self.close_connection = True
        if isinstance(msg, bytes):
            msg = msg.decode("latin-1")
        body = (json.dumps({"msg": msg or status[4:]}) + "\n").encode()
        head = (f"{self.server.protocol} {status}\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: application/json\r\n")
        if self.close_connection:
            head += "Connection: close\r\n"
        try:
            self.conn.wfile.write(head.encode("latin-1") + b"\r\n" + body)
        except socket.error as ex:
            if ex.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise

    def respond(self) -> None:
        if not self.chunked_read:
            return super().respond()
        self.rfile = ChunkedReader(self.conn.rfile)  # cheroot's ChunkedRFile holds a chunk whole
        self.server.gateway(self).respond()
        self.ready and self.ensure_headers_sent()
        if self.chunked_write:
            self.conn.wfile.write(b"0\r\n\r\n")

    def send_headers(self) -> None:
        # A body the app did not read to its end is never drained (it may be GiBs) nor
        # parsed as the next request: the connection closes instead.
        unread = (not self.rfile.done) if self.chunked_read else getattr(self.rfile, "remaining", 0) > 0
        if unread or (b"Connection", b"close") in self.outheaders:
            self.close_connection = True
        self.conn.unread_body = unread
        super().send_headers()


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    unread_body = False
    LINGER_SECONDS = 5.0
    LINGER_BYTES = 64 << 20

    def close(self) -> None:
        """Close; after an answer to a body left unread, linger to read (and drop) what is
        still coming, so the client is not reset before it has read the answer."""
        if self.unread_body:
            try:
                self.socket.shutdown(socket.SHUT_WR)
                self.socket.settimeout(0.5)
                deadline = time.monotonic() + self.LINGER_SECONDS
                dropped = 0
                while dropped < self.LINGER_BYTES and time.monotonic() < deadline:
                    data = self.socket.recv(1 << 16)
                    if not data:
                        break
                    dropped += len(data)
            except OSError:
                pass
        super().close()


class _Server(wsgi.Server):
    """Hands a connection to a worker only once the client has sent something.

    cheroot gives every new connection a worker at once, so a few idle
    connections could hold every worker; here a new connection first waits in
    the selector, like a kept-alive one, and is closed there after ``timeout``.
    """

    def process_conn(self, conn) -> None:
        if not getattr(conn, "wogit_waited", False):
            conn.wogit_waited = True
            self._connections.put(conn)
            return
        super().process_conn(conn)


def build_server(settings: Settings, store: Store | None = None) -> wsgi.Server:
    store = store or Store(settings.data, fsync=settings.fsync)
    server = _Server(
        (settings.host, settings.port), create_app(settings, store),
        numthreads=settings.threads, server_name=f"wogit/{__version__}",
        timeout=settings.timeout, shutdown_timeout=settings.shutdown_timeout,
        accepted_queue_timeout=1.0, request_queue_size=settings.backlog,
    )
    server.max_request_header_size = settings.max_header_size  # cheroot's default is unlimited
    server.ConnectionClass = _Connection
    return server


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and return."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build_server(settings)
    server.prepare()
    host, port = server.bind_addr[:2]
    print(f"wogit {__version__}: serving {settings.data} on http://{host}:{port}", flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    worker = threading.Thread(target=server.serve, name="wogit-serve")
    worker.start()
    while not stopping.wait(0.5):
        if not worker.is_alive():
            log.error("the server loop stopped unexpectedly")
            return 1
    print("wogit: shutting down, finishing requests in flight", file=sys.stderr, flush=True)
    server.stop()
    worker.join()
    return 0
