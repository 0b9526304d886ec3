"""``GET /v1``: the version, and who may do what."""

from wogit import __version__
from wogit.api.responses import json_response


def install(app, store, settings) -> None:
    @app.get("/v1")
    def get_version():
        return json_response(200, {"name": "wogit", "version": __version__, "api": "v1",
                                   **app.gate.describe(), "replication": app.replication.summary()})
