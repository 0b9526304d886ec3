"""Blob: GET /blobs/<digest> of a big map vs a minimal server that ``socket.sendfile()``s the file.

The same bytes on both sides (the map file as uploaded); every download's sha256 is checked.
A compressible map is stored compressed, so its GET also inflates.
"""

from __future__ import annotations

from benchlib import MiB, against_sendfile, check, paired_ratio, row, upload

SECTION = "blob"


def run(ctx) -> list[dict]:
    rows = []
    server = ctx.wogit(name="blob")
    for kind in ("random", "text"):
        path = ctx.map_file(kind)
        size = path.stat().st_size
        digest = ctx.refresh(path)
        t = upload(ctx, server.url + "/blobs/upload", path)
        check(t.status == 201 and t.headers.get("wo-map-digest") == digest, f"{kind} upload: {t}")
        sendfile = ctx.baseline("sendfile", "--file", str(path), name=f"blob-sendfile-{kind}")
        ctx.log(f"blob {kind} {size // MiB} MiB x {ctx.runs}: GET /blobs/<digest> vs sendfile")
        got_runs, raw = against_sendfile(ctx, server, f"{server.url}/blobs/{digest}", digest, sendfile, digest,
                                         kind, "blob", size)
        sendfile.stop()
        ratio = paired_ratio(got_runs, raw)
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, GET /blobs/<digest>", "MiB/s", got_runs,
                        "sendfile server (raw map)", raw, ratio, ">= 0.7x", ratio[0] >= 0.7))
    server.stop()
    return rows
