"""The OpenAPI 3.1 document of the HTTP API, built here and committed as ``wogit/openapi.json``.

``python -m wogit.openapi`` rewrites the JSON file from ``document()``; a test keeps the two
equal, another keeps the document's paths equal to the app's routes.  ``GET /openapi.json``
serves the committed file (``wogit.api.contract``).  docs/api.md is the prose; this is the
contract a client or a fuzzer can check answers against.

Every ``GET`` answers ``HEAD`` too (Bottle's fallback): each ``head`` operation is derived from
its ``get`` with the same statuses and headers and no bodies.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from wogit import __version__

PATH = Path(__file__).with_name("openapi.json")

ERROR = {"$ref": "#/components/schemas/Error"}
DIGEST_PATTERN = "^sha256:[0-9a-f]{64}$"
NAME_PATTERN = r"^(?!.*\.lock$)[a-z0-9]+([._-][a-z0-9]+)*$"
TAG_PATTERN = r"^(?!metadata$)(?!.*\.\.)(?!.*\.$)(?!.*\.lock$)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KEY_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
COMMIT_PATTERN = "^[0-9a-f]{40}$"
# A PUT .../metadata body (wogit.metadata.parse): tokens split at ASCII whitespace, each a simple key
# (names.KEY_RULE) or a nested one (a `.`, `[` or `]`; at most 1024 characters), `=`, and a value
# without whitespace, control characters (Cc) or line/paragraph separators.
_SEPARATOR = r"[ \t\n\v\f\r]"
_VALUE_CHAR = r"[^\x00-\x20\x7f-\x9f\u2028\u2029]"
_NESTED_KEY = r"(?=[A-Za-z0-9_.\[\]-]{1,1024}=)[A-Za-z0-9_-]*[.\[\]][A-Za-z0-9_.\[\]-]*"
METADATA_PATTERN = rf"^{_SEPARATOR}*(?:(?:[A-Za-z0-9_-]{{1,128}}|{_NESTED_KEY})={_VALUE_CHAR}*(?:{_SEPARATOR}+|$))*$"
# The RFC 3339 times ?at= takes (Python's datetime.fromisoformat): upper-case T and Z, no leap second, no year 0.
AT_TIME_PATTERN = r"^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"


def ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def error(name: str, description: str | None = None) -> dict:
    """A reference to one of the shared error responses, with this operation's own description."""
    answer = ref("responses", name)
    if description:
        answer["description"] = description
    return answer


def header(name: str) -> dict:
    return ref("headers", name)


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: dict | None = None, headers: dict | None = None,
       content: dict | None = None, links: dict | None = None) -> dict:
    answer = {"description": description,
              "headers": {"X-Request-Id": header("X-Request-Id"), **(headers or {})}}
    if schema is not None:
        answer["content"] = json_content(schema)
    if content is not None:
        answer["content"] = content
    if links:
        answer["links"] = links
    return answer


def links(source: str, *operation_ids: str) -> dict:
    """OpenAPI links from an answer to the operations that read what it names: ``source`` is
    "digest" (an upload's answer) or "tag" (a tag as PUT and DELETE answer it)."""
    if source == "digest":
        parameters = {"digest": "$response.body#/digest"}
    else:
        parameters = {"repository": "$response.body#/repository", "map": "$response.body#/map",
                      "tag_id": "$response.body#/tag"}
    made = {}
    for operation_id in operation_ids:
        wanted = {k: v for k, v in parameters.items() if k != "tag_id" or operation_id in TAG_OPERATIONS}
        made[operation_id[0].upper() + operation_id[1:]] = {"operationId": operation_id, "parameters": wanted}
    return made


TAG_OPERATIONS = ("getTag", "deleteTag")  # operations of /{repository}/{map}/{tag_id}: they take tag_id


# -- who may call what ----------------------------------------------------------

OPEN = "nothing"


def needs(level: str, scope: str = "repository") -> dict:
    """The permission an operation needs: ``x-wogit-needs`` (checked against the routes by a
    test), the security requirement (HTTP Basic, or anonymous where the policy allows it) and
    the 401/403/429 answers."""
    where = {"repository": "on `{repository}`", "any": "on at least one repository",
             "everywhere": "on every repository (a pattern matching every name, `*`)"}[scope]
    fields = {"x-wogit-needs": {"level": level, "scope": scope},
              "security": [{"basic": []}, {}],
              "x-needs-text": f"Needs `{level}` {where}."}
    return fields


def auth_errors(write: bool = False, when: str = "") -> dict:
    forbidden = "valid credentials without the permission (FORBIDDEN)"
    if write:
        forbidden += "; or this registry is a read-only replica (READ_ONLY, before credentials are looked at)"
    return {"401": error("Unauthorized", when + "no credentials where they are needed, wrong credentials, "
                                               "or a malformed Authorization header (UNAUTHORIZED)"),
            "403": error("Forbidden", when + forbidden),
            "429": error("TooManyRequests", when + "too many failed logins from this address (TOO_MANY_ATTEMPTS)")}


MALFORMED = ("the path or a header the registry reads is not UTF-8, or the request's framing is invalid "
             "(BAD_REQUEST)")


def always(bad: str | None = None) -> dict:
    """The answers any operation may give: 400 (``bad``: what else this operation refuses) and 500."""
    return {"400": error("BadRequest", f"{bad}; or {MALFORMED}" if bad else MALFORMED),
            "500": error("InternalError")}


def body_errors(limit: str) -> dict:
    return {"411": error("LengthRequired"),
            "413": error("TooLarge", f"the body is larger than {limit}, or the headers exceed 64 KiB (TOO_LARGE)")}


# -- parameters -------------------------------------------------------------------

def path_param(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query_param(name: str, description: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


PARAMETERS = {
    "repository": path_param("repository", "A repository name: `[a-z0-9]+([._-][a-z0-9]+)*`, at most 64 "
                             "characters, not ending in `.lock`. Another name is answered 400 (NAME_INVALID).",
                             {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64}),
    "map": path_param("map", "A map name: the rule of repository names. Another name is answered 400.",
                      {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64}),
    "tag_id": path_param("tag_id", "A tag: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, not `metadata` (reserved for "
                         "the metadata routes), no `..`, not ending in `.` or `.lock`. Another name is "
                         "answered 400 (NAME_INVALID).",
                         {"type": "string", "pattern": TAG_PATTERN, "maxLength": 128}),
    "key": path_param("key", "A simple metadata key, `[A-Za-z0-9_-]{1,128}`. Any other key never exists: "
                      "404 (KEY_UNKNOWN), not 400.", {"type": "string", "pattern": KEY_PATTERN}),
    "digest": path_param("digest", "`sha256:` and the 64 lowercase hex digits of the exact bytes. "
                         "Another digest is answered 400 (DIGEST_INVALID).",
                         {"type": "string", "pattern": DIGEST_PATTERN}),
    "n": query_param("n", "Items per page, 1 to 1000 (default 100); anything else is 400.",
                     {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
    "at": query_param("at", "Answer as the metadata was at this moment: an ISO-8601 time "
                      "(`2026-12-04T01:02:03Z`, `2026-12-04T02:02:03+01:00`, `2026-12-04`; UTC without an "
                      "offset; rounded down to whole seconds) or a full commit id of the map's `_history`. "
                      "Anything else is 400; a commit id not in the history is 404 (COMMIT_UNKNOWN).",
                      {"type": "string", "anyOf": [
                          {"format": "date-time", "pattern": AT_TIME_PATTERN},
                          {"format": "date", "pattern": "^(?!0000)"}, {"pattern": COMMIT_PATTERN}]}),
}


def last_param(token: str, schema: dict | None = None) -> dict:
    return query_param("last", f"Continuation token: {token}. Items strictly after it are answered (it need not "
                       "still exist). Follow the `Link` header rather than building tokens.",
                       schema or {"type": "string"})


def params(*names: str) -> list[dict]:
    return [ref("parameters", name) for name in names]


def digest_header(kind: str) -> str:
    return "Wo-Map-Digest" if kind == "map" else "Wo-Config-Digest"


# -- schemas ------------------------------------------------------------------------

def obj(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


STRING, INTEGER, NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}
TIME = {"type": "string", "format": "date-time", "description": "ISO-8601 in UTC, whole seconds "
        "(`2026-12-04T01:02:03Z`)"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
DIGEST = {"$ref": "#/components/schemas/Digest"}
NAME = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64}
TAG = {"type": "string", "pattern": TAG_PATTERN, "maxLength": 128}
LEVEL = {"type": "string", "enum": ["read", "write", "delete", "admin"]}


def names_list(field: str, description: str) -> dict:
    return obj({field: {"type": "array", "items": NAME, "description": description}})


SCHEMAS = {
    "Error": {"type": "object", "description": "Every 4xx and 5xx answer of the registry (from a route, the "
              "framework or the HTTP server itself).",
              "properties": {"msg": {"type": "string", "description": "what was wrong"}},
              "required": ["msg"], "additionalProperties": False},
    "Digest": {"type": "string", "pattern": DIGEST_PATTERN, "description": "sha256: and 64 lowercase hex digits"},
    "TagBody": {"type": "object", "description": "Both digests, as strings; other fields are ignored.",
                "properties": {"map_digest": {"type": "string", "description": "an uploaded map's digest"},
                               "config_digest": {"type": "string", "description": "an uploaded config's digest"},
                               "map_proof": {"type": "string", "description": "the upload's Wo-Upload-Proof: "
                                             "lets its uploader tag a digest it may not otherwise read"},
                               "config_proof": {"type": "string", "description": "the same, for the config"}},
                "required": ["map_digest", "config_digest"]},
    "Tag": obj({"repository": NAME, "map": NAME, "tag": TAG, "map_digest": DIGEST, "config_digest": DIGEST,
                "created": TIME}),
    "MapTag": obj({"tag": TAG, "map_digest": DIGEST, "config_digest": DIGEST, "created": TIME}),
    "Repositories": names_list("repositories", "repositories holding a map that the client may read, by name"),
    "Maps": names_list("maps", "the repository's maps, by name"),
    "MapTags": obj({"tags": {"type": "array", "items": ref("schemas", "MapTag")}}),
    "Tags": obj({"tags": {"type": "array", "items": ref("schemas", "Tag")}}),
    "Change": obj({
        "time": TIME,
        "user": {"type": ["string", "null"], "description": "the authenticated user; null for an anonymous "
                 "client of an open registry"},
        "action": {"type": "string", "enum": ["create-tag", "delete-tag", "set-metadata", "delete-metadata",
                                              "change-metadata"],
                   "description": "`change-metadata`: a commit (pushed with git) that both set and deleted keys"},
        "commit": {"type": "string", "pattern": COMMIT_PATTERN, "description": "the git commit recording it: "
                   "the tag's own commit for create-tag, a commit of the metadata history otherwise (for ?at=)"},
        "tag": TAG,
        "keys": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "map_digest": DIGEST, "config_digest": DIGEST,
    }, ["time", "user", "action", "commit"]),
    "History": obj({"history": {"type": "array", "items": ref("schemas", "Change"),
                                "description": "newest first"}}),
    "Upload": obj({"digest": DIGEST}),
    "MetadataSet": obj({"set": {"type": "array", "items": {"type": "string", "pattern": KEY_PATTERN},
                                "description": "the keys stored, sorted"},
                        "ignored": {"type": "array", "items": {"type": "string"},
                                    "description": "nested keys (with `.`, `[` or `]`), not stored"}}),
    "MetadataDeleted": obj({"deleted": {"type": "string", "pattern": KEY_PATTERN}}),
    "Version": obj({
        "api": {"const": "v1"}, "name": {"const": "wogit"}, "version": STRING,
        "authentication": {"enum": ["open", "required"]},
        "anonymous": {"type": "object", "additionalProperties": LEVEL,
                      "description": "what anonymous clients may do: repository pattern -> level"},
        "replication": {"oneOf": [
            obj({"role": {"const": "primary"}}),
            obj({"role": {"const": "replica"}, "primary": STRING,
                 "lag_seconds": {"type": ["number", "null"]}})]},
    }),
    "Status": obj({
        "role": {"enum": ["primary", "replica"]},
        "replica": {"oneOf": [{"type": "null"}, obj({
            "primary": STRING, "interval_seconds": NUMBER,
            "lag_seconds": {"type": ["number", "null"], "description": "since the start of the last successful "
                            "fetch; null before one"},
            "last_fetch": NULLABLE_TIME, "last_attempt": NULLABLE_TIME,
            "last_error": {"type": ["string", "null"]}, "fetches": INTEGER, "failures": INTEGER})]},
        "push_mirrors": {"type": "array", "items": obj({
            "url": {"type": "string", "description": "without a password"}, "in_sync": {"type": "boolean"},
            "last_push": NULLABLE_TIME, "last_attempt": NULLABLE_TIME, "last_error": {"type": ["string", "null"]},
            "retry_in_seconds": {"type": ["number", "null"]}, "pushes": INTEGER, "failures": INTEGER})},
        "notify": {"type": "array", "items": STRING, "description": "replicas told to fetch after every write"},
    }),
    "Health": obj({"status": {"const": "ok"}}),
    "Ready": obj({"status": {"const": "ready"}}),
    "Refresh": obj({"refresh": {"const": "scheduled"}}),
}

HEADERS = {
    "X-Request-Id": {"description": "The request's id (the client's own if it sent a valid one: 1 to 128 of "
                     "`[A-Za-z0-9._:-]`; else 32 lowercase hex digits); on every answer.",
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}},
    "Wo-Map-Digest": {"description": "The map's digest.", "schema": DIGEST},
    "Wo-Upload-Proof": {"description": "Proof that this user holds the uploaded bytes: pass it as the tag "
                                       "body's map_proof or config_proof.", "schema": {"type": "string"}},
    "Wo-Config-Digest": {"description": "The config's digest.", "schema": DIGEST},
    "Wo-Metadata-Commit": {"description": "The metadata commit whose state this is (absent before the map's "
                           "first metadata change).", "schema": {"type": "string", "pattern": COMMIT_PATTERN}},
    "ETag": {"description": "A strong entity tag.", "schema": STRING},
    "Link": {"description": 'While more items remain: `</same/path?n=<n>&last=<token>>; rel="next"` (RFC 8288).',
             "schema": STRING},
    "Location": {"description": "The created tag's path.", "schema": STRING},
    "Content-Range": {"description": "`bytes <first>-<last>/<size>` (206) or `bytes */<size>` (416).",
                      "schema": {"type": "string", "pattern": r"^bytes (\d+-\d+|\*)/\d+$"}},
    "Accept-Ranges": {"description": "Byte ranges are served.", "schema": {"const": "bytes"}},
    "Last-Modified": {"description": "The tag's creation time (HTTP date).", "schema": STRING},
    "Content-Disposition": {"description": '`attachment; filename="<repository>-<map>-<tag_id>.tar.gz"`',
                            "schema": STRING},
    "WWW-Authenticate": {"description": 'Always `Basic realm="wogit", charset="UTF-8"`.',
                         "schema": {"const": 'Basic realm="wogit", charset="UTF-8"'}},
    "Retry-After": {"description": "Seconds to wait before trying again (to log in: 429; to upload: 503).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}


def error_response(description: str, **headers: dict) -> dict:
    return {"description": description, "content": json_content(ERROR),
            "headers": {"X-Request-Id": header("X-Request-Id"), **headers}}


RESPONSES = {
    "BadRequest": error_response("Malformed request (NAME_INVALID, DIGEST_INVALID, DIGEST_MISMATCH, BODY_EMPTY, "
                                 "BODY_INVALID, BODY_INCOMPLETE, METADATA_TOO_LARGE, BAD_REQUEST)."),
    "Unauthorized": error_response("No valid credentials where they are needed (UNAUTHORIZED).",
                                   **{"WWW-Authenticate": header("WWW-Authenticate")}),
    "Forbidden": error_response("Not permitted (FORBIDDEN), or a write to a read-only replica (READ_ONLY)."),
    "NotFound": error_response("No such resource (NOT_FOUND, BLOB_UNKNOWN, TAG_UNKNOWN, MAP_UNKNOWN, "
                               "COMMIT_UNKNOWN, KEY_UNKNOWN)."),
    "Conflict": error_response("It exists already (EXISTS)."),
    "LengthRequired": error_response("The request has a body but neither Content-Length nor chunked encoding "
                                     "(LENGTH_REQUIRED); the connection is closed."),
    "TooLarge": error_response("The request body is larger than this registry accepts (TOO_LARGE)."),
    "UnsupportedMediaType": error_response("A git request whose Content-Type is not its service's "
                                           "`application/x-<service>-request` (UNSUPPORTED_MEDIA_TYPE)."),
    "RangeNotSatisfiable": error_response("The Range starts at or past the end (RANGE_NOT_SATISFIABLE).",
                                          **{"Content-Range": header("Content-Range")}),
    "HookRejected": error_response("An operator's validation hook refused the content (HOOK_REJECTED); msg is "
                                   "its stderr."),
    "TooManyRequests": error_response("Too many failed logins from this address (TOO_MANY_ATTEMPTS); verified "
                                      "credentials are not refused.", **{"Retry-After": header("Retry-After")}),
    "Unavailable": error_response("The registry is busy (UNAVAILABLE); retry shortly."),
    "UploadsBusy": error_response("The registry is busy (UNAVAILABLE), or runs as many uploads as it takes at once "
                                  "(`--max-uploads`; TOO_MANY_UPLOADS, answered before the body is read, with "
                                  "Retry-After); retry shortly.", **{"Retry-After": header("Retry-After")}),
    "InsufficientStorage": error_response("The registry's disk is full or its quota reached "
                                          "(INSUFFICIENT_STORAGE); nothing was stored, and the same request "
                                          "succeeds once space is freed."),
    "InternalError": error_response("The registry failed unexpectedly (INTERNAL, RULE_BROKEN), or its repository is damaged (REPOSITORY_DAMAGED); nothing changed."),
}


# -- the operations -----------------------------------------------------------------

def op(operation_id: str, summary: str, description: str, responses: dict, access: dict | None = None,
       parameters: list | None = None, body: dict | None = None, tags: list[str] | None = None) -> dict:
    operation = {"operationId": operation_id, "summary": summary, "tags": tags or []}
    if access is None:
        operation["description"] = description + "\n\nNeeds no credentials."
        operation["x-wogit-needs"] = None
        operation["security"] = []
    else:
        access = dict(access)
        operation["description"] = description + "\n\n" + access.pop("x-needs-text")
        operation.update(access)
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    # Any request: headers over 64 KiB are refused by the HTTP server (body_errors says more where there is a body).
    responses.setdefault("413", error("TooLarge", "the request's headers exceed 64 KiB in all (TOO_LARGE)"))
    operation["responses"] = {code: responses[code] for code in sorted(responses)}
    return operation


def raw_body(media: str, description: str, schema: dict | None = None) -> dict:
    return {"required": True, "description": description,
            "content": {media: {"schema": schema or {"type": "string"}}}}


def version() -> dict:
    return {"get": op("getVersion", "The version, and who may do what",
                      "Ignores credentials. Any other `/v<N>` is 404.",
                      {"200": ok("The version", ref("schemas", "Version")), **always()}, tags=["registry"])}


def contract() -> dict:
    return {"get": op("getOpenApi", "This document", "The OpenAPI 3.1 description of the whole HTTP API.",
                      {"200": ok("The document", {"type": "object"}), **always()}, tags=["registry"])}


def ops() -> dict:
    when_health = "only with the setting `health_access = \"read\"`: "
    when_metrics = "unless the setting `metrics_access = \"open\"`: "
    health = {"x-wogit-needs": {"level": "read", "scope": "everywhere", "setting": "health_access"},
              "security": [{}, {"basic": []}],
              "x-needs-text": "Needs nothing by default; with the setting `health_access = \"read\"`, `read` on "
                              "every repository."}
    metrics = {"x-wogit-needs": {"level": "read", "scope": "everywhere", "setting": "metrics_access"},
               "security": [{"basic": []}, {}],
               "x-needs-text": "Needs `read` on every repository by default; with the setting "
                               "`metrics_access = \"open\"`, nothing."}
    return {
        "/healthz": {"get": op("getHealthz", "Liveness", "The process answers; nothing else is looked at.",
                               {"200": ok("Alive", ref("schemas", "Health")), **auth_errors(when=when_health),
                                **always()}, health, tags=["operations"])},
        "/readyz": {"get": op("getReadyz", "Readiness",
                              "Lists the repository's refs with git and writes, fsyncs and removes a small "
                              "file in its objects directory.",
                              {"200": ok("Ready", ref("schemas", "Ready")),
                               "503": error("Unavailable", "the registry cannot read or write its repository "
                                                           "(NOT_READY); msg says what failed"),
                               **auth_errors(when=when_health), **always()}, health, tags=["operations"])},
        "/metrics": {"get": op("getMetrics", "Prometheus metrics", "The Prometheus text format (docs/api.md).",
                               {"200": ok("The metrics", content={"text/plain": {"schema": STRING}}),
                                **auth_errors(when=when_metrics), **always()}, metrics, tags=["operations"])},
    }


def replication() -> dict:
    return {
        "/_status": {"get": op("getStatus", "Replication status", "How this registry replicates.",
                               {"200": ok("The status", ref("schemas", "Status")), **auth_errors(), **always()},
                               needs("read", "everywhere"), tags=["replication"])},
        "/_replica/refresh": {"post": op(
            "refreshReplica", "Fetch from the primary now",
            "On a replica, schedules a fetch at once (coalesced). A primary started with `--notify URL` sends "
            "this after every write. No body is read.",
            {"202": ok("Scheduled", ref("schemas", "Refresh")),
             "404": error("NotFound", "this registry is not a replica (NOT_FOUND)"), **always()},
            tags=["replication"])},
    }


def git() -> dict:
    service = query_param("service", "The git service asked for; without it (or another) the answer is 404.",
                          {"type": "string", "enum": ["git-upload-pack", "git-receive-pack"]}, required=True)
    common = {"404": error("NotFound", "not a git smart-HTTP endpoint (NOT_FOUND)"), **always()}
    note = ("A successful answer is `git http-backend`'s own (streamed); every error is JSON. Clone with "
            "`git clone --mirror http://HOST:PORT/_git`.")

    def pack(service_name: str, operation_id: str, level: str, summary: str) -> dict:
        request = f"application/x-{service_name}-request"
        return {"post": op(
            operation_id, summary,
            note + (" Pushes go through the registry's `pre-receive` rules (docs/git.md)."
                    if service_name == "git-receive-pack" else ""),
            {"200": ok("git's answer", content={f"application/x-{service_name}-result": {"schema": STRING}}),
             "415": error("UnsupportedMediaType"),
             **auth_errors(write=level == "admin"), **body_errors("the map size limit (`--max-map-size`)"),
             **common},
            needs(level, "everywhere"),
            body=raw_body(request, "git's request (may be gzip, `Content-Encoding: gzip`)",
                          {"type": "string", "format": "binary"}), tags=["git"])}

    refs_access = needs("read", "everywhere")
    refs_access["x-wogit-needs"] = {"level": "read or admin", "scope": "everywhere"}
    refs_access["x-needs-text"] = ("Needs `read` on every repository for `git-upload-pack` (clone, fetch), "
                                   "`admin` on every repository for `git-receive-pack` (push).")
    return {
        "/_git/info/refs": {"get": op(
            "gitInfoRefs", "The refs advertisement (clone, fetch, push)", note,
            {"200": ok("git's advertisement", content={
                "application/x-git-upload-pack-advertisement": {"schema": STRING},
                "application/x-git-receive-pack-advertisement": {"schema": STRING}}),
             **auth_errors(write=True), **common},
            refs_access, parameters=[service], tags=["git"])},
        "/_git/git-upload-pack": pack("git-upload-pack", "gitUploadPack", "read", "Fetch and clone"),
        "/_git/git-receive-pack": pack("git-receive-pack", "gitReceivePack", "admin", "Push"),
    }


def uploads() -> dict:
    def upload(kind: str, limit: str, extra_400: str) -> dict:
        name = digest_header(kind)
        announced = {"name": name, "in": "header", "required": False, "schema": DIGEST,
                     "description": f"Optional: the {kind}'s digest, verified (400 on mismatch). Naming a stored "
                                    f"{kind}, the 409 is answered without reading the body."}
        media = "application/octet-stream" if kind == "map" else "text/plain"
        return {"put": op(
            f"upload{kind.title()}", f"Upload a {kind}",
            f"Stores the bytes, addressed by their digest. Maps and configs are separate kinds: the same bytes "
            f"may be uploaded once as each.",
            {"201": ok("Stored", ref("schemas", "Upload"), {name: header(name), "Wo-Upload-Proof": header("Wo-Upload-Proof")},
                       links=links("digest", f"get{kind.title()}", f"get{kind.title()}Tags")),
             "409": {**error_response(f"These bytes were already uploaded as a {kind} (EXISTS)",
                                      **{name: header(name), "Wo-Upload-Proof": header("Wo-Upload-Proof")})},
             "422": error("HookRejected"), "503": error("UploadsBusy"), "507": error("InsufficientStorage"),
             **auth_errors(write=True), **body_errors(limit),
             **always(f"an empty body, a malformed or mismatching `{name}`, a body cut short{extra_400}")},
            needs("write", "any"), parameters=[announced],
            body=raw_body(media, f"The {kind}'s bytes" + ("" if kind == "map" else " (UTF-8)") + ", not empty",
                          {"type": "string", "minLength": 1, **({"format": "binary"} if kind == "map" else {})}),
            tags=["content"])}

    return {"/blobs/upload": upload("map", "`--max-map-size` (default 64 GiB)", ""),
            "/configs/upload": upload("config", "`--max-config-size` (default 16 MiB)",
                                      ", a config that is not UTF-8")}


def conditional(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": STRING}


def content() -> dict:
    def by_digest(kind: str, media: str) -> dict:
        name = digest_header(kind)
        headers = {"ETag": header("ETag"), "Accept-Ranges": header("Accept-Ranges"), name: header(name)}
        return {"get": op(
            f"get{kind.title()}", f"A {kind} by digest, whole or a byte range",
            "Readable by whoever may `read` a repository with a tag that uses it; whoever may `write` somewhere "
            "also reads untagged uploads. Otherwise 404 (a digest's existence does not leak), or 401 for an "
            "anonymous client that may read nothing. One range (`bytes=<first>-<last>`, `bytes=<first>-`, "
            "`bytes=-<suffix>`) answers 206; several ranges, the whole body.",
            {"200": ok(f"The {kind}'s bytes", headers=headers, content={media: {"schema": STRING}}),
             "206": ok("The range asked for", headers={**headers, "Content-Range": header("Content-Range")},
                       content={media: {"schema": STRING}}),
             "304": ok("Not modified (If-None-Match named the ETag)", headers=headers),
             "404": error("NotFound", f"no uploaded {kind} with this digest that the client may read "
                                      "(BLOB_UNKNOWN)"),
             "416": error("RangeNotSatisfiable"),
             **auth_errors(), **always("a malformed digest (DIGEST_INVALID)")},
            needs("read", "any"),
            params("digest") + [conditional("Range", "`bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<n>`"),
                                conditional("If-Range", "The ETag: the range only if it still matches"),
                                conditional("If-None-Match", "The ETag: 304 if it matches")],
            tags=["content"])}

    def using(kind: str) -> dict:
        return {"get": op(
            f"get{kind.title()}Tags", f"The tags that use a {kind}",
            "Sorted by repository, map and tag; only tags in repositories the client may read. Paginated.",
            {"200": ok("The tags", ref("schemas", "Tags"), {"Link": header("Link")}),
             "404": error("NotFound", f"the digest was never uploaded as a {kind} that the client may read "
                                      "(BLOB_UNKNOWN)"),
             **auth_errors(), **always("a malformed digest (DIGEST_INVALID), a bad `n`")},
            needs("read", "any"), params("digest", "n") + [last_param("`<repository>/<map>/<tag>`")],
            tags=["content"])}

    return {"/blobs/{digest}": by_digest("map", "application/octet-stream"),
            "/configs/{digest}": by_digest("config", "text/plain"),
            "/blobs/{digest}/_tags": using("map"),
            "/configs/{digest}/_tags": using("config")}


def listing() -> dict:
    unknown_map = error("NotFound", "the repository or map does not exist (MAP_UNKNOWN)")
    return {
        "/_catalog": {"get": op(
            "listRepositories", "Repositories",
            "The repositories holding at least one map that the client may read, by name. Paginated.",
            {"200": ok("Repositories", ref("schemas", "Repositories"), {"Link": header("Link")}),
             **auth_errors(), **always("a bad `n`")},
            needs("read", "any"), params("n") + [last_param("a repository name")], tags=["lists"])},
        "/_catalog/{repository}": {"get": op(
            "listMaps", "Maps of a repository", "By name. Paginated.",
            {"200": ok("Maps", ref("schemas", "Maps"), {"Link": header("Link")}),
             "404": error("NotFound", "the repository holds no map (MAP_UNKNOWN)"), **auth_errors(),
             **always("an invalid name (NAME_INVALID), a bad `n`")},
            needs("read"), params("repository", "n") + [last_param("a map name")], tags=["lists"])},
        "/{repository}/{map}/_tags": {"get": op(
            "listTags", "Tags of a map",
            "Sorted by name, or with `sort=time` newest first (ties by name). Paginated.",
            {"200": ok("Tags", ref("schemas", "MapTags"), {"Link": header("Link")}), "404": unknown_map,
             **auth_errors(), **always("an invalid name (NAME_INVALID), a bad `n`, `sort` or `last`")},
            needs("read"),
            params("repository", "map", "n") + [
                last_param("a tag name; for `sort=time`, `<created unix seconds>,<tag>`"),
                query_param("sort", "`name` (default) or `time` (newest first); anything else is 400.",
                            {"type": "string", "enum": ["name", "time"], "default": "name"})],
            tags=["lists"])},
        "/{repository}/{map}/_history": {"get": op(
            "getHistory", "What happened to a map",
            "Tags created and deleted, metadata set and deleted, newest first. Paginated.",
            {"200": ok("The history", ref("schemas", "History"), {"Link": header("Link")}),
             "404": error("NotFound", "the repository or map does not exist (MAP_UNKNOWN), or `last` names a "
                                      "commit not in its history (COMMIT_UNKNOWN)"),
             **auth_errors(), **always("an invalid name, a bad `n`, a `last` that is not a commit id")},
            needs("read"), params("repository", "map", "n") + [
                last_param("a commit id of this history (another commit id is 404, COMMIT_UNKNOWN)",
                           {"type": "string", "pattern": COMMIT_PATTERN})],
            tags=["lists"])},
    }


def metadata() -> dict:
    text = {"text/plain": {"schema": STRING}}
    commit = {"Wo-Metadata-Commit": header("Wo-Metadata-Commit")}
    unknown_map = error("NotFound", "the repository or map does not exist (MAP_UNKNOWN)")
    return {
        "/{repository}/{map}/metadata": {
            "put": op("setMetadata", "Set or update metadata",
                      "`key=value` pairs separated by ASCII whitespace, merged into the map's metadata (the last "
                      "of a repeated key wins; nested keys are ignored). On any 400 nothing is applied.",
                      {"200": ok("Applied", ref("schemas", "MetadataSet")), "404": unknown_map,
                       "503": error("Unavailable"), "507": error("InsufficientStorage"),
                       **auth_errors(write=True), **body_errors("1 MiB"),
                       **always("an invalid name, a token without `=`, an invalid key, a value with a control "
                                "character or a space, a body that is not UTF-8, metadata beyond 1000 keys or "
                                "1 MiB (METADATA_TOO_LARGE)")},
                      needs("write"), params("repository", "map"),
                      body={"required": False, "description": "UTF-8 `key=value` pairs; empty changes nothing",
                            "content": {"text/plain": {"schema": {"type": "string", "pattern": METADATA_PATTERN}}}},
                      tags=["metadata"]),
            "get": op("getAllMetadata", "All metadata",
                      "One `key=value` line per key, sorted, each ending in LF (empty when there is none): the "
                      "form PUT accepts back.",
                      {"200": ok("The metadata", headers=commit, content=text),
                       "404": error("NotFound", "the repository or map does not exist (MAP_UNKNOWN), or `at` names "
                                                "a commit not in its history (COMMIT_UNKNOWN)"),
                       **auth_errors(), **always("an invalid name (NAME_INVALID), a malformed `at`")},
                      needs("read"), params("repository", "map", "at"), tags=["metadata"])},
        "/{repository}/{map}/metadata/{key}": {
            "get": op("getMetadataValue", "One metadata value", "The raw value.",
                      {"200": ok("The value", headers=commit, content=text),
                       "404": error("NotFound", "the key, map or repository does not exist (KEY_UNKNOWN, "
                                                "MAP_UNKNOWN, COMMIT_UNKNOWN)"),
                       **auth_errors(), **always("an invalid repository or map name (NAME_INVALID), a malformed "
                                                 "`at`")},
                      needs("read"), params("repository", "map", "key", "at"), tags=["metadata"]),
            "delete": op("deleteMetadata", "Delete a metadata key", "Recorded in the map's history.",
                         {"200": ok("Deleted", ref("schemas", "MetadataDeleted")),
                          "404": error("NotFound", "the key or map does not exist (KEY_UNKNOWN, MAP_UNKNOWN)"),
                          "503": error("Unavailable"), "507": error("InsufficientStorage"),
                          **auth_errors(write=True), **always("an invalid repository or map name (NAME_INVALID)")},
                         needs("write"), params("repository", "map", "key"), tags=["metadata"])},
    }


def tags() -> dict:
    tag = ref("schemas", "Tag")
    return {"/{repository}/{map}/{tag_id}": {
        "put": op("createTag", "Create a tag",
                  "Tags are immutable. A map exists once it has a tag. On any error nothing is created.",
                  {"201": ok("Created", tag, {"Location": header("Location")},
                             links=links("tag", "getTag", "deleteTag", "listTags", "getHistory", "getAllMetadata")),
                   "404": error("NotFound", "a digest is malformed, unknown, or names content of the other kind "
                                            "(BLOB_UNKNOWN)"),
                   "409": error("Conflict", "the tag exists (EXISTS)"), "422": error("HookRejected"),
                   "503": error("Unavailable"), "507": error("InsufficientStorage"),
                   **auth_errors(write=True), **body_errors("1 MiB"),
                   **always("an invalid name; an empty body; a body that is not a JSON object with both fields as "
                            "strings (BODY_INVALID)")},
                  needs("write"), params("repository", "map", "tag_id"),
                  body={"required": True, "content": json_content(ref("schemas", "TagBody"))}, tags=["tags"]),
        "get": op("getTag", "The release as a tarball",
                  "A reproducible gzipped tar of `map`, `metadata` (the map's metadata now) and `config`. The "
                  "ETag changes when the metadata changes. Content-Length is sent (and answered to HEAD) when the "
                  "length is known before sending: stored blocks, or a tarball already made and cached.",
                  {"200": ok("The tarball", headers={
                      "ETag": header("ETag"), "Last-Modified": header("Last-Modified"),
                      "Content-Disposition": header("Content-Disposition"),
                      "Wo-Map-Digest": header("Wo-Map-Digest"), "Wo-Config-Digest": header("Wo-Config-Digest")},
                      content={"application/gzip": {"schema": {"type": "string", "format": "binary"}}}),
                   "304": ok("Not modified (If-None-Match named the ETag)",
                             headers={"ETag": header("ETag"), "Last-Modified": header("Last-Modified")}),
                   "404": error("NotFound", "the tag does not exist (TAG_UNKNOWN)"), **auth_errors(),
                   **always("an invalid name (NAME_INVALID)")},
                  needs("read"), params("repository", "map", "tag_id") + [
                      conditional("If-None-Match", "The ETag: 304 if it matches")], tags=["tags"]),
        "delete": op("deleteTag", "Delete a tag",
                     "Recorded in the map's history; the map and config stay stored until `wogit gc` finds no "
                     "tag uses them.",
                     {"200": ok("The deleted tag, as PUT answered it", tag,
                                links=links("tag", "getTag", "listTags", "getHistory")),
                      "404": error("NotFound", "the tag does not exist (TAG_UNKNOWN)"), "503": error("Unavailable"),
                      "507": error("InsufficientStorage"), **auth_errors(write=True),
                      **always("an invalid name (NAME_INVALID)")},
                     needs("delete"), params("repository", "map", "tag_id"), tags=["tags"])}}


def head_of(get: dict) -> dict:
    """The HEAD operation Bottle serves with a GET route: the same answers without their bodies."""
    head = copy.deepcopy(get)
    head["operationId"] = "head" + get["operationId"][0].upper() + get["operationId"][1:]
    head["summary"] = get["summary"] + " (headers only)"
    responses = {}
    for code, answer in head["responses"].items():
        if "$ref" in answer:
            shared = RESPONSES[answer["$ref"].rsplit("/", 1)[1]]
            answer = {**{k: v for k, v in shared.items() if k != "content"},
                      "description": answer.get("description", shared["description"])}
        answer.pop("content", None)
        responses[code] = answer
    head["responses"] = responses
    return head


def document() -> dict:
    paths: dict[str, dict] = {}
    paths["/v1"] = version()
    paths["/openapi.json"] = contract()
    for part in (ops(), replication(), git(), uploads(), content(), listing(), metadata(), tags()):
        paths.update(part)
    for item in paths.values():
        if "get" in item:
            item["head"] = head_of(item["get"])
    return {
        "openapi": "3.1.0",
        "info": {"title": "wogit", "version": __version__,
                 "summary": "A registry for maps, stored in a bare git repository",
                 "description": "Every route of the wogit HTTP API (docs/api.md is the prose). Every 4xx and 5xx "
                                "answer is `application/json` `{\"msg\": ...}`, under `/_git` too; a 405 carries "
                                "`Allow`. Every answer carries `X-Request-Id`. Where "
                                "credentials are needed, anonymous access is allowed as far as the registry's "
                                "policy grants it (`GET /v1` says what anonymous clients may do).",
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "servers": [{"url": "http://127.0.0.1:8080", "description": "the default of `wogit serve`"}],
        "tags": [{"name": name} for name in ("registry", "operations", "replication", "git", "content", "lists",
                                             "metadata", "tags")],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "parameters": PARAMETERS, "headers": HEADERS,
                       "responses": RESPONSES,
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                                     "description": "htpasswd users with bcrypt hashes"}}},
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
