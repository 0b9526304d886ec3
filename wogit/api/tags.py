"""``PUT``, ``GET`` and ``DELETE`` ``/<repository>/<map>/<tag_id>``: create a tag, download it
as a tarball, delete it."""

import json

import bottle

from wogit import errors, names
from wogit.access import Level
from wogit.api.blobs import may_read
from wogit.api.body import Body
from wogit.api.gate import USER
from wogit.api.listing import describe_tag
from wogit.api.responses import etag_matches, header, http_date, json_response


#: The tag route: not a reserved path (wogit.names.ROUTE_*).
TAG_PATH = f"/<repository:re:{names.ROUTE_REPOSITORY}>/<map>/<tag_id:re:{names.ROUTE_TAG}>"


def install(app, store, settings) -> None:
    @app.put(TAG_PATH, need=Level.WRITE)
    def put_tag(repository, map, tag_id):
        names.check_tag_name(repository, map, tag_id)
        fields = _tag_fields(Body(bottle.request.environ, settings.max_body_size, "tag body").text())
        user = bottle.request.environ.get(USER)
        for kind in names.KINDS:  # a digest the client may not read, nor proves it uploaded, is unknown
            digest, proof = fields[f"{kind}_digest"], fields.get(f"{kind}_proof")
            if names.is_digest(digest) and not store.is_upload_proof(proof, user, kind, digest) \
                    and not may_read(app, store, kind, digest):
                raise errors.BLOB_UNKNOWN(f"{kind}_digest {digest} names no uploaded {kind}")
        tag = store.create_tag(repository, map, tag_id, fields["map_digest"], fields["config_digest"], actor=user)
        return json_response(201, describe_tag(tag), {"Location": f"/{repository}/{map}/{tag_id}"})

    @app.delete(TAG_PATH, need=Level.DELETE)
    def delete_tag(repository, map, tag_id):
        names.check_tag_name(repository, map, tag_id)
        tag = store.delete_tag(repository, map, tag_id, actor=bottle.request.environ.get(USER))
        return json_response(200, describe_tag(tag))

    @app.get(TAG_PATH, need=Level.READ)
    def get_tag(repository, map, tag_id):
        names.check_tag_name(repository, map, tag_id)
        archive = store.archive(repository, map, tag_id)
        headers = {
            "ETag": archive.etag,
            "Last-Modified": http_date(archive.tag.created),
            "Cache-Control": "no-cache",
        }
        if etag_matches(header("If-None-Match"), archive.etag):
            return bottle.HTTPResponse(b"", 304, headers)
        headers.update({
            "Content-Type": "application/gzip",
            "Content-Disposition": f'attachment; filename="{repository}-{map}-{tag_id}.tar.gz"',
            "Wo-Map-Digest": archive.tag.map_digest,
            "Wo-Config-Digest": archive.tag.config_digest,
        })
        body = archive.open()
        if body.length is not None:  # cached, or stored blocks: known before compressing
            headers["Content-Length"] = str(body.length)
        if bottle.request.method == "HEAD":
            body.close()
            # Bottle drops a HEAD's body; without a length, a non-empty placeholder keeps it
            # from adding "Content-Length: 0" (the real length is only known by compressing).
            return bottle.HTTPResponse([] if body.length is not None else iter([b" "]), 200, headers)
        return bottle.HTTPResponse(body, 200, headers)


def _tag_fields(text: str) -> dict[str, str]:
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise errors.BODY_INVALID(f"the tag body is not JSON: {str(exc) or 'nested too deeply'}") from None
    if not isinstance(fields, dict):
        raise errors.BODY_INVALID('the tag body must be a JSON object {"map_digest": ..., "config_digest": ...}')
    for field in ("map_digest", "config_digest"):
        if not isinstance(fields.get(field), str):
            raise errors.BODY_INVALID(f"the tag body needs {field!r} as a string")
    return fields
