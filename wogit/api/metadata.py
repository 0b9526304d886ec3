"""``/<repository>/<map>/metadata``: set, read (now, or ``?at=`` a moment of its history) and
delete a map's key=value metadata."""

import datetime

import bottle

from wogit import errors, metadata, names
from wogit.access import Level
from wogit.api.body import Body
from wogit.api.gate import USER
from wogit.api.responses import json_response

TEXT = "text/plain; charset=utf-8"


def install(app, store, settings) -> None:
    @app.put("/<repository>/<map>/metadata", need=Level.WRITE)
    def put_metadata(repository, map):
        names.check_map_name(repository, map)
        store.require_map(repository, map)  # 404 before reading a body for a map that does not exist
        # An empty body is the metadata file of a map without metadata: accepted, changes nothing.
        body = Body(bottle.request.environ, settings.max_body_size, "metadata body", empty_ok=True)
        parsed = metadata.parse(body.text())
        store.set_metadata(repository, map, parsed.items, actor=bottle.request.environ.get(USER))
        return json_response(200, {"set": sorted(parsed.items), "ignored": parsed.ignored})

    @app.get("/<repository>/<map>/metadata", need=Level.READ)
    def get_all_metadata(repository, map):
        names.check_map_name(repository, map)
        found = store.get_metadata(repository, map, at())
        return bottle.HTTPResponse(metadata.serialise(found.items), 200, _headers(found.commit))

    @app.get("/<repository>/<map>/metadata/<key>", need=Level.READ)
    def get_metadata(repository, map, key):
        names.check_map_name(repository, map)
        value, commit = store.get_metadata_value(repository, map, key, at())
        return bottle.HTTPResponse(value.encode("utf-8"), 200, _headers(commit))

    @app.delete("/<repository>/<map>/metadata/<key>", need=Level.WRITE)
    def delete_metadata(repository, map, key):
        names.check_map_name(repository, map)
        store.delete_metadata(repository, map, key, actor=bottle.request.environ.get(USER))
        return json_response(200, {"deleted": key})


def at() -> int | str | None:
    """``?at=``: a full commit id, or an ISO-8601 time as unix seconds (rounded down; UTC if
    it has no offset); None without it."""
    if not bottle.request.environ.get("QUERY_STRING"):
        return None
    raw = bottle.request.query.get("at")
    if raw is None:
        return None
    if names.is_commit_id(raw):
        return raw
    try:  # a '+' of an offset arrives as a space unless the client wrote %2B
        when = datetime.datetime.fromisoformat(raw.replace(" ", "+") if "T" in raw else raw)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp() // 1)
    except (ValueError, OverflowError):
        raise errors.BAD_REQUEST(f"at={raw!r} is neither an ISO-8601 time (2026-12-04T01:02:03Z) "
                                 "nor a full commit id (40 hex digits)") from None


def _headers(commit: str | None) -> dict[str, str]:
    return {"Content-Type": TEXT, **({"Wo-Metadata-Commit": commit} if commit else {})}
