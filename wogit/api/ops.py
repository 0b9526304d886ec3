"""``/healthz``, ``/readyz`` and ``/metrics``: for supervisors, load balancers and Prometheus.

Who may ask is a setting: ``health_access`` and ``metrics_access``, each ``open``
(no permission declared) or ``read`` (read on every repository, like ``/_status``).
"""

import bottle

from wogit.access import Level
from wogit.api.gate import EVERYWHERE
from wogit.api.responses import json_response


def _access(word: str) -> dict:
    return {} if word == "open" else {"need": Level.READ, "scope": EVERYWHERE}


def install(app, store, settings) -> None:
    health = _access(settings.health_access)

    # Liveness: the process answers; nothing else is looked at.
    @app.get("/healthz", **health)
    def get_healthz():
        return json_response(200, {"status": "ok"})

    # Readiness: the repository's refs can be read and its objects directory written.
    @app.get("/readyz", **health)
    def get_readyz():
        store.check_ready()
        return json_response(200, {"status": "ready"})

    @app.get("/metrics", **_access(settings.metrics_access))
    def get_metrics():
        body, content_type = app.metrics.render()
        return bottle.HTTPResponse(body, 200, {"Content-Type": content_type})
