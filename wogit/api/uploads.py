"""``PUT /blobs/upload`` and ``PUT /configs/upload``: content addressed by digest."""

import bottle

from wogit import errors, names
from wogit.api.blobs import may_read
from wogit.api.body import Body
from wogit.access import Level
from wogit.api import responses
from wogit.api.gate import ANY, USER
from wogit.api.responses import json_response

HEADERS = {names.MAP: "Wo-Map-Digest", names.CONFIG: "Wo-Config-Digest"}


def install(app, store, settings) -> None:
    def upload(kind: str, limit: int):
        header = HEADERS[kind]
        announced = responses.header(header)
        body = Body(bottle.request.environ, limit, kind)
        # "Already uploaded" before reading the body only to whoever may read it: else the body
        # is read, and only its bytes can say they are stored.
        trusted = announced is None or not names.is_digest(announced) or may_read(app, store, kind, announced)
        result = store.put(kind, body, body.length, announced, actor=bottle.request.environ.get(USER),
                           shortcut=trusted)
        # The proof that this user holds these bytes (read from the body: a shortcut is only for
        # users who may read the digest anyway), for tagging them (tags.py).
        headers = {header: result.digest,
                   "Wo-Upload-Proof": store.upload_proof(bottle.request.environ.get(USER), kind, result.digest)}
        if not result.created:
            raise errors.EXISTS(f"{kind} {result.digest} was already uploaded", headers)
        return json_response(201, {"digest": result.digest}, headers)

    @app.put("/blobs/upload", need=Level.WRITE, scope=ANY)
    def put_map():
        return upload(names.MAP, settings.max_map_size)

    @app.put("/configs/upload", need=Level.WRITE, scope=ANY)
    def put_config():
        return upload(names.CONFIG, settings.max_config_size)
