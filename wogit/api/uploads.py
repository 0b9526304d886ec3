"""``PUT /blobs/upload`` and ``PUT /configs/upload``: content addressed by digest.

At most ``Settings.upload_slots`` uploads run at once in a process: one more is refused at
once (503 TOO_MANY_UPLOADS with Retry-After, before its body is read), so uploads never hold
every thread nor more buffers than that, and reads are still served.
"""

import contextlib
import threading
from collections.abc import Iterator

import bottle

from wogit import errors, names
from wogit.api.blobs import may_read
from wogit.api.body import Body
from wogit.access import Level
from wogit.api import responses
from wogit.api.gate import ANY, USER
from wogit.api.responses import json_response

HEADERS = {names.MAP: "Wo-Map-Digest", names.CONFIG: "Wo-Config-Digest"}
RETRY_AFTER = 1  # seconds: an upload's slot is free again as soon as one ends


class Slots:
    """The uploads running at once, at most ``bound``."""

    def __init__(self, bound: int, gauge=None):
        self.bound = bound
        self.gauge = gauge  # wogit_uploads_in_progress (wogit.metrics)
        self._free = threading.BoundedSemaphore(bound)

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise errors.TOO_MANY_UPLOADS(f"this registry takes {self.bound} upload{'s' if self.bound > 1 else ''} "
                                          f"at once and as many are running; retry in {RETRY_AFTER} s",
                                          {"Retry-After": str(RETRY_AFTER)})
        if self.gauge is not None:
            self.gauge.inc()
        try:
            yield
        finally:
            if self.gauge is not None:
                self.gauge.dec()
            self._free.release()


def install(app, store, settings) -> None:
    slots = Slots(settings.upload_slots, app.metrics.uploads)

    def upload(kind: str, limit: int):
        with slots.taken():
            return _upload(kind, limit)

    def _upload(kind: str, limit: int):
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
