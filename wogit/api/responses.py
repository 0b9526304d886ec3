"""How every answer is written: JSON bodies, and the one place errors become ``{"msg": ...}``."""

from __future__ import annotations

import json
import logging
import time
import urllib.parse

import bottle

from wogit import errors

log = logging.getLogger("wogit")

#: Set in the WSGI environ once a request body has been read to its end.
BODY_DONE = "wogit.body_done"


def json_response(status: int, payload: dict, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    body = json.dumps(payload, sort_keys=True) + "\n"
    return bottle.HTTPResponse(body, status, {**(headers or {}), "Content-Type": "application/json"})


def error_response(err: errors.WogitError) -> bottle.HTTPResponse:
    headers = dict(err.headers)
    if _body_pending(bottle.request.environ):
        # An unread body must not be drained (it may be GiBs) nor parsed as the next request.
        headers["Connection"] = "close"
    return json_response(err.status, {"msg": err.msg}, headers)


def _body_pending(environ: dict) -> bool:
    if environ.get(BODY_DONE):
        return False
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    if "CONTENT_LENGTH" not in environ:
        # No framing at all: whatever the client sends next is not a request to trust.
        return environ.get("REQUEST_METHOD") in ("PUT", "POST", "PATCH")
    return environ["CONTENT_LENGTH"] not in ("", "0")


def iso_time(seconds: int) -> str:
    """A git time (whole seconds) as the API writes times: ISO-8601 in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def http_date(seconds: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds))


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weak comparison, as RFC 9110 says)."""
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def header(name: str) -> str | None:
    """A request header as text; 400 if it is not UTF-8 (Bottle would raise)."""
    try:
        return bottle.request.get_header(name)
    except UnicodeError:
        raise errors.BAD_REQUEST(f"the {name} header is not valid UTF-8") from None


def guard(callback):
    """Bottle plugin: a route's WogitError, or any failure, becomes a JSON error response."""
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except errors.WogitError as err:
            return error_response(err)
        except Exception:
            log.exception("unexpected failure in %s %s", bottle.request.method, bottle.request.path)
            return error_response(errors.INTERNAL())
    return wrapper


class App(bottle.Bottle):
    """A Bottle app whose own errors (no route, wrong method, bad path) are JSON too."""

    def __call__(self, environ, start_response):
        # Bottle drops bytes of the path that are not UTF-8 ('/v%ff1' would be '/v1'), and
        # reads the query string's as Latin-1 ('?last=%ff' would be 'ÿ').
        query = urllib.parse.unquote_to_bytes(environ.get("QUERY_STRING", "").encode("latin-1"))
        for what, raw in (("path", environ["PATH_INFO"].encode("latin-1")), ("query string", query)):
            try:
                raw.decode("utf-8")
            except UnicodeError:
                body = json.dumps({"msg": f"the {what} is not valid UTF-8"}).encode() + b"\n"
                start_response("400 Bad Request", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))), ("Connection", "close")])
                return [body]
        return super().__call__(environ, start_response)

    def default_error_handler(self, res: bottle.HTTPError) -> str:
        request = bottle.request
        if res.status_code == 404:
            err = errors.NOT_FOUND(f"no such resource: {request.method} {request.path}")
        elif res.status_code == 405:
            allow = res.headers.get("Allow", "")
            err = errors.METHOD_NOT_ALLOWED(f"{request.method} is not allowed on {request.path}; allowed: {allow}")
        elif res.status_code < 500:
            err = errors.ErrorCode("BAD_REQUEST", res.status_code, "bad request")(str(res.body))
        else:
            if res.traceback:
                log.error("unexpected failure in %s %s\n%s", request.method, request.path, res.traceback)
            err = errors.INTERNAL()
        reply = error_response(err)
        bottle.response.status = err.status
        for name, value in reply.headers.items():
            bottle.response.set_header(name, value)
        return reply.body
