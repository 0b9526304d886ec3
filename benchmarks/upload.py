"""Upload: a big map through `curl -T file` to PUT /blobs/upload, vs the least durable work.

Baselines on the same file in the same run: a minimal HTTP server (benchmarks/baselines.py
upload: receive, write, fsync, 201) and `git hash-object -w` into a scratch bare repository
(git's own write path). Before every measurement the file gets a new first line, so wogit and
git really store new bytes each time. Every wogit answer's Wo-Map-Digest is the file's sha256.
The minimal server's files are kept, as wogit's objects are (up to 4 GiB, like ctx.roomy): a
file removed right away gives its page-cache pages back, and writing into pages used before
costs far less than into new ones (on this VM 0.2 against 3-11 ms of CPU per MiB), which made
the baseline look faster than storing an upload is.
"""

from __future__ import annotations

import shutil

from benchlib import (GiB, MiB, check, git, mib_s, paired_ratio, peak_growth, row, scratch_repo, spread,
                      timed, tree_bytes, upload)

SECTION = "upload"
MINIMAL = "minimal server (write+fsync)"


def run(ctx) -> list[dict]:
    rows = []
    for kind in ("random", "text"):
        path = ctx.map_file(kind)
        size = path.stat().st_size
        server = ctx.wogit(name=f"upload-{kind}")
        sink = ctx.tempdir(f"upload-sink-{kind}")
        minimal = ctx.baseline("upload", "--dir", str(sink), name=f"upload-minimal-{kind}")
        runs = {"wogit": [], "chunked": [], "minimal": [], "git": [], "stored": []}
        ctx.log(f"upload {kind} {size // MiB} MiB x {ctx.runs}: wogit (Content-Length, chunked), minimal, git")
        for _ in range(ctx.runs):
            for label, chunked in (("wogit", False), ("chunked", True)):
                digest = ctx.refresh(path)
                server = ctx.roomy(server, size)
                before = tree_bytes(server.data / "objects")
                with peak_growth(ctx, server, kind, "upload chunked" if chunked else "upload", size):
                    t = upload(ctx, server.url + "/blobs/upload", path, chunked=chunked)
                check(t.status == 201, f"upload {kind} ({label}) answered {t.status}, not 201")
                check(t.headers.get("wo-map-digest") == digest,
                      f"upload {kind} ({label}): Wo-Map-Digest {t.headers.get('wo-map-digest')}, not {digest}")
                runs[label].append(mib_s(size, t.seconds))
                runs["stored"].append(tree_bytes(server.data / "objects") - before)

            ctx.refresh(path, digest=False)
            if tree_bytes(sink) + size > 4 * GiB:  # as ctx.roomy does for wogit's data
                for f in sink.iterdir():
                    f.unlink()
            before = set(sink.iterdir())
            t = upload(ctx, minimal.url + "/upload", path)
            check(t.status == 201, f"minimal upload server answered {t.status}")
            for f in set(sink.iterdir()) - before:
                check(f.stat().st_size == size, f"minimal upload server wrote {f.stat().st_size} bytes, not {size}")
            runs["minimal"].append(mib_s(size, t.seconds))

            ctx.refresh(path, digest=False)
            repo = scratch_repo(ctx, "upload-git")
            with open(repo.parent / "id", "w+") as out:
                runs["git"].append(mib_s(size, timed(["git", "--git-dir", str(repo), "hash-object", "-w", str(path)],
                                                     stdout=out)))
                out.seek(0)
                blob = out.read().strip()
            # (above core.bigFileThreshold, 512 MiB, git streams the blob into a pack, not a loose object)
            check(git(repo, "cat-file", "-s", blob) == str(size), f"git hash-object -w did not store {blob}")
            shutil.rmtree(repo.parent)
        server.stop()
        minimal.stop()

        stored = spread(runs["stored"])[0]
        ratio = paired_ratio(runs["wogit"], runs["minimal"])
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, curl -T file", "MiB/s", runs["wogit"], MINIMAL,
                        runs["minimal"], ratio, ">= 0.5x", ratio[0] >= 0.5,
                        f"stored {stored / MiB:.1f} MiB per upload ({size / stored:.1f}:1)"))
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, curl -T file", "MiB/s", runs["wogit"],
                        "git hash-object -w", runs["git"], paired_ratio(runs["wogit"], runs["git"]),
                        note="git's own write path (zlib default level)"))
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, chunked curl -T -", "MiB/s", runs["chunked"], MINIMAL,
                        runs["minimal"], paired_ratio(runs["chunked"], runs["minimal"]),
                        note="no target; the baseline is the Content-Length upload"))
    return rows
