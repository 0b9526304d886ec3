"""Every error the registry can answer, declared once.

Each ``ErrorCode`` names a failure, its HTTP status and what it means; raising
``CODE("what exactly was wrong")`` produces a ``WogitError`` that the HTTP layer
turns into ``{"msg": "..."}`` in one place (``wogit.api.errors``).  Storage raises
these too: they describe what went wrong, not how it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass


class WogitError(Exception):
    """A failure the client should hear about: a code, a message, extra headers."""

    def __init__(self, code: ErrorCode, msg: str, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return self.code.status


@dataclass(frozen=True)
class ErrorCode:
    name: str
    status: int
    description: str

    def __call__(self, msg: str | None = None, headers: dict[str, str] | None = None) -> WogitError:
        return WogitError(self, msg or self.description, headers)


CATALOGUE: list[ErrorCode] = []


def _declare(name: str, status: int, description: str) -> ErrorCode:
    code = ErrorCode(name, status, description)
    CATALOGUE.append(code)
    return code


NAME_INVALID = _declare("NAME_INVALID", 400, "a repository, map, tag or metadata key breaks the name rules")
DIGEST_INVALID = _declare("DIGEST_INVALID", 400, "a Wo-Map-Digest or Wo-Config-Digest header is not sha256: and 64 lowercase hex digits")
DIGEST_MISMATCH = _declare("DIGEST_MISMATCH", 400, "the uploaded bytes do not have the digest the client announced")
BODY_EMPTY = _declare("BODY_EMPTY", 400, "the request body is empty")
BODY_INVALID = _declare("BODY_INVALID", 400, "the request body is not of the documented form")
BODY_INCOMPLETE = _declare("BODY_INCOMPLETE", 400, "the request body ended before its announced length")
METADATA_TOO_LARGE = _declare("METADATA_TOO_LARGE", 400, "the map's metadata would exceed 1000 keys or 1 MiB in all")
BAD_REQUEST = _declare("BAD_REQUEST", 400, "the request is malformed")
NOT_FOUND = _declare("NOT_FOUND", 404, "no such resource")
BLOB_UNKNOWN = _declare("BLOB_UNKNOWN", 404, "a tag names a digest that is malformed or was not uploaded as that kind")
TAG_UNKNOWN = _declare("TAG_UNKNOWN", 404, "the tag does not exist")
MAP_UNKNOWN = _declare("MAP_UNKNOWN", 404, "the repository or map does not exist (a map exists while it has a tag or a metadata history)")
COMMIT_UNKNOWN = _declare("COMMIT_UNKNOWN", 404, "?at= or _history's ?last= names a commit that is not in the map's history")
KEY_UNKNOWN = _declare("KEY_UNKNOWN", 404, "the map has no metadata with that key")
UNAUTHORIZED = _declare("UNAUTHORIZED", 401, "no valid credentials were given and they are needed (see WWW-Authenticate)")
FORBIDDEN = _declare("FORBIDDEN", 403, "the user's permissions do not allow this")
READ_ONLY = _declare("READ_ONLY", 403, "this registry is a read-only replica; msg names the primary that takes writes")
METHOD_NOT_ALLOWED = _declare("METHOD_NOT_ALLOWED", 405, "the method is not allowed on this path (see Allow)")
EXISTS = _declare("EXISTS", 409, "the map, config or tag already exists")
LENGTH_REQUIRED = _declare("LENGTH_REQUIRED", 411, "the request has a body but neither Content-Length nor chunked encoding")
UNSUPPORTED_MEDIA_TYPE = _declare("UNSUPPORTED_MEDIA_TYPE", 415, "a git request's Content-Type is not the one of its service (application/x-git-upload-pack-request, application/x-git-receive-pack-request)")
RANGE_NOT_SATISFIABLE = _declare("RANGE_NOT_SATISFIABLE", 416, "the Range starts at or past the end (see Content-Range for the size)")
TOO_LARGE = _declare("TOO_LARGE", 413, "the request body is larger than this registry accepts")
HOOK_REJECTED = _declare("HOOK_REJECTED", 422, "an operator's validation hook (wo-validate-map, -config, -tag) refused the content; msg is its stderr")
TOO_MANY_ATTEMPTS = _declare("TOO_MANY_ATTEMPTS", 429, "too many failed logins from this address; wait Retry-After seconds")
UNAVAILABLE = _declare("UNAVAILABLE", 503, "the registry is busy; retry shortly")
TOO_MANY_UPLOADS = _declare("TOO_MANY_UPLOADS", 503, "as many uploads as the registry takes at once (max_uploads) are running; retry after Retry-After seconds")
NOT_READY = _declare("NOT_READY", 503, "the registry cannot read or write its repository (GET /readyz); msg says what failed")
REPOSITORY_DAMAGED = _declare("REPOSITORY_DAMAGED", 500, "git cannot read objects the registry's refs name; an operator should run wogit fsck")
RULE_BROKEN = _declare("RULE_BROKEN", 500, "a write would have broken the registry's layout rules (a bug); nothing changed")
INTERNAL = _declare("INTERNAL", 500, "the registry failed unexpectedly; the request changed nothing")
INSUFFICIENT_STORAGE = _declare("INSUFFICIENT_STORAGE", 507, "the registry's disk is full (or its quota reached); nothing was stored, retry once space is freed")


def markdown_table() -> str:
    """The catalogue as the Markdown table in docs/api.md (kept equal by a test)."""
    rows = ["| status | error (wogit.errors) | meaning |", "| --- | --- | --- |"]
    rows += [f"| {c.status} | `{c.name}` | {c.description} |" for c in CATALOGUE]
    return "\n".join(rows) + "\n"
