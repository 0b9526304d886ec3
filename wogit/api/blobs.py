"""``GET``/``HEAD`` ``/blobs/<digest>`` and ``/configs/<digest>``: a map or config by digest, whole
or a byte range; ``.../_tags``: the tags that use it.

Knowing a digest is not a permission: the content is readable by whoever may read a
repository with a tag that uses it, and (untagged uploads) by whoever may write somewhere.
"""

from __future__ import annotations

import re

import bottle

from wogit import errors, names
from wogit.access import Level
from wogit.api import pages
from wogit.api.gate import ANY, USER
from wogit.api.listing import describe_tag
from wogit.api.responses import etag_matches, header, json_response

TYPES = {names.MAP: "application/octet-stream", names.CONFIG: "text/plain; charset=utf-8"}
HEADERS = {names.MAP: "Wo-Map-Digest", names.CONFIG: "Wo-Config-Digest"}
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")  # longer numbers: not a range we serve


def install(app, store, settings) -> None:
    def unknown(kind: str, digest: str) -> errors.WogitError:
        # One answer for "never uploaded" and "not yours to read": a digest's existence does not leak.
        return errors.BLOB_UNKNOWN(f"digest {digest} names no uploaded {kind} that you may read")

    def find(kind: str, digest: str):
        """The stored content, if the client may read it; the same 404 otherwise."""
        if not may_read(app, store, kind, digest):
            raise unknown(kind, digest)
        try:
            return store.get_blob(kind, digest)
        except errors.WogitError as exc:
            if exc.code is errors.BLOB_UNKNOWN:
                raise unknown(kind, digest) from None
            raise

    def get(kind: str, digest: str):
        names.digest_hex(digest)
        blob = find(kind, digest)
        etag = f'"{digest}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", HEADERS[kind]: digest,
                   "Cache-Control": "no-cache"}  # the bytes never change, who may read them can: revalidate
        if etag_matches(header("If-None-Match"), etag):
            return bottle.HTTPResponse(b"", 304, headers)
        first, last = _range(header("Range"), header("If-Range"), etag, blob.size)
        headers["Content-Type"] = TYPES[kind]
        headers["Content-Length"] = str(last - first + 1)
        status = 200
        if (first, last) != (0, blob.size - 1):
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{blob.size}"
        body = [] if bottle.request.method == "HEAD" else blob.body(first, last - first + 1)
        return bottle.HTTPResponse(body, status, headers)

    def using(kind: str, digest: str):
        names.digest_hex(digest)
        find(kind, digest)  # 404 for a digest never uploaded as this kind
        # git lists refs by name, so "<repository>/<map>/<tag>" comes sorted: read one page and stop.
        last, n = pages.last(), pages.size()
        tags = []
        for tag in store.tags_using(kind, digest, readable_repositories(app, store)):
            if last is None or _place(tag) > last:
                tags.append(tag)
                if len(tags) > n:
                    break
        chosen, headers = pages.page(tags, _place)
        return json_response(200, {"tags": [describe_tag(t) for t in chosen]}, headers)

    @app.route(f"/blobs/<digest:re:{names.ROUTE_DIGEST}>", ["GET", "HEAD"], need=Level.READ, scope=ANY)
    def get_map(digest):
        return get(names.MAP, digest)

    @app.route(f"/configs/<digest:re:{names.ROUTE_DIGEST}>", ["GET", "HEAD"], need=Level.READ, scope=ANY)
    def get_config(digest):
        return get(names.CONFIG, digest)

    # Only a digest has a ':', never a map name: /blobs/<map>/_tags stays a repository's map.
    @app.get("/blobs/<digest:re:[^/]*:[^/]*>/_tags", need=Level.READ, scope=ANY)
    def get_map_tags(digest):
        return using(names.MAP, digest)

    @app.get("/configs/<digest:re:[^/]*:[^/]*>/_tags", need=Level.READ, scope=ANY)
    def get_config_tags(digest):
        return using(names.CONFIG, digest)


def readable_repositories(app, store) -> list[str] | None:
    """The repositories the client may read (None: every one, present and future)."""
    user, policy = bottle.request.environ.get(USER), app.gate.policy
    if policy.level_everywhere(user) >= Level.READ:
        return None
    return [r for r in store.repositories() if policy.level(user, r) >= Level.READ]


def may_read(app, store, kind: str, digest: str) -> bool:
    """Whether the client may read this map or config: it may read a repository with a tag
    that uses it, or (an untagged upload) it may write somewhere.  Creating a tag and the
    upload shortcut ask this too, so knowing a digest never gives its bytes."""
    repositories = readable_repositories(app, store)
    if repositories is None:
        return True
    if repositories and next(store.tags_using(kind, digest, repositories), None) is not None:
        return True
    user = bottle.request.environ.get(USER)
    return (app.gate.policy.level(user, None) >= Level.WRITE
            and next(store.tags_using(kind, digest), None) is None)


def _place(tag) -> str:
    """Where a tag is in a list of the tags using a digest: its name in ref order."""
    return f"{tag.repository}/{tag.map}/{tag.tag}"


def _range(value: str | None, if_range: str | None, etag: str, size: int) -> tuple[int, int]:
    """The first and last byte a Range header asks for (the whole body if it asks for none, for
    several ranges, or with an If-Range that is not this ETag); 416 if it starts past the end."""
    whole = (0, size - 1)
    if value is None or (if_range is not None and if_range.strip() != etag):
        return whole
    match = _RANGE.fullmatch(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return whole  # a syntax this server does not serve (several ranges, other units): ignored
    first, last = match.groups()
    if first == "":
        if int(last) == 0:
            raise errors.RANGE_NOT_SATISFIABLE("the range asks for the last 0 bytes",
                                               {"Content-Range": f"bytes */{size}"})
        return max(size - int(last), 0), size - 1
    if last and int(last) < int(first):
        return whole  # an invalid range is ignored (RFC 9110, 14.2)
    if int(first) >= size:
        raise errors.RANGE_NOT_SATISFIABLE(f"the range starts at byte {first}, but the content has {size} bytes",
                                           {"Content-Range": f"bytes */{size}"})
    return int(first), min(int(last), size - 1) if last else size - 1
