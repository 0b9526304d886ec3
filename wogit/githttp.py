"""Git's smart HTTP protocol for the registry repository, through real ``git http-backend``.

``run(git_dir, request)`` starts ``git http-backend`` as a CGI program for one
request: the request body is copied to its stdin by a thread (so neither side
waits on the other), its CGI headers are parsed, and the rest of its stdout is
streamed back in chunks: nothing is held whole, whatever the size of a clone or
a push.  Only the three smart endpoints are served (``info/refs``,
``git-upload-pack``, ``git-receive-pack``); pushes go through the registry's
``pre-receive`` hook (``wogit.serverhooks``) like any other push.

The backend never sees the client's credentials: its environment is the server's
own without any ``GIT_*``, ``HTTP_*``, ``WO_*`` or CGI variable, plus the CGI
variables set here (``REMOTE_USER`` names the authenticated user, for the hooks).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from wogit import errors, objects

UPLOAD_PACK = "git-upload-pack"  # fetch and clone
RECEIVE_PACK = "git-receive-pack"  # push
SERVICES = (UPLOAD_PACK, RECEIVE_PACK)
CHUNK = objects.CHUNK
_CGI = ("CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_USER", "REMOTE_ADDR", "PATH_INFO", "QUERY_STRING",
        "REQUEST_METHOD", "SERVER_PROTOCOL", "GATEWAY_INTERFACE", "PATH_TRANSLATED", "AUTH_TYPE")
log = logging.getLogger("wogit")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # below the git endpoint: "info/refs", "git-upload-pack" or "git-receive-pack"
    query: str
    content_type: str | None
    content_length: str | None  # only when the client sent one; the backend reads to EOF otherwise
    content_encoding: str | None
    git_protocol: str | None
    user: str | None
    address: str | None


@dataclass(frozen=True)
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: Iterator[bytes]


def service(path: str, query: str) -> str | None:
    """The service a request asks for (None for anything but the smart endpoints)."""
    if path == "info/refs":
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "service" and value in SERVICES:
                return value
        return None
    return path if path in SERVICES else None


def run(git_dir: str, request: Request, body: objects.Reader | None, allow_push: bool) -> Response:
    """Answer one smart-HTTP request with ``git http-backend`` on ``git_dir``."""
    asked = service(request.path, request.query)
    if asked is None:
        raise errors.NOT_FOUND(f"{request.path!r} is not a git smart-HTTP endpoint "
                               "(info/refs?service=..., git-upload-pack, git-receive-pack)")
    if request.method == "POST" and request.content_type != f"application/x-{asked}-request":
        raise errors.UNSUPPORTED_MEDIA_TYPE(f"a {asked} request has Content-Type application/x-{asked}-request, "
                                            f"not {request.content_type or 'none'}")
    env = _environment(git_dir, request, asked, allow_push)
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(["git", "http-backend"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, cwd=git_dir, start_new_session=True)
    failed: list[Exception] = []  # what went wrong reading the request body, if anything
    feeder = threading.Thread(target=_feed, args=(proc, body, failed), name="wogit-git-feed", daemon=True)
    feeder.start()
    try:
        status, headers = _cgi_headers(proc.stdout)
        code = status.partition(" ")[0]
        if not (code.isdigit() and int(code) < 400):
            # Not expected once the request passed the checks above, but git's own error pages are
            # HTML or text: the client hears it as every registry error, in JSON.
            said = proc.stdout.read(4096).decode("utf-8", "replace").strip()
            raise _GIT_ERRORS.get(code, errors.INTERNAL)(f"git http-backend answered {status}: {said}")
        # In git's stateless HTTP protocol the backend reads the whole request before it answers
        # (http-backend writes its headers first): a body cut short must be known before the
        # answer's status is.
        feeder.join()
        if failed:
            raise failed[0]
    except BaseException:
        _finish(proc, feeder, stderr, kill=True)
        if failed and isinstance(failed[0], errors.WogitError):
            raise failed[0] from None  # a body cut short or too large: the client's fault, said so
        raise
    # A push whose client goes away after sending it still runs to its end: stopping
    # receive-pack midway could leave some of its refs updated and others not.
    return Response(status, headers, _stream(proc, feeder, stderr, drain=asked == RECEIVE_PACK))


#: What a refusal of git http-backend becomes (anything else is a 500).
_GIT_ERRORS = {"400": errors.BAD_REQUEST, "403": errors.FORBIDDEN, "404": errors.NOT_FOUND,
               "405": errors.METHOD_NOT_ALLOWED, "415": errors.UNSUPPORTED_MEDIA_TYPE}


def _environment(git_dir: str, request: Request, asked: str, allow_push: bool) -> dict[str, str]:
    # The server's own environment (PATH, proxies, what the operator's hooks need), without
    # anything that could steer git elsewhere or pose as a request's CGI variables.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("GIT_", "HTTP_", "WO_")) and name not in _CGI}
    env.update({
        "GIT_PROJECT_ROOT": git_dir,
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": "/" + request.path,
        # The service this server decided on, nothing else: git must not read another one of its own.
        "QUERY_STRING": f"service={asked}" if request.path == "info/refs" else "",
        "REQUEST_METHOD": request.method,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        # http.receivepack: the gate has already decided who may push.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.receivepack",
        "GIT_CONFIG_VALUE_0": "true" if allow_push else "false",
    })
    optional = {"CONTENT_TYPE": request.content_type, "CONTENT_LENGTH": request.content_length,
                "HTTP_CONTENT_ENCODING": request.content_encoding, "GIT_PROTOCOL": request.git_protocol,
                "REMOTE_USER": request.user, "REMOTE_ADDR": request.address}
    env.update({name: value for name, value in optional.items() if value})
    return env


def _feed(proc: subprocess.Popen, body: objects.Reader | None, failed: list[Exception]) -> None:
    """Copy the request body to the backend; on a broken body, stop the backend (no half push)."""
    try:
        while body is not None and (chunk := body.read(CHUNK)):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the backend has answered without reading everything (e.g. an error)
    except Exception as exc:
        failed.append(exc)
        _kill(proc)


def _cgi_headers(stdout) -> tuple[str, list[tuple[str, str]]]:
    status, headers = "200 OK", []
    while True:
        line = stdout.readline(8192)
        if not line:
            raise errors.INTERNAL("git http-backend ended without an answer")
        line = line.rstrip(b"\r\n").decode("latin-1")
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = value.strip()
        else:
            headers.append((name.strip(), value.strip()))


def _stream(proc: subprocess.Popen, feeder: threading.Thread, stderr, drain: bool) -> Iterator[bytes]:
    complete = False
    try:
        while chunk := proc.stdout.read1(CHUNK):
            yield chunk
        complete = True
    finally:
        if not complete and drain:
            while proc.stdout.read1(CHUNK):
                pass
            complete = True
        _finish(proc, feeder, stderr, kill=not complete)


def _finish(proc: subprocess.Popen, feeder: threading.Thread, stderr, kill: bool) -> None:
    if kill:
        _kill(proc)
    proc.stdout.close()
    code = proc.wait()
    feeder.join()
    stderr.seek(0)
    said = stderr.read(4096).decode("utf-8", "replace").strip()
    stderr.close()
    if said or (code and not kill):
        log.warning("git http-backend (exit status %s): %s", code, said)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
