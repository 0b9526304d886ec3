"""``/<repository>/<map>/metadata``: set, read and delete a map's key=value metadata."""

import bottle

from wogit import metadata, names
from wogit.access import Level
from wogit.api.body import Body
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
        store.set_metadata(repository, map, parsed.items)
        return json_response(200, {"set": sorted(parsed.items), "ignored": parsed.ignored})

    @app.get("/<repository>/<map>/metadata", need=Level.READ)
    def get_all_metadata(repository, map):
        names.check_map_name(repository, map)
        items = store.get_metadata(repository, map).items
        return bottle.HTTPResponse(metadata.serialise(items), 200, {"Content-Type": TEXT})

    @app.get("/<repository>/<map>/metadata/<key>", need=Level.READ)
    def get_metadata(repository, map, key):
        names.check_map_name(repository, map)
        value = store.get_metadata_value(repository, map, key)
        return bottle.HTTPResponse(value.encode("utf-8"), 200, {"Content-Type": TEXT})

    @app.delete("/<repository>/<map>/metadata/<key>", need=Level.WRITE)
    def delete_metadata(repository, map, key):
        names.check_map_name(repository, map)
        store.delete_metadata(repository, map, key)
        return json_response(200, {"deleted": key})
