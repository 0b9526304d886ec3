#!/usr/bin/env python3
"""The baseline servers: the least work that serves the same request, measured beside wogit.

    baselines.py upload --dir DIR           PUT: body -> a new file in DIR, fsync, 201 (Content-Length only)
    baselines.py durable --dir DIR          PUT: body -> a temporary file in DIR, fsync, rename, fsync DIR, 200
    baselines.py sendfile --file FILE       GET: FILE with socket.sendfile() (its bytes as they are now)
    baselines.py hello [--threads N] [--processes P]
                                            a hello-world Bottle app on cheroot, N threads per process;
                                            P processes share the port with SO_REUSEPORT

Each listens on 127.0.0.1, port 0 (or --port), and prints "serving on http://127.0.0.1:PORT".
upload, durable and sendfile are raw sockets, one thread per connection, keep-alive, nothing
else: no hashing, no framework, no parsing beyond the request line and the headers they need.
durable is the least a small durable write can do (what a 2xx of a write promises: the bytes
on disk under their name, atomically): a file written and synced, renamed into place, and its
directory synced, the way git and wogit make a ref.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading

BUFFER = 1 << 20


def ready(port: int) -> None:
    print(f"serving on http://127.0.0.1:{port}", flush=True)


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent goes (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


# -- raw HTTP/1.1 -----------------------------------------------------------------------------------

def read_head(conn: socket.socket, pending: bytearray) -> tuple[str, dict[str, str]] | None:
    """The request line and headers (lower-case names); ``pending`` keeps what came after them."""
    while b"\r\n\r\n" not in pending:
        data = conn.recv(65536)
        if not data:
            return None
        pending += data
    end = pending.index(b"\r\n\r\n")
    lines = bytes(pending[:end]).decode("latin-1").split("\r\n")
    del pending[:end + 4]
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return lines[0], headers


def serve_forever(port: int, handle) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=256)
    ready(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def upload_handler(directory: str):
    counter = iter(range(1, 1 << 62))
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        pending = bytearray()
        with conn:
            while (head := read_head(conn, pending)) is not None:
                _, headers = head
                if "content-length" not in headers:
                    conn.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                left = int(headers["content-length"])
                with lock:
                    name = os.path.join(directory, f"upload-{next(counter)}")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    if pending:
                        first = bytes(pending[:left])
                        del pending[:left]
                        os.write(fd, first)
                        left -= len(first)
                    while left:
                        n = conn.recv_into(view, min(left, BUFFER))
                        if not n:
                            return
                        os.write(fd, view[:n])
                        left -= n
                    os.fsync(fd)
                finally:
                    os.close(fd)
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    return handle


def durable_handler(directory: str):
    counter = iter(range(1, 1 << 62))
    lock = threading.Lock()

    def write(body: bytes) -> None:
        with lock:
            name = os.path.join(directory, f"write-{next(counter)}")
        fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(name + ".tmp", name)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def handle(conn: socket.socket) -> None:
        pending = bytearray()
        with conn:
            try:
                while (head := read_head(conn, pending)) is not None:
                    left = int(head[1].get("content-length", "0"))
                    while len(pending) < left:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                    write(bytes(pending[:left]))
                    del pending[:left]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
            except ConnectionError:  # a load generator resets its connections when it stops
                return
    return handle


def sendfile_handler(path: str):
    def handle(conn: socket.socket) -> None:
        pending = bytearray()
        with conn:
            while read_head(conn, pending) is not None:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % size)
                    conn.sendfile(f)
    return handle


# -- hello world on cheroot -------------------------------------------------------------------------

def hello_app():
    import bottle

    app = bottle.Bottle()

    @app.route("/<path:path>", method=["GET", "PUT", "POST", "HEAD", "DELETE"])
    def hello(path):
        bottle.request.body.read()
        bottle.response.content_type = "text/plain"
        return b"hello world\n"

    return app


def hello(port: int, threads: int, reuse_port: bool) -> None:
    from cheroot import wsgi

    server = wsgi.Server(("127.0.0.1", port), hello_app(), numthreads=threads, request_queue_size=256,
                         reuse_port=reuse_port)
    server.keep_alive_conn_limit = 256  # as wogit's default max_idle_connections: the same settings
    server.prepare()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ready(server.bind_addr[1])
    server.serve()


def hello_processes(threads: int, processes: int) -> None:
    """``processes`` hello servers on one port (SO_REUSEPORT); SIGTERM stops them all."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))  # reserves the port, never listens (gets no connections)
    port = holder.getsockname()[1]
    children = [subprocess.Popen([sys.executable, __file__, "hello", "--port", str(port), "--threads", str(threads),
                                  "--reuse-port"], stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
                for _ in range(processes)]
    for child in children:
        line = child.stdout.readline()
        if "serving on" not in line:
            raise SystemExit(f"a hello process did not start: {line!r}")
    holder.close()

    def stop(*_):
        for child in children:
            child.terminate()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    ready(port)
    for child in children:
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["upload", "durable", "sendfile", "hello"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", help="upload, durable: where the bodies go")
    parser.add_argument("--file", help="sendfile: the file served")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    if args.kind == "upload":
        serve_forever(args.port, upload_handler(args.dir))
    elif args.kind == "durable":
        serve_forever(args.port, durable_handler(args.dir))
    elif args.kind == "sendfile":
        serve_forever(args.port, sendfile_handler(args.file))
    elif args.processes > 1:
        hello_processes(args.threads, args.processes)
    else:
        hello(args.port, args.threads, args.reuse_port)


if __name__ == "__main__":
    main()
