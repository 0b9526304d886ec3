"""``GET /openapi.json``: the OpenAPI 3.1 document of this API (``wogit/openapi.json``, built by
``wogit.openapi``), the public contract: it needs no credentials."""

from importlib import resources

import bottle


def install(app, store, settings) -> None:
    document = resources.files("wogit").joinpath("openapi.json").read_bytes()

    @app.get("/openapi.json")
    def get_openapi():
        return bottle.HTTPResponse(document, 200, {"Content-Type": "application/json"})
