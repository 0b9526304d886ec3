#!/usr/bin/env python3
"""Memory: the server's peak RSS growth while it moves a big map, up and down.

Growth = VmHWM after the transfer - VmRSS before it, the peak reset first through
/proc/PID/clear_refs (so each figure is that transfer's own peak). The upload, tarball and blob
sections record it for every transfer they measure (at the run's map size); this section turns
those into rows and measures, itself, every size nobody measured (4 GiB in full mode, or all
sizes with --only memory): per run a fresh server, an upload, the tag's tarball and the blob,
both downloads streamed and checked (sha256 of the map, the tarball's members) without touching
the disk. Target: under 64 MiB for every transfer, and the same at 4 GiB as at 1 GiB.

    .venv/bin/python benchmarks/memory.py [run.py's options]   # = run.py --only memory
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile

from benchlib import (CHUNK, CONFIG, KINDS, MiB, BenchError, check, json_request, peak_growth, row, upload)

SECTION = "memory"
PHASES = ("upload", "upload chunked", "tarball", "tarball again", "blob")  # as the other sections name them
OWN_PHASES = ("upload", "tarball", "blob")
LIMIT_MIB = 64
SAME_MIB = 16  # "the same at both sizes": the worst growths within this


def streamed(ctx, url: str, tarball: bool) -> tuple[dict[str, str], dict[str, str]]:
    """GET with curl into a pipe: the response headers and the sha256 of the body (or of each member)."""
    headers_file = ctx.workdir / "memory.headers"
    proc = subprocess.Popen(["curl", "-sS", "-f", "-D", str(headers_file), url], stdout=subprocess.PIPE)
    digests = {}
    try:
        if tarball:
            with tarfile.open(fileobj=proc.stdout, mode="r|gz") as tar:
                for member in tar:
                    digest, stream = hashlib.sha256(), tar.extractfile(member)
                    while chunk := stream.read(CHUNK):
                        digest.update(chunk)
                    digests[member.name] = "sha256:" + digest.hexdigest()
        else:
            digest = hashlib.sha256()
            while chunk := proc.stdout.read(CHUNK):
                digest.update(chunk)
            digests["body"] = "sha256:" + digest.hexdigest()
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise BenchError(f"curl {url} exited {proc.returncode}")
    headers = {}
    for line in headers_file.read_text("latin-1").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return headers, digests


def measure(ctx, size: int) -> None:
    """Each kind at ``size``, ``ctx.runs`` times on a fresh server: upload, tarball, blob."""
    for kind in KINDS:
        path = ctx.map_file(kind, size)
        config = CONFIG + f"kind: {kind}\n".encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        ctx.log(f"memory {kind} {size // MiB} MiB x {ctx.runs}: upload, tarball, blob on a fresh server each")
        for n in range(ctx.runs):
            digest = ctx.refresh(path)
            server = ctx.wogit(name=f"memory-{kind}")
            try:
                with peak_growth(ctx, server, kind, "upload", size):
                    t = upload(ctx, server.url + "/blobs/upload", path)
                check(t.status == 201 and t.headers.get("wo-map-digest") == digest, f"{kind} upload: {t}")
                json_request(server.url + "/configs/upload", "PUT", data=config, expect=201)
                json_request(f"{server.url}/bench/{kind}/v1", "PUT", expect=201,
                             json={"map_digest": digest, "config_digest": config_digest})
                with peak_growth(ctx, server, kind, "tarball", size):
                    headers, members = streamed(ctx, f"{server.url}/bench/{kind}/v1", tarball=True)
                check(list(members) == ["map", "metadata", "config"], f"{kind} tarball members {list(members)}")
                check(members["map"] == digest and members["config"] == config_digest, f"{kind} tarball members")
                check(headers.get("wo-map-digest") == digest, f"{kind} tarball Wo-Map-Digest")
                with peak_growth(ctx, server, kind, "blob", size):
                    headers, body = streamed(ctx, f"{server.url}/blobs/{digest}", tarball=False)
                check(body["body"] == digest, f"{kind} GET /blobs/{digest}: other bytes")
            finally:
                server.stop()
        if size != ctx.size:
            ctx.drop_map(kind, size)  # the big ones are not shared: give the disk back now


def covered(ctx, size: int) -> bool:
    return all(len(ctx.memory.get((kind, phase, size), [])) >= ctx.runs for kind in KINDS for phase in OWN_PHASES)


def run(ctx) -> list[dict]:
    reused = {size: covered(ctx, size) for size in ctx.memory_sizes}
    for size in ctx.memory_sizes:
        if not reused[size]:
            measure(ctx, size)
    rows = []
    for size in ctx.memory_sizes:
        for kind in KINDS:
            for phase in PHASES:
                growth = ctx.memory.get((kind, phase, size))
                if not growth:
                    continue
                note = f"worst {max(growth):.1f} MiB" + ("; measured in that section's runs" if reused[size] else "")
                if not ctx.peak_reset:
                    note += "; VmHWM could not be reset: peaks are cumulative"
                rows.append(row(SECTION, f"{kind} {size // MiB} MiB, {phase}", "MiB growth", growth, target=f"< {LIMIT_MIB} MiB",
                                met=max(growth) < LIMIT_MIB, note=note))
    small, big = min(ctx.memory_sizes), max(ctx.memory_sizes)
    if small == big:
        rows.append(row(SECTION, "same growth at 1 and 4 GiB", "MiB", [], target=f"< {SAME_MIB} MiB apart",
                        note=f"one size only ({small // MiB} MiB): the full mode compares two"))
        return rows
    for kind in KINDS:
        for phase in PHASES:
            a, b = ctx.memory.get((kind, phase, small)), ctx.memory.get((kind, phase, big))
            if not a or not b:
                continue
            # The worst against the worst: the first upload on a fresh server also allocates the
            # upload pipeline's buffers (16 MiB, then reused), and the sizes are measured on
            # different numbers of fresh servers (the 1 GiB figures come from the upload section).
            difference = max(b) - max(a)
            rows.append(row(SECTION, f"{kind} {phase}, {big // MiB} vs {small // MiB} MiB", "MiB", [difference],
                            target=f"< {SAME_MIB} MiB apart", met=abs(difference) < SAME_MIB,
                            note="worst growth at the big size minus the worst at the small one"))
    return rows


if __name__ == "__main__":
    import run as runner

    raise SystemExit(runner.main(["--only", "memory", *sys.argv[1:]]))
