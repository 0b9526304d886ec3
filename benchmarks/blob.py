"""Blob: GET /blobs/<digest> of a big map vs a minimal server that ``socket.sendfile()``s the file.

The same bytes on both sides (the map file as uploaded); every download's sha256 is checked.
A compressible map is stored compressed, so its GET also inflates.
"""

from __future__ import annotations

from benchlib import MiB, check, download, mib_s, paired_ratio, peak_growth, row, sha256_file, upload

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
        got_runs, raw = [], []
        for _ in range(ctx.runs):
            with peak_growth(ctx, server, kind, "blob", size):
                t, got = download(ctx, f"{server.url}/blobs/{digest}", f"{kind}-blob.bin")
            check(t.status == 200, f"GET /blobs/{digest} answered {t.status}")
            check(sha256_file(got) == digest, f"GET /blobs/{digest}: other bytes")
            got.unlink()
            got_runs.append(mib_s(size, t.seconds))

            t, got = download(ctx, sendfile.url + "/map", f"{kind}-sendfile.bin")
            check(t.status == 200 and sha256_file(got) == digest, "the sendfile server sent other bytes")
            got.unlink()
            raw.append(mib_s(size, t.seconds))
        sendfile.stop()
        ratio = paired_ratio(got_runs, raw)
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, GET /blobs/<digest>", "MiB/s", got_runs,
                        "sendfile server (raw map)", raw, ratio, ">= 0.7x", ratio[0] >= 0.7))
    server.stop()
    return rows
