"""Reading request bodies from the WSGI stream, exactly.

Bottle's ``request.body`` de-chunks a chunked body a second time under cheroot,
so bodies are read from ``wsgi.input`` here: with Content-Length, exactly that
many bytes (a client that stops early is refused); chunked, to its end; without
either, 411.  The size limit is enforced while reading.
"""

from __future__ import annotations

from wogit import errors
from wogit.api.responses import BODY_DONE


class Body:
    def __init__(self, environ: dict, limit: int, what: str, empty_ok: bool = False):
        self.environ = environ
        self.limit = limit
        self.what = what
        self.received = 0
        self.empty_ok = empty_ok
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        declared = environ.get("CONTENT_LENGTH", "")
        if chunked and declared:
            raise errors.BAD_REQUEST("a request may not carry both Content-Length and Transfer-Encoding")
        if chunked:
            self.length = None
        elif not declared:
            raise errors.LENGTH_REQUIRED(f"the {what} must be sent with Content-Length or chunked encoding")
        elif not (declared.isascii() and declared.isdigit()):
            raise errors.BAD_REQUEST(f"invalid Content-Length {declared!r}")
        else:
            self.length = int(declared)
            if self.length == 0 and not empty_ok:
                environ[BODY_DONE] = True
                raise errors.BODY_EMPTY(f"the {what} is empty")
            if self.length > limit:
                raise errors.TOO_LARGE(f"the {what} is {self.length} bytes; this registry accepts at most {limit}")
        self.stream = environ["wsgi.input"]

    def read(self, size: int) -> bytes:
        if self.length is not None:
            size = min(size, self.length - self.received)
            if size <= 0:
                self.environ[BODY_DONE] = True
                return b""
        try:
            data = self.stream.read(size)
        except Exception as exc:  # a broken chunk, a reset, a timeout: the body is not whole
            raise self._broken(exc) from None
        self._count(len(data))
        return data

    def readinto(self, view: memoryview) -> int:
        """``read`` into a buffer: the bytes come straight from the stream when it can."""
        if self.length is not None:
            view = view[:max(0, self.length - self.received)]
            if not view:
                self.environ[BODY_DONE] = True
                return 0
        readinto = getattr(self.stream, "readinto", None)
        try:
            if readinto is not None:
                n = readinto(view)
            else:
                data = self.stream.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as exc:
            raise self._broken(exc) from None
        self._count(n)
        return n

    def _broken(self, exc: Exception) -> Exception:
        return errors.BODY_INCOMPLETE(f"the {self.what} could not be read to its end: {exc}")

    def _count(self, n: int) -> None:
        """Account for ``n`` bytes just read (0: the stream ended)."""
        if not n:
            if self.length is not None:
                raise errors.BODY_INCOMPLETE(
                    f"the {self.what} ended after {self.received} of {self.length} bytes")
            self.environ[BODY_DONE] = True
            if not self.received and not self.empty_ok:
                raise errors.BODY_EMPTY(f"the {self.what} is empty")
            return
        self.received += n
        if self.received > self.limit:
            raise errors.TOO_LARGE(f"the {self.what} is larger than this registry accepts ({self.limit} bytes)")

    def read_all(self) -> bytes:
        """The whole body; only for bodies whose limit is small."""
        parts = []
        while data := self.read(64 * 1024):
            parts.append(data)
        return b"".join(parts)

    def text(self) -> str:
        try:
            return self.read_all().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise errors.BODY_INVALID(f"the {self.what} is not valid UTF-8 (byte {exc.start})") from None
