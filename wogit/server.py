"""Serving the app with cheroot: deliberate limits, JSON for cheroot's own errors, clean shutdown."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import threading
import time

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from wogit import __version__, sendfile, serverhooks
from wogit.access import Policy
from wogit.api import create_app
from wogit.api.gate import Gate
from wogit.auth import Throttle, Users
from wogit.framing import ChunkedReader, KnownLengthReader, RequestHead, StrictHeaderReader
from wogit.metrics import Metrics
from wogit.observe import configure_logging, observed, request_id
from wogit.replication import Notifier, PushMirror, Replica, Replication, redact
from wogit.settings import Settings
from wogit.store import Store
from wogit.store import init as init_store

log = logging.getLogger("wogit")


def error_answer(protocol: str, status: str, msg: str, close: bool, supplied_id: str | None = None) -> bytes:
    """A whole HTTP answer with a JSON ``{"msg"}`` body, for errors answered outside the app."""
    body = (json.dumps({"msg": msg}) + "\n").encode()
    head = (f"{protocol} {status}\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {request_id(supplied_id)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _peer_gone(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the client went away: over TLS, an EOF or a close_notify in the
    middle of an exchange is that (cheroot ignores it on plain sockets only)."""
    return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError, ConnectionResetError))


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
        if b"Transfer-Encoding" in self.inheaders and self.request_protocol != b"HTTP/1.1":
            # cheroot reads no chunked body before HTTP/1.1: the body would be lost unseen.
            return self._refuse("Transfer-Encoding needs HTTP/1.1")
        if self.request_protocol == b"HTTP/1.1" and b"Host" not in self.inheaders:
            return self._refuse("an HTTP/1.1 request needs a Host header")
        expect = self.inheaders.get(b"Expect")
        if expect is not None and expect.lower() != b"100-continue":
            self.close_connection = True
            self.simple_response("417 Expectation Failed", f"cannot meet Expect: {expect.decode('latin-1')}")
            return False
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
        supplied = self.inheaders.get(b"X-Request-Id")
        answer = error_answer(self.server.protocol, status, msg or status[4:], self.close_connection,
                              supplied.decode("latin-1") if supplied is not None else None)
        try:
            self.conn.wfile.write(answer)
        except socket.error as ex:
            if ex.args[0] not in cheroot_errors.socket_errors_to_ignore and not _peer_gone(ex):
                raise

    def respond(self) -> None:
        # cheroot's ChunkedRFile holds a chunk whole; both readers here read into buffers.
        # (cheroot's check of max_request_body_size is not needed: wogit never sets it.)
        if self.chunked_read:
            self.rfile = ChunkedReader(self.conn.rfile)
        else:
            self.rfile = KnownLengthReader(self.conn.rfile, int(self.inheaders.get(b"Content-Length", 0)))
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
    handshaken = False
    head: RequestHead | None = None  # the next request's head, while it arrives
    LINGER_SECONDS = 5.0
    LINGER_BYTES = 64 << 20

    def buffered_head_whole(self, limit: int) -> bool:
        """Whether what is buffered already (a pipelined request, sent with the one before it)
        holds a whole head.  If it holds only the start of one, that becomes the head gathered
        in the selector (``gather_head``): a client that sends a request and the first bytes of
        the next, then the rest a byte at a time, holds no worker either."""
        rfile = self.rfile
        with rfile._read_lock:
            buffered = rfile._read_buf[rfile._read_pos:]
            head = RequestHead()
            if head.add(buffered) or len(buffered) > limit:
                return True
            rfile._read_buf, rfile._read_pos = b"", 0
        self.head = head
        return False

    def gather_head(self, limit: int, timeout: float) -> bool | None:
        """Read what has arrived of the next request's head, without waiting (the selector's
        thread calls this when the socket is readable).  True: the head is whole (or too large,
        or sure to be refused), buffered for ``communicate``; False: wait for more; None: the
        connection is closed (by the client, or here, with a 408, once the head has taken
        longer than ``timeout`` seconds; on TLS, the handshake counts as part of the head)."""
        try:
            chunk = self._receive_now()
        except OSError:  # a reset, a failed handshake (answered if it was plain HTTP)
            chunk = b""
        if chunk == b"" and self.head is None:  # closed between requests
            self.close()
            return None
        self.head = self.head or RequestHead()
        if chunk is not None and (not chunk or self.head.add(chunk) or len(self.head.data) > limit):
            rfile = self.rfile  # cheroot reads the head from here (a _pyio BufferedReader)
            with rfile._read_lock:
                rfile._read_buf = bytes(self.head.data) + rfile._read_buf[rfile._read_pos:]
                rfile._read_pos = 0
            self.head = None
            return True
        if time.time() - self.head.started > timeout:
            try:
                with _nonblocking(self.socket):
                    self.socket.send(error_answer("HTTP/1.1", "408 Request Timeout",
                                                  f"the request's head took longer than {timeout:g} s", True))
            except OSError:
                pass
            self.close()
            return None
        return False

    def _receive_now(self) -> bytes | None:
        """What has arrived (b"": the end; None: nothing yet); on TLS, first the handshake, a
        step at a time as its bytes arrive."""
        sock = self.socket
        with _nonblocking(sock):  # with a timeout, Python would wait for readability first
            try:
                if not isinstance(sock, ssl.SSLSocket):
                    return sock.recv(1 << 16)
                if not self.handshaken:
                    self._handshake()
                data = sock.recv(1 << 16)
                while data and sock.pending():  # decrypted already, so the selector would not see it
                    data += sock.recv(sock.pending())
                return data
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return None

    def _handshake(self) -> None:
        try:
            self.socket.do_handshake()
        except ssl.SSLError as exc:
            if "http request" in str(exc):  # plain HTTP on the HTTPS port: say so, in plain HTTP
                answer = error_answer("HTTP/1.1", "400 Bad Request", "this port speaks HTTPS only: use https://", True)
                try:
                    socket.socket.send(self.socket, answer)  # the raw socket, not TLS
                except OSError:
                    pass
            raise
        self.handshaken = True

    def close(self) -> None:
        """Close; after an answer to a body left unread, the client's bytes still coming are
        read and dropped (``_LINGERING``, not in this worker), so the client is not reset
        before it has read the answer."""
        if self.unread_body:
            try:
                self.socket.shutdown(socket.SHUT_WR)  # the answer is all there is
                _LINGERING.add(socket.socket(fileno=os.dup(self.socket.fileno())),
                               self.LINGER_SECONDS, self.LINGER_BYTES)
            except OSError:
                pass
            else:
                # Not cheroot's close: its shutdown(SHUT_RDWR) would end the lingering copy's
                # reading too, and closing it with bytes unread resets the connection.
                self.rfile.close()
                self.socket.close()
                return
        super().close()


class _Lingering:
    """Connections answered before their body was read, read and dropped until the client
    stops sending (or ``seconds``, or ``most`` bytes), all in one thread of their own: a worker
    that lingered instead was held for seconds by each refused upload.  Beyond ``LIMIT`` at
    once, a connection is closed at once."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._added: list[tuple[socket.socket, float, int]] = []
        self._count = 0
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, sock: socket.socket, seconds: float, most: int) -> None:
        with self._lock:
            if self._count >= self.LIMIT:
                sock.close()
                return
            if self._pid != os.getpid():  # first use in this process (a worker forked afterwards)
                self._pid, self._count, self._added = os.getpid(), 0, []
                self._thread = threading.Thread(target=self._run, name="wogit-linger", daemon=True)
                self._thread.start()
            sock.setblocking(False)
            self._added.append((sock, time.monotonic() + seconds, most))
            self._count += 1

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        while True:
            with self._lock:
                added, self._added = self._added, []
            for sock, deadline, most in added:
                selector.register(sock, selectors.EVENT_READ, [deadline, most])
            now = time.monotonic()
            for key, _ in selector.select(0.1):
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                key.data[1] -= len(data)
                if not data or key.data[1] <= 0:
                    key.data[0] = now  # done: closed below
            for key in [key for key in selector.get_map().values() if key.data[0] <= now]:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                with self._lock:
                    self._count -= 1


_LINGERING = _Lingering()


@contextlib.contextmanager
def _nonblocking(sock: socket.socket):
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        yield
    finally:
        sock.settimeout(timeout)


class _LazyTLS(BuiltinSSLAdapter):
    """cheroot's TLS adapter, without the handshake in the accept loop.

    cheroot shakes hands in its one accept thread, so a client that connects and
    sends nothing stops every new connection for the whole timeout (cheroot
    issue #748).  Here the socket is only wrapped; the handshake happens in the
    selector's thread, a step at a time as the client's bytes arrive, as part of
    gathering the first request's head (``_Connection.gather_head``).
    """

    def wrap(self, sock):
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _Server(wsgi.Server):
    """Hands a connection to a worker only once the client has sent a whole request head.

    cheroot gives every new connection a worker at once, so a few idle
    connections could hold every worker; here a new connection first waits in
    the selector, like a kept-alive one, and is closed there after ``timeout``.
    Then the selector's thread gathers the request's head (over TLS: the
    handshake, then the head) as it arrives, and only a whole head gets a worker: clients sending their heads a
    byte at a time (slowloris) hold no worker, and a head that takes longer than
    ``header_timeout`` seconds from its first byte is answered 408 and closed.
    """

    listener: socket.socket | None = None  # a listening socket to serve instead of binding one
    header_timeout = Settings.header_timeout

    def error_log(self, msg="", level=logging.INFO, traceback=False) -> None:
        """cheroot's own errors: in the server's log, in its format (cheroot writes them, and
        their tracebacks, to stderr as they are), except clients that went away."""
        if not _peer_gone(sys.exc_info()[1]):
            log.log(level, "%s", msg, exc_info=traceback)

    def bind(self, family, type, proto=0):
        if self.listener is None:
            return super().bind(family, type, proto)
        self.socket = self.listener
        self.bind_addr = self.resolve_real_bind_addr(self.listener)
        return self.socket

    def prepare(self) -> None:
        super().prepare()
        if self.listener is not None:
            # Shared with other workers: one that loses the race for a connection must not
            # wait in accept() (with a timeout, Python waits for the next one).
            self.socket.setblocking(False)

    def process_conn(self, conn) -> None:
        if not getattr(conn, "wogit_waited", False):
            conn.wogit_waited = True
            self._connections.put(conn)
            return
        if conn.rfile.has_data() and conn.buffered_head_whole(self.max_request_header_size):
            super().process_conn(conn)  # pipelined: the next head is buffered already
            return
        ready = conn.gather_head(self.max_request_header_size, self.header_timeout)
        if ready:
            super().process_conn(conn)
        elif ready is False:
            self._connections.put(conn)
            if conn.head is not None:
                # cheroot's expiry closes a connection idle for ``timeout``: this one, at its head's deadline.
                conn.last_used = conn.head.started + min(self.header_timeout, self.timeout) - self.timeout


def build_gate(settings: Settings, policy: Policy | None = None) -> Gate:
    """The gate from the config file's policy and the user file (flag, environment or file)."""
    replica_of = settings.replica_of.rstrip("/") or None
    if not settings.auth_file:
        if policy is not None and policy.requires_auth:
            raise SystemExit("wogit: the config grants access but names no user file ([auth] htpasswd)")
        return Gate(Policy.open(), replica_of=replica_of)
    if policy is None or not policy.requires_auth:
        policy = Policy.authenticated()
    if not os.path.isfile(settings.auth_file):
        raise SystemExit(f"wogit: the user file {settings.auth_file} does not exist (wogit user add NAME creates it)")
    users = Users(settings.auth_file)
    for problem in users.problems:
        log.warning("%s: %s", settings.auth_file, problem)
    try:
        throttle = Throttle(settings.max_login_failures, settings.login_failure_window)
    except ValueError as exc:
        raise SystemExit(f"wogit: {exc}") from None
    return Gate(policy, users, throttle, replica_of=replica_of)


def build_replication(settings: Settings, git_dir: str) -> Replication:
    """The replica, push mirrors and replicas to notify that the settings ask for."""
    replica = None
    if settings.replica_of:
        if not settings.replica_of.startswith(("http://", "https://")):
            raise SystemExit(f"wogit: --replica-of needs the primary's http(s):// base URL, not {settings.replica_of!r}")
        if settings.push_mirrors or settings.notify:
            raise SystemExit("wogit: a replica takes no writes: it has no push mirrors and notifies no replicas")
        password = None
        if settings.replica_password_file:
            try:
                with open(settings.replica_password_file, encoding="utf-8") as file:
                    password = file.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise SystemExit(f"wogit: cannot read replica_password_file {settings.replica_password_file}: {exc}") from None
        replica = Replica(git_dir, settings.replica_of, settings.replica_interval,
                          settings.replica_user or None, password)
    mirrors = [PushMirror(git_dir, url, settings.mirror_interval) for url in settings.push_mirrors]
    notifier = Notifier(list(settings.notify)) if settings.notify else None
    return Replication(replica, mirrors, notifier)


def build_server(settings: Settings, store: Store | None = None, gate: Gate | None = None,
                 replication: Replication | None = None) -> wsgi.Server:
    store = store or Store(settings.data, fsync=settings.fsync, hook_timeout=settings.hook_timeout)
    serverhooks.set_timeout(store.path, settings.hook_timeout)  # the Store has installed the hooks
    if replication is not None:
        store.listeners.append(replication.changed)
    metrics = Metrics(store.counts)
    app = create_app(settings, store, gate or build_gate(settings), replication, metrics)
    server = _Server(
        (settings.host, settings.port), observed(app, metrics),
        numthreads=settings.threads, server_name=f"wogit/{__version__}",
        timeout=settings.timeout, shutdown_timeout=settings.shutdown_timeout,
        accepted_queue_timeout=1.0, request_queue_size=settings.backlog,
    )
    server.max_request_header_size = settings.max_header_size  # cheroot's default is unlimited
    server.header_timeout = settings.header_timeout
    # cheroot closes a connection after its answer once 10 others wait idle for their next
    # request: with more clients than that, keep-alive would end in a reconnect per request.
    server.keep_alive_conn_limit = settings.max_idle_connections
    server.ConnectionClass = _Connection
    server.gateway = sendfile.Gateway  # file bodies go out with sendfile(2)
    store.cache.bound = settings.download_cache_size
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise SystemExit("wogit: HTTPS needs both --tls-cert and --tls-key")
        try:
            server.ssl_adapter = _LazyTLS(settings.tls_cert, settings.tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise SystemExit(f"wogit: cannot use --tls-cert {settings.tls_cert} and --tls-key "
                             f"{settings.tls_key}: {exc.strerror or exc}") from None
    return server


_M_ARENA_MAX = -8  # glibc's malloc.h


def _bound_malloc_arenas(arenas: int = 2) -> None:
    """Keep glibc to ``arenas`` malloc arenas, unless ``MALLOC_ARENA_MAX`` says otherwise.

    By default glibc gives each new thread its own arena (up to 8 per core), and memory
    freed in one is kept there: each worker thread's first big tarball left about 15 MiB
    behind, and RSS crept up by 79 MiB over five threads. Two arenas keep it flat.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass


def serve(settings: Settings, policy: Policy | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and return.

    With ``settings.workers`` above 1, that many forked processes serve one listening
    socket (bound here, before the fork, so the port is taken once and ``--port 0`` means
    one port for all); see ``_serve_workers``.
    """
    configure_logging(settings.log_format)
    _bound_malloc_arenas()
    if settings.workers < 1:
        raise SystemExit(f"wogit: workers must be at least 1, not {settings.workers}")
    gate = build_gate(settings, policy)
    if settings.workers == 1:
        return _serve_one(settings, gate)
    if settings.replica_of or settings.push_mirrors:
        raise SystemExit("wogit: a replica (--replica-of) and push mirrors (--push-mirror) run in one process: "
                         "they need --workers 1")
    return _serve_workers(settings, gate)


def _serve_one(settings: Settings, gate: Gate, listener: socket.socket | None = None,
               ready: int | None = None) -> int:
    """Serve in this process; as a worker, on the ``listener`` socket, writing to the
    ``ready`` pipe once it can serve (the parent prints the ready line and the shutdown)."""
    worker = ready is not None
    store = Store(settings.data, fsync=settings.fsync, hook_timeout=settings.hook_timeout)
    replication = build_replication(settings, store.path)
    server = build_server(settings, store, gate, replication)
    server.listener = listener
    try:
        server.prepare()
    except OSError as exc:
        raise SystemExit(f"wogit: cannot listen on {settings.host}:{settings.port}: "
                         f"{exc.args[0] if exc.args else exc} (another server there? --port 0 picks a free one)") from None
    if replication.replica is not None and replication.replica.fetch():  # a first copy before serving
        log.info("replica of %s: fetched", redact(replication.replica.primary))
    # Before the ready line: a supervisor may send SIGTERM as soon as it has read it.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    replication.start()
    if worker:
        os.write(ready, b"ready\n")
        os.close(ready)
    else:
        _say(_ready_line(settings, server.bind_addr), sys.stdout)
        _warn_if_open(gate, replication)
    thread = threading.Thread(target=server.serve, name="wogit-serve")
    thread.start()
    while not stopping.wait(0.5):
        if not thread.is_alive():
            log.error("the server loop stopped unexpectedly")
            return 1
    if not worker:
        _say_shutting_down(settings)
    server.stop()
    thread.join()
    replication.stop()
    return 0


def _ready_line(settings: Settings, address: tuple, workers: int = 1) -> str:
    host, port = address[:2]
    scheme = "https" if settings.tls_cert else "http"
    processes = f" ({workers} workers)" if workers > 1 else ""
    return f"wogit {__version__}: serving {settings.data}{processes} on {scheme}://{host}:{port}"


def _warn_if_open(gate: Gate, replication: Replication | None) -> None:
    if not gate.policy.requires_auth:
        may = "read (writes go to the primary)" if replication is not None and replication.replica else "read and write"
        log.warning("no user file: the registry is OPEN, anyone who can connect may %s "
                    "(wogit serve --auth-file FILE or --config FILE to require logins)", may)


def _say_shutting_down(settings: Settings) -> None:
    if settings.log_format == "json":  # every line of a JSON log is an object
        log.info("shutting down, finishing requests in flight")
    else:
        _say("wogit: shutting down, finishing requests in flight", sys.stderr)


def _listen(settings: Settings) -> socket.socket:
    """The listening socket the workers share, made as cheroot makes its own."""
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SystemExit(f"wogit: cannot listen on {settings.host}:{settings.port}: {exc}") from None
    problem: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            sock = cheroot_server.HTTPServer.prepare_socket(address, family, kind, proto, True, None)
            sock.bind(address)
        except OSError as exc:
            problem = exc
            continue
        sock.listen(settings.backlog)
        sock.set_inheritable(True)
        return sock
    raise SystemExit(f"wogit: cannot listen on {settings.host}:{settings.port}: "
                     f"{problem.args[0] if problem and problem.args else problem} "
                     "(another server there? --port 0 picks a free one)")


def _serve_workers(settings: Settings, gate: Gate) -> int:
    """Serve from ``settings.workers`` forked processes sharing one listening socket.

    The kernel hands each new connection to whichever worker accepts it first (an idle
    one, mostly); a connection stays with its worker.  The ready line is printed once every
    worker can serve.  SIGTERM or SIGINT is passed to every worker, each finishes its
    requests in flight, and the parent returns once all have exited.  A worker that dies
    otherwise is logged, the others are stopped, and the parent returns 1: a supervisor
    restarts the whole service (a registry half up would hide the failure).
    """
    init_store(settings.data)  # once, before the workers open it
    listener = _listen(settings)
    children: dict[int, int] = {}  # pid -> the read end of its ready pipe
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    for _ in range(settings.workers):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read)
            for other in children.values():
                os.close(other)
            code = 1
            try:
                _die_with_parent()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                code = _serve_one(settings, gate, listener, write)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if not isinstance(exc.code, int) and exc.code is not None:
                    _say(str(exc.code), sys.stderr)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write)
        children[pid] = read
    address = listener.getsockname()
    listener.close()  # the workers hold it
    for pid, read in children.items():
        with os.fdopen(read, "rb") as pipe:
            if pipe.readline() != b"ready\n":
                log.error("worker %d could not start", pid)
                return _stop_workers(children, failed=True)
    _say(_ready_line(settings, address, settings.workers), sys.stdout)
    _warn_if_open(gate, None)
    while not stopping.wait(0.2):
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[pid]
                log.error("worker %d exited unexpectedly (%s); stopping the other workers", pid, _status(status))
                return _stop_workers(children, failed=True)
    _say_shutting_down(settings)
    return _stop_workers(children, failed=False)


def _stop_workers(children: dict[int, int], failed: bool) -> int:
    """SIGTERM to every worker still running, then wait for each; 0 if all stopped cleanly."""
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    code = 1 if failed else 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("worker %d: %s", pid, _status(status))
            code = 1
    return code


def _status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the parent dies, even by SIGKILL (no orphans)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _say(line: str, stream) -> None:
    """Print a line; a closed or broken stream (``wogit serve | head -1``) must not stop a shutdown."""
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        pass
