"""Answer bodies made of spans of files, sent with ``sendfile(2)`` where the socket allows it.

A ``Body`` lists its bytes as parts: a ``Span`` (offset and length in an open file) or a
literal ``bytes`` piece.  Any WSGI server can send one, since it is also an iterable of
chunks and a file-like object (``read``).  On cheroot, ``Gateway`` (the server's gateway,
see ``wogit.server``) sends a Body itself once cheroot has sent the headers: on a plain TCP
socket each span with ``os.sendfile``, straight from the page cache and never through
Python; on a TLS socket (the kernel cannot encrypt) read and sent a MiB at a time.  Either
way the bytes skip cheroot's writer, which copies its buffer again for each partial send.
The body counts the bytes that went out (``sent``), so the access log and the metrics see
them, however they were sent.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from cheroot import wsgi

CHUNK = 1 << 20  # the largest piece read into memory at a time
_SENDFILE_MAX = 1 << 30  # the largest count handed to one sendfile call
SMALL = 64 << 10  # a body of at most this many bytes is written as any other (Gateway._may_send)


class Span(NamedTuple):
    """``length`` bytes of the open file ``fd`` from ``offset``."""
    fd: int
    offset: int
    length: int


class Body:
    """An answer's bytes: ``parts`` (Spans and bytes-like pieces, consumed once) of ``length``
    bytes in all (None: unknown until the parts end).  A part is used up before the next one
    is asked for, so a producer may hand out one buffer again and again.  ``close()`` closes
    ``fds`` and calls ``on_close``."""

    def __init__(self, parts: Iterable[Span | bytes], length: int | None,
                 fds: Iterable[int] = (), on_close: Callable[[], None] | None = None):
        self.parts = iter(parts)
        self.length = length
        self.sent = 0  # bytes the server has written
        self._fds = list(fds)
        self._on_close = on_close
        self._closed = False
        self._pending: Span | bytes | None = None  # what read() has not returned yet of a part
        self._taken = 0  # bytes of the parts taken so far

    @property
    def file_body(self) -> Body:
        """What ``Gateway`` looks for on an answer (wrappers pass on their body's)."""
        return self

    def _next(self) -> Span | bytes | None:
        """The next non-empty part; the parts must hold exactly ``length`` bytes (a short or
        long answer must break the connection, never pass for a whole one)."""
        part, self._pending = self._pending, None
        if part is not None:
            return part
        while True:
            part = next(self.parts, None)
            if part is None:
                if self.length is not None and self._taken != self.length:
                    raise EOFError(f"the body ended after {self._taken} of its {self.length} bytes")
                return None
            size = part.length if isinstance(part, Span) else len(part)
            if size:
                break
        self._taken += size
        if self.length is not None and self._taken > self.length:
            raise ValueError(f"the body holds more than its {self.length} bytes")
        return part

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (at most CHUNK at a time); b"" at the end."""
        size = CHUNK if size is None or size < 0 else min(size, CHUNK)
        part = self._next()
        if part is None or size == 0:
            self._pending = part
            return b""
        if isinstance(part, Span):
            n = min(size, part.length)
            data = _pread_exactly(part.fd, n, part.offset)
            if n < part.length:
                self._pending = Span(part.fd, part.offset + n, part.length - n)
            return data
        if len(part) > size:
            self._pending = part[size:]
            part = part[:size]
        return bytes(part)  # a part may be a buffer its producer reuses

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data
            self.sent += len(data)  # resumed only once the server has written it

    def send(self, sock: socket.socket, chunked: bool = False) -> None:
        """Send every part on ``sock``, as HTTP/1.1 chunks if ``chunked``: spans with sendfile on a
        plain TCP socket, read and sent on a TLS one (the kernel cannot encrypt).  A plain socket
        blocks meanwhile, its timeout the kernel's send timeout: the kernel then sends as fast as
        the client reads, without a wake-up of Python for every socket buffer."""
        tls = isinstance(sock, ssl.SSLSocket)
        timeout = sock.gettimeout()
        if not tls:
            _send_timeout(sock, timeout)
        try:
            while (part := self._next()) is not None:
                size = part.length if isinstance(part, Span) else len(part)
                if chunked:
                    sock.sendall(b"%x\r\n" % size)
                if not isinstance(part, Span):
                    sock.sendall(part)
                    self.sent += size
                elif tls:
                    self._read_and_send(sock, part)
                else:
                    self._sendfile(sock, part)
                if chunked:
                    sock.sendall(b"\r\n")
        except BlockingIOError:  # the kernel's send timeout; cheroot closes quietly on "timed out"
            raise TimeoutError("timed out") from None
        finally:
            if not tls:
                try:
                    _send_timeout(sock, None)
                    sock.settimeout(timeout)
                except OSError:  # the connection is gone: cheroot closes it
                    pass

    def _read_and_send(self, sock: socket.socket, span: Span) -> None:
        end = span.offset + span.length
        for at in range(span.offset, end, CHUNK):
            n = min(CHUNK, end - at)
            sock.sendall(_pread_exactly(span.fd, n, at))
            self.sent += n

    def _sendfile(self, sock: socket.socket, span: Span) -> None:
        offset, left = span.offset, span.length
        while left:
            n = os.sendfile(sock.fileno(), span.fd, offset, min(left, _SENDFILE_MAX))
            if n == 0:
                raise EOFError(f"a file ended {left} bytes before the span it should hold")
            offset += n
            left -= n
            self.sent += n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.parts, "close", None)
            if close is not None:
                close()
        finally:
            for fd in self._fds:
                os.close(fd)
            if self._on_close is not None:
                self._on_close()


def _send_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Make ``sock`` blocking, with ``seconds`` as the kernel's send timeout (None: none)."""
    sock.setblocking(True)
    seconds = seconds or 0.0
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def _pread_exactly(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise EOFError(f"a file ended {n - len(data)} bytes before the span it should hold")
        data += more
    return data


def file_wrapper(filelike, block_size: int = CHUNK):
    """``wsgi.file_wrapper``: a Body as it is (for ``Gateway``), any other file in blocks."""
    if isinstance(filelike, Body):
        return filelike
    return _Blocks(filelike, block_size)


class _Blocks:
    def __init__(self, filelike, block_size: int):
        self.filelike, self.block_size = filelike, block_size

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.block_size):
            yield data

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class Gateway(wsgi.Gateway_10):
    """cheroot's WSGI gateway, sending Bodies of known length with sendfile on plain sockets."""

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["wsgi.file_wrapper"] = file_wrapper
        return environ

    def respond(self) -> None:
        response = self.req.server.wsgi_app(self.env, self.start_response)
        try:
            body = getattr(response, "file_body", None)
            if body is not None and self._may_send(body):
                self.req.ensure_headers_sent()  # cheroot decides on chunks, keep-alive
                self.req.conn.wfile.flush()
                body.send(self.req.conn.socket, self.req.chunked_write)
            else:
                for chunk in filter(None, response):
                    if not isinstance(chunk, bytes):
                        raise ValueError("WSGI Applications must yield bytes")
                    self.write(chunk)
        finally:
            self.req.ensure_headers_sent()
            close = getattr(response, "close", None)
            if close is not None:
                close()

    def _may_send(self, body: Body) -> bool:
        """Whether the body may go to the socket itself: its length is the Content-Length (or
        neither is known), there is a body (not a HEAD), and it is not small (a small one, such
        as a small map's tarball, goes through cheroot's writer like any other answer: making
        the socket blocking with a send timeout, and back, cost more than writing it)."""
        return (self.remaining_bytes_out == body.length and self.req.method != b"HEAD"
                and (body.length is None or body.length > SMALL)
                and isinstance(self.req.conn.socket, socket.socket))
