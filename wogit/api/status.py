"""``/_status`` and ``/_replica/refresh``: how this registry replicates, and a poke for replicas."""

from wogit import errors
from wogit.access import Level
from wogit.api.gate import EVERYWHERE
from wogit.api.responses import json_response


def install(app, store, settings) -> None:
    @app.get("/_status", need=Level.READ, scope=EVERYWHERE)
    def get_status():
        return json_response(200, app.replication.status())

    # No permission needed: it only makes a replica fetch sooner from its own primary (coalesced).
    @app.post("/_replica/refresh")
    def refresh():
        if app.replication.replica is None:
            raise errors.NOT_FOUND("this registry is not a replica: there is nothing to refresh")
        app.replication.replica.poke()
        return json_response(202, {"refresh": "scheduled"})
