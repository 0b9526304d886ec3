"""Every request observed once: its X-Request-Id, its access-log line, its metrics.

``observed(app, metrics)`` wraps the whole WSGI app, so it sees every answer: the
routes', the framework's 404s and 405s, errors, and streaming bodies, whose bytes are
counted as they go (never buffered).  The line is logged and the metrics observed when
the server closes the answer: after its last byte, or once the client went away.

The log's lines are ``plain`` text or ``json`` objects (``configure_logging``).  In plain
lines the method and path are the client's bytes %-escaped (anything but printable
ASCII), so no request can split a line or forge one; in JSON, ``json.dumps`` escapes.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid

from wogit.api.gate import USER
from wogit.metrics import UNMATCHED, Metrics

access = logging.getLogger("wogit.access")
REQUEST_ID = "wogit.request_id"  # the request's id in the WSGI environ
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PLAIN = "%(asctime)s %(name)s %(levelname)s %(message)s"


def request_id(supplied: str | None) -> str:
    """The client's X-Request-Id if it is sane (1-128 of ``[A-Za-z0-9._:-]``), else a new one."""
    return supplied if supplied is not None and _SANE_ID.fullmatch(supplied) else uuid.uuid4().hex


@functools.lru_cache(maxsize=256)  # one entry per route
def _rule(rule: str) -> str:
    """A route's rule as a label: ``<name:filter>`` written ``<name>``."""
    return _FILTER.sub(r"<\1>", rule)


_FILTER = re.compile(r"<(\w+):[^>]*>")
_PRINTABLE = re.compile(r"[!-$&-~]*")  # printable ASCII but '%': logged as it is


def observed(app, metrics: Metrics):
    """WSGI middleware: an X-Request-Id on every answer, one access-log line and one
    metrics observation per request; names the user, never credentials."""
    def observe(environ, start_response):
        started = time.monotonic()
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")  # before Bottle decodes it
        rid = environ[REQUEST_ID] = request_id(environ.get("HTTP_X_REQUEST_ID"))
        body = environ["wsgi.input"] = _Counted(environ.get("wsgi.input"))
        status = ["500"]

        def start(line, headers, exc_info=None):
            status[0] = line.split(" ", 1)[0]
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"] + [("X-Request-Id", rid)]
            return start_response(line, headers, exc_info)

        def finished(sent: int) -> None:
            seconds = time.monotonic() - started
            route = environ.get("bottle.route")
            metrics.observe(_rule(route.rule) if route is not None else UNMATCHED, method, status[0], seconds,
                            body.count, sent)
            _log_line(environ.get("REMOTE_ADDR", "-"), environ.get(USER), method, path, status[0], sent, seconds, rid)

        try:
            answer = app(environ, start)
        except BaseException:
            finished(0)
            raise
        return _Measured(answer, finished)
    return observe


def _log_line(address: str, user: str | None, method: str, path: str, status: str, sent: int, seconds: float,
              rid: str) -> None:
    """``method`` and ``path`` are WSGI strings: the client's bytes, one character each."""
    fields = {"address": address, "method": _text(method), "path": _text(path), "status": int(status),
              "bytes": sent, "duration_ms": round(seconds * 1000, 3), "user": user, "request_id": rid}
    access.info("%s %s %s %s %s %d %.1fms %s", address, user or "-", _printable(method), _printable(path),
                status, sent, seconds * 1000, rid, extra={"access": fields})


def _printable(text: str) -> str:
    """``text`` (WSGI latin-1) with every byte that is not printable ASCII, and '%', %-escaped."""
    if _PRINTABLE.fullmatch(text):
        return text
    return "".join(ch if "!" <= ch <= "~" and ch != "%" else f"%{ord(ch):02X}"
                   for ch in text.encode("latin-1", "replace").decode("latin-1"))


def _text(text: str) -> str:
    """``text`` (WSGI latin-1) read as the UTF-8 the client meant; other bytes as ``\\xNN``."""
    return text.encode("latin-1", "replace").decode("utf-8", "backslashreplace")


class _Counted:
    """``wsgi.input``, counting the body bytes the app reads."""

    def __init__(self, stream):
        self.stream = stream
        self.count = 0
        if hasattr(stream, "readinto"):  # offered only then: without it, a Body falls back to read
            self.readinto = self._readinto

    def read(self, *args) -> bytes:
        return self._counted(self.stream.read(*args))

    def readline(self, *args) -> bytes:
        return self._counted(self.stream.readline(*args))

    def _readinto(self, view) -> int:
        n = self.stream.readinto(view)
        self.count += n
        return n

    def readlines(self, *args) -> list[bytes]:
        return [self._counted(line) for line in self.stream.readlines(*args)]

    def __iter__(self):
        return (self._counted(line) for line in self.stream)

    def _counted(self, data: bytes) -> bytes:
        self.count += len(data)
        return data


class _Measured:
    """The app's answer, counting the bytes the server has sent; reports when closed.

    A ``wogit.sendfile.Body`` the server may send without iterating it counts its own bytes."""

    def __init__(self, answer, finished):
        self.answer = answer
        self.finished = finished
        self.sent = 0
        self.file_body = getattr(answer, "file_body", None)

    def __iter__(self):
        for chunk in self.answer:
            yield chunk
            self.sent += len(chunk)  # resumed only once the server has written it

    def close(self) -> None:
        try:
            close = getattr(self.answer, "close", None)
            if close is not None:
                close()
        finally:
            self.finished(self.file_body.sent if self.file_body is not None else self.sent)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: an access line's fields, or any other record's message."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name}
        fields = getattr(record, "access", None)
        line.update(fields if fields is not None else {"msg": record.getMessage()})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(log_format: str) -> None:
    """The process's log on stderr, in ``plain`` lines or ``json`` objects."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # No line shows the caller, thread or process: logging need not look them up for every
    # record (the optimisations the logging docs list; an access line is logged per request).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
