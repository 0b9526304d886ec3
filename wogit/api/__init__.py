"""The HTTP API: a Bottle app of thin routes over a ``Store``.

``create_app(settings, store)`` builds a fresh app; there are no module globals.
Routes validate path names, read bodies, call one storage verb and shape the
answer; storage does the rest.  Each resource's routes live in their own module.
"""

from __future__ import annotations

from wogit.api import blobs, contract, git, listing, metadata, ops, responses, status, tags, uploads, version
from wogit.api.gate import Gate
from wogit.metrics import Metrics
from wogit.replication import Replication
from wogit.settings import Settings
from wogit.store import Store


def create_app(settings: Settings, store: Store, gate: Gate | None = None,
               replication: Replication | None = None, metrics: Metrics | None = None) -> responses.App:
    app = responses.App(catchall=True)
    app.config["json.enable"] = False  # answers are JSON by our own hand (responses.json_response)
    app.gate = gate or Gate.open()
    app.replication = replication or Replication()
    app.metrics = metrics or Metrics(store.counts)  # fed by wogit.observe around the app
    app.install(responses.guard)  # outermost: whatever fails below becomes JSON
    app.install(app.gate)  # routes declare need=Level..., the gate checks it
    # Order matters: /_git/info/refs, /blobs/<digest>/_tags, /<repository>/<map>/metadata and
    # .../_tags are matched before a tag route would be.
    for module in (version, contract, ops, status, git, uploads, blobs, listing, metadata, tags):
        module.install(app, store, settings)
    return app
