"""Tarball: GET /<repository>/<map>/<tag> of a big map, first request and repeated requests.

* First request (cold): each run uploads new map bytes (a new first line) and tags them, so
  nothing about this tarball can be cached; compared with `git archive --format=tar.gz` of the
  same tree (map, metadata, config) in a scratch repository: git's own way to make a release.
* Repeated requests of the last of those tags, compared with a minimal server that
  ``socket.sendfile()``s the raw map file (the machine's ceiling for serving those bytes).

Every tarball is checked: members map, metadata, config in that order, the map's and the config's
sha256; every repeated tarball is byte-identical to that tag's first.
"""

from __future__ import annotations

import hashlib
import shutil

from benchlib import (CONFIG, MiB, against_sendfile, check, download, git, json_request, mib_s, paired_ratio,
                      peak_growth, row, scratch_repo, sha256_file, tar_members, timed, upload)

SECTION = "tarball"
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


def git_archive_tree(ctx, path, config: bytes) -> tuple:
    """A scratch repository holding the tree {map, metadata (empty), config}: (repository, tree)."""
    repo = scratch_repo(ctx, "tarball-git")
    map_blob = git(repo, "hash-object", "-w", str(path))
    metadata_blob = git(repo, "hash-object", "-w", "--stdin", input=b"")
    config_blob = git(repo, "hash-object", "-w", "--stdin", input=config)
    tree = git(repo, "mktree", input=(f"100644 blob {map_blob}\tmap\n100644 blob {metadata_blob}\tmetadata\n"
                                      f"100644 blob {config_blob}\tconfig\n").encode())
    return repo, tree


def check_tarball(path, kind: str, digest: str, config_digest: str,
                  order: tuple = ("map", "metadata", "config")) -> None:
    members = tar_members(path)
    check(tuple(members) == order, f"{kind} tarball members {list(members)}")
    check(members["map"] == digest, f"{kind} tarball map member is {members['map']}, not {digest}")
    check(members["config"] == config_digest, f"{kind} tarball config member is {members['config']}")
    check(members["metadata"] == EMPTY, f"{kind} tarball metadata member is not empty")


def run(ctx) -> list[dict]:
    rows = []
    for kind in ("random", "text"):
        path = ctx.map_file(kind)
        size = path.stat().st_size
        config = CONFIG + f"kind: {kind}\n".encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        ctx.log(f"tarball {kind} {size // MiB} MiB x {ctx.runs}: first requests vs git archive, "
                "repeated requests vs sendfile")
        server = None
        repo, tree = git_archive_tree(ctx, path, config)
        git_digest = sha256_file(path)
        sendfile = ctx.baseline("sendfile", "--file", str(path), name=f"tarball-sendfile-{kind}")

        cold, archive, tarball_sizes = [], [], []
        for n in range(ctx.runs):
            digest = ctx.refresh(path)
            fresh = ctx.wogit(name=f"tarball-{kind}") if server is None else ctx.roomy(server, size)
            if fresh is not server:
                server = fresh
                reply = json_request(server.url + "/configs/upload", "PUT", data=config, expect=201)
                check(reply.headers["Wo-Config-Digest"] == config_digest, f"config {reply.headers['Wo-Config-Digest']}")
            t = upload(ctx, server.url + "/blobs/upload", path)
            check(t.status == 201 and t.headers.get("wo-map-digest") == digest, f"{kind} upload: {t}")
            tag = f"bench/{kind}/cold-{n}"
            json_request(f"{server.url}/{tag}", "PUT", json={"map_digest": digest, "config_digest": config_digest},
                         expect=201)
            with peak_growth(ctx, server, kind, "tarball", size):
                t, got = download(ctx, f"{server.url}/{tag}", f"{kind}-cold.tar.gz")
            check(t.status == 200, f"GET {tag} answered {t.status}")
            check(t.headers.get("wo-map-digest") == digest, f"GET {tag}: Wo-Map-Digest {t.headers.get('wo-map-digest')}")
            check_tarball(got, kind, digest, config_digest)
            first = sha256_file(got)  # the last tag's first tarball: what every repeated request must be
            tarball_sizes.append(got.stat().st_size)
            got.unlink()
            cold.append(mib_s(size, t.seconds))

            out = ctx.downloads / f"{kind}-git.tar.gz"
            archive.append(mib_s(size, timed(["git", "--git-dir", str(repo), "archive", "--format=tar.gz",
                                              "-o", str(out), tree])))
            if n == 0:
                check_tarball(out, f"{kind} git archive", git_digest, config_digest, ("config", "map", "metadata"))
            out.unlink()

        # Repeated requests of the last tag: byte-identical to its first tarball.
        repeated, raw = against_sendfile(ctx, server, f"{server.url}/{tag}", first, sendfile, digest, kind,
                                         "tarball again", size)
        server.stop()
        sendfile.stop()
        shutil.rmtree(repo.parent)

        note = f"tarball {min(tarball_sizes) / MiB:.1f} MiB; MiB/s of map bytes"
        ratio = paired_ratio(cold, archive)
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, first request (new tag)", "MiB/s", cold,
                        "git archive --format=tar.gz", archive, ratio, ">= 2x", ratio[0] >= 2, note))
        ratio = paired_ratio(repeated, raw)
        rows.append(row(SECTION, f"{kind} {size // MiB} MiB, repeated request", "MiB/s", repeated,
                        "sendfile server (raw map)", raw, ratio, ">= 0.7x", ratio[0] >= 0.7,
                        "byte-identical to the first"))
    return rows
