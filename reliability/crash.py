"""Crash consistency: a seeded random mix of writes and reads against a real ``wogit serve``,
``kill -9`` (the server's whole process group) at random moments, restart on the same data
directory, and check after every restart that every acknowledged write is there, exactly, and
that nothing half-done is visible.

    .venv/bin/python reliability/crash.py                 # 60 kills over 2,400 operations
    .venv/bin/python reliability/crash.py --short         # 5 kills over 150 operations (the test suite's)
    .venv/bin/python reliability/crash.py --seed 7 --workers 2 --output crash.json

The driver keeps a model of what the registry must hold: every map and config acknowledged
(2xx) with its bytes, every tag with its digests, every map's metadata.  A kill is one of:

* ``mid-upload``: a multi-MiB upload whose body is half sent (Content-Length or chunked);
* ``mid-tarball``: a tarball download whose answer is half read;
* ``in-flight``: one to three writes on different maps sent at once, and the kill a random
  few milliseconds later (inside the commits, the fsyncs, the ref locks);
* ``idle``: between two requests.

An unacknowledged write may or may not have happened: after the restart the driver reads
what the registry says and accepts exactly two answers, "before" or "after" (a tag there
with its digests or absent, a map's metadata equal to one of the two states, an upload
absent or with its exact bytes); it then adopts that answer, so the model stays exact.

After every restart, before anything else: the stale lock and temporary files the dead
process left are counted, the first write (on a map the killed writes were changing) is
timed (over ``FIRST_WRITE_BOUND`` seconds is a violation: a write waited on a dead
process's lock), then ``git fsck --strict``, ``wogit fsck``, the refs against the model
(read with git) and every acknowledged write read back over HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wogit import metadata as wo_metadata, names  # noqa: E402  (the registry's own rules)

FIRST_WRITE_BOUND = 5.0  # seconds; a write normally takes milliseconds
KEYS = [f"k{n}" for n in range(12)]
VALUE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=._-éß地図"
MAPS = [(repository, map) for repository in ("osm", "robots", "levels") for map in ("north", "south", "east")]
TIMEOUT = 60  # seconds: a hang guard for any one request


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# -- the server --------------------------------------------------------------------------------

class Server:
    """``wogit serve`` in its own process group (a kill takes its workers and git children too)."""

    def __init__(self, data: Path, workers: int, logs: Path):
        self.data, self.workers, self.logs = data, workers, logs
        self.proc: subprocess.Popen | None = None
        self.host, self.port, self.starts = "127.0.0.1", 0, 0

    def start(self, prefix: list[str] = ()) -> float:
        """Start (``prefix``: a command to run it under); the seconds until it said it serves."""
        begin = time.monotonic()
        self.starts += 1
        log = open(self.logs / f"server.{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "wogit", "serve", "--data", str(self.data), "--port", "0",
             "--workers", str(self.workers)],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, start_new_session=True)
        log.close()
        line = self.proc.stdout.readline()
        found = re.search(r"on http://([\d.]+):(\d+)", line)
        if not found:
            self.kill()
            raise RuntimeError(f"the server did not start: {line!r}\n{self.log_text()}")
        self.host, self.port = found.group(1), int(found.group(2))
        return time.monotonic() - begin

    def kill(self) -> None:
        """``kill -9`` of the whole process group, and wait for it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM: the server finishes its requests in flight (under strace: strace's child)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        pid = int(children[0]) if children and self.proc.args[0] == "strace" else self.proc.pid
        os.kill(pid, signal.SIGTERM)
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()

    def log_text(self) -> str:
        return (self.logs / f"server.{self.starts}.log").read_text(errors="replace")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            conn.close()


def send_upload(conn: http.client.HTTPConnection, path: str, data: bytes, chunked: bool,
                stop_after: int | None = None) -> None:
    """Send a PUT with ``data`` as its body, with Content-Length or chunked; only the first
    ``stop_after`` bytes of it if given (the rest never comes)."""
    conn.putrequest("PUT", path)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(len(data)))
    conn.endheaders()
    end = len(data) if stop_after is None else stop_after
    piece = 1 << 16
    for at in range(0, end, piece):
        chunk = data[at:min(at + piece, end)]
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked and stop_after is None:
        conn.send(b"0\r\n\r\n")


# -- the model -----------------------------------------------------------------------------------

@dataclass
class Model:
    """What the registry must hold: every acknowledged write."""
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (kind, digest) -> bytes
    tags: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)  # -> (map, config digest)
    deleted: set[tuple[str, str, str]] = field(default_factory=set)  # tags deleted: they stay deleted
    metadata: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    history: set[tuple[str, str]] = field(default_factory=set)  # maps with a metadata history

    def map_exists(self, where: tuple[str, str]) -> bool:
        return where in self.history or any(t[:2] == where for t in self.tags)


@dataclass
class Pending:
    """A write sent but not acknowledged (the server died first): both outcomes are allowed."""
    kind: str  # upload, tag, untag, set, unset
    where: tuple = ()
    data: bytes = b""  # an upload's bytes
    upload_kind: str = ""
    digests: tuple[str, str] = ("", "")
    before: dict[str, str] | None = None
    after: dict[str, str] | None = None


@dataclass
class Figures:
    seed: int = 0
    workers: int = 1
    operations: int = 0
    acknowledged_writes: int = 0
    unacknowledged_writes: int = 0
    unacknowledged_applied: int = 0
    kills: int = 0
    kills_mid_upload: int = 0
    kills_mid_tarball: int = 0
    kills_in_flight: int = 0
    kills_idle: int = 0
    restarts: int = 0
    wogit_fscks: int = 0
    locks_after_kill: int = 0
    tmp_files_left: int = 0  # temporary objects of killed writes at the end (git prune sweeps them)
    tmp_bytes_left: int = 0
    first_write_max_seconds: float = 0.0
    restart_max_seconds: float = 0.0
    checks_max_seconds: float = 0.0
    bytes_uploaded: int = 0
    durability_answers: int = 0
    durability_publishes: int = 0
    durability_problems: list[str] = field(default_factory=list)
    violations: int = 0
    violation_list: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


# -- the driver ----------------------------------------------------------------------------------

class Driver:
    def __init__(self, server: Server, rng: random.Random, figures: Figures):
        self.server, self.rng, self.figures = server, rng, figures
        self.model = Model()
        self.pending: list[Pending] = []
        self.counter = 0
        self.lock = threading.Lock()  # the model, for the writes of an in-flight kill

    def violation(self, text: str) -> None:
        self.figures.violations += 1
        self.figures.violation_list.append(text)
        print(f"VIOLATION: {text}", flush=True)

    def expect(self, what: str, status: int, wanted: int | tuple[int, ...], body: bytes = b"") -> bool:
        wanted = (wanted,) if isinstance(wanted, int) else wanted
        if status not in wanted:
            self.violation(f"{what}: status {status}, expected {wanted}: {body[:200]!r}")
            return False
        return True

    # -- what to write ----------------------------------------------------------

    def new_map_bytes(self, big: bool) -> bytes:
        self.counter += 1
        size = self.rng.randint(1 << 20, 4 << 20) if big else self.rng.randint(1, 64 << 10)
        if size >= 64 and self.rng.random() < 0.5:  # compressible: the deflated path; else stored blocks
            line = b"%d map %d " % (self.counter, self.rng.getrandbits(32))
            return (line * (size // len(line) + 1))[:size]
        return self.counter.to_bytes(8, "big") + self.rng.randbytes(max(0, size - 8))  # unique: the counter

    def new_config_bytes(self) -> bytes:
        self.counter += 1
        return f"name: config-{self.counter}\nseed: {self.rng.getrandbits(48)}\nnote: café\n".encode()

    def new_separator(self) -> str:
        return self.rng.choice([" ", "\t", "\n", "\r\n", "  "])

    def new_items(self) -> dict[str, str]:
        return {self.rng.choice(KEYS): "".join(self.rng.choice(VALUE_CHARS) for _ in range(self.rng.randint(0, 24)))
                for _ in range(self.rng.randint(1, 4))}

    # -- one operation ------------------------------------------------------------

    def random_operation(self) -> None:
        """One operation of the mix, acknowledged or refused as the model says it must be."""
        m = self.model
        existing = [w for w in MAPS if m.map_exists(w)]
        tagged = list(m.tags)
        maps = [d for k, d in m.blobs if k == names.MAP]
        configs = [d for k, d in m.blobs if k == names.CONFIG]
        choices = [("upload-small", 12), ("upload-big", 4), ("upload-config", 8)]
        if maps and configs:
            choices.append(("tag", 14))
        if existing:
            choices += [("set", 18), ("unset", 8)]
        if tagged:
            choices += [("untag", 4), ("tarball", 8), ("retag", 1)]
        if maps:
            choices.append(("blob", 4))
        choices.append(("pack-refs", 1))  # as wogit gc does: later deletions rewrite packed-refs
        kind = self.rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        self.figures.operations += 1
        if kind.startswith("upload"):
            upload_kind = names.CONFIG if kind == "upload-config" else names.MAP
            data = self.new_config_bytes() if upload_kind == names.CONFIG else self.new_map_bytes(kind == "upload-big")
            self.upload(upload_kind, data, chunked=self.rng.random() < 0.5)
        elif kind == "tag":
            self.create_tag(self.new_tag(self.rng.choice(MAPS)), self.rng.choice(maps), self.rng.choice(configs))
        elif kind == "retag":
            where = self.rng.choice(tagged)
            status, _, body = self.tag_request(where, *m.tags[where])
            self.expect(f"PUT existing tag {where}", status, 409, body)
        elif kind == "set":
            self.set_metadata(self.rng.choice(existing), self.new_items(), self.new_separator())
        elif kind == "unset":
            self.delete_key(self.rng.choice(existing), self.rng.choice(KEYS))
        elif kind == "untag":
            self.delete_tag(self.rng.choice(tagged))
        elif kind == "tarball":
            self.check_tarball(self.rng.choice(tagged))
        elif kind == "pack-refs":
            subprocess.run(["git", "--git-dir", str(self.server.data), "pack-refs", "--all"], check=True)
        elif kind == "blob":
            digest = self.rng.choice(maps)
            self.check_blob(names.MAP, digest, m.blobs[(names.MAP, digest)])

    def upload(self, kind: str, data: bytes, chunked: bool) -> None:
        path = "/blobs/upload" if kind == names.MAP else "/configs/upload"
        conn = self.server.connect()
        try:
            send_upload(conn, path, data, chunked)
            reply = conn.getresponse()
            status, body = reply.status, reply.read()
        finally:
            conn.close()
        digest = sha256(data)
        with self.lock:
            stored = (kind, digest) in self.model.blobs
        if not self.expect(f"upload of {kind} {digest}", status, 409 if stored else 201, body):
            return
        if json.loads(body).get("digest", digest) != digest and status == 201:
            self.violation(f"upload of {kind}: answered digest {body!r}, not {digest}")
        with self.lock:
            self.model.blobs[(kind, digest)] = data
            self.figures.acknowledged_writes += 1
            self.figures.bytes_uploaded += len(data)

    def tag_request(self, where: tuple[str, str, str], map_digest: str, config_digest: str):
        body = json.dumps({"map_digest": map_digest, "config_digest": config_digest}).encode()
        return self.server.request("PUT", "/" + "/".join(where), body, {"Content-Type": "application/json"})

    def new_tag(self, where_map: tuple[str, str]) -> tuple[str, str, str]:
        self.counter += 1
        return (*where_map, f"v{self.counter}")

    def create_tag(self, where: tuple[str, str, str], map_digest: str, config_digest: str) -> None:
        status, _, body = self.tag_request(where, map_digest, config_digest)
        if self.expect(f"PUT tag {where}", status, 201, body):
            answer = json.loads(body)
            if (answer["map_digest"], answer["config_digest"]) != (map_digest, config_digest):
                self.violation(f"PUT tag {where}: answered {answer}")
            with self.lock:
                self.model.tags[where] = (map_digest, config_digest)
                self.figures.acknowledged_writes += 1

    def delete_tag(self, where: tuple[str, str, str]) -> None:
        status, _, body = self.server.request("DELETE", "/" + "/".join(where))
        if self.expect(f"DELETE tag {where}", status, 200, body):
            with self.lock:
                if (json.loads(body)["map_digest"], json.loads(body)["config_digest"]) != self.model.tags[where]:
                    self.violation(f"DELETE tag {where}: answered {body!r}, the model has {self.model.tags[where]}")
                del self.model.tags[where]
                self.model.deleted.add(where)
                self.model.history.add(where[:2])
                self.figures.acknowledged_writes += 1

    def set_metadata(self, where: tuple[str, str], items: dict[str, str], separator: str) -> None:
        text = separator.join(f"{k}={v}" for k, v in items.items())
        status, _, body = self.server.request("PUT", f"/{where[0]}/{where[1]}/metadata", text.encode(),
                                              {"Content-Type": "text/plain"})
        if self.expect(f"PUT metadata {where} {text!r}", status, 200, body):
            with self.lock:
                before = self.model.metadata.get(where, {})
                after = {**before, **items}
                if after != before:
                    self.model.history.add(where)
                self.model.metadata[where] = after
                self.figures.acknowledged_writes += 1

    def delete_key(self, where: tuple[str, str], key: str) -> None:
        with self.lock:
            there = key in self.model.metadata.get(where, {})
        status, _, body = self.server.request("DELETE", f"/{where[0]}/{where[1]}/metadata/{key}")
        if self.expect(f"DELETE metadata {where} {key}", status, 200 if there else 404, body) and there:
            with self.lock:
                del self.model.metadata[where][key]
                self.figures.acknowledged_writes += 1

    # -- reads ----------------------------------------------------------------------

    def check_blob(self, kind: str, digest: str, data: bytes) -> None:
        path = f"/{'blobs' if kind == names.MAP else 'configs'}/{digest}"
        status, headers, body = self.server.request("GET", path)
        if self.expect(f"GET {path}", status, 200, body) and body != data:
            self.violation(f"GET {path}: {len(body)} bytes of digest {sha256(body)}, not the {len(data)} uploaded")

    def check_tarball(self, where: tuple[str, str, str]) -> None:
        status, headers, body = self.server.request("GET", "/" + "/".join(where))
        if not self.expect(f"GET tarball {where}", status, 200, body):
            return
        map_digest, config_digest = self.model.tags[where]
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        wanted = {"map": self.model.blobs[(names.MAP, map_digest)],
                  "metadata": wo_metadata.serialise(self.model.metadata.get(where[:2], {})),
                  "config": self.model.blobs[(names.CONFIG, config_digest)]}
        if members != wanted or (headers.get("wo-map-digest"), headers.get("wo-config-digest")) != \
                (map_digest, config_digest):
            got = {k: (len(v), sha256(v)) for k, v in members.items()}
            self.violation(f"GET tarball {where}: members {got}, expected "
                           f"{ {k: (len(v), sha256(v)) for k, v in wanted.items()} }")

    # -- kills ------------------------------------------------------------------------

    def kill_mid_upload(self) -> None:
        data = self.new_map_bytes(big=True)
        chunked = self.rng.random() < 0.5
        half = self.rng.randint(len(data) // 4, 3 * len(data) // 4)
        conn = self.server.connect()
        try:
            send_upload(conn, "/blobs/upload", data, chunked, stop_after=half)
            time.sleep(self.rng.uniform(0, 0.02))
            self.server.kill()
        finally:
            conn.close()
        self.pending.append(Pending("upload", upload_kind=names.MAP, data=data))

    def kill_mid_tarball(self) -> None:
        big = [t for t, (m, _) in self.model.tags.items() if len(self.model.blobs[(names.MAP, m)]) >= 1 << 20]
        conn = self.server.connect()
        try:
            conn.request("GET", "/" + "/".join(self.rng.choice(big)))
            reply = conn.getresponse()
            if reply.status != 200:
                self.violation(f"GET tarball before a kill: {reply.status}")
            length = int(reply.getheader("Content-Length") or 1 << 20)  # chunked: at least 1 MiB
            reply.read(self.rng.randint(1, max(1, length // 2)))  # at most half of it
            self.server.kill()
        finally:
            conn.close()

    def kill_in_flight(self) -> None:
        """One to three writes on different maps, sent together; the kill comes a few ms later.
        Every choice is drawn here, before the threads start, so a seed replays the same run."""
        m = self.model
        maps = [d for k, d in m.blobs if k == names.MAP]
        configs = [d for k, d in m.blobs if k == names.CONFIG]
        jobs: list[tuple[Pending, object]] = []
        for where in self.rng.sample(MAPS, self.rng.randint(1, 3)):
            tags = sorted(t for t in m.tags if t[:2] == where)
            choices = ["upload", "config"] + (["tag"] if maps and configs else []) + (["untag"] if tags else [])
            choices += (["set", "set"] if m.map_exists(where) else []) + (["unset"] if m.metadata.get(where) else [])
            kind = self.rng.choice(choices)
            before = dict(m.metadata.get(where, {}))
            chunked = self.rng.random() < 0.5
            if kind in ("upload", "config"):
                upload_kind = names.MAP if kind == "upload" else names.CONFIG
                data = self.new_map_bytes(big=False) if kind == "upload" else self.new_config_bytes()
                jobs.append((Pending("upload", upload_kind=upload_kind, data=data),
                             lambda d=data, k=upload_kind, c=chunked: self.upload(k, d, c)))
            elif kind == "set":
                items, separator = self.new_items(), self.new_separator()
                jobs.append((Pending("set", where, before=before, after={**before, **items}),
                             lambda w=where, i=items, s=separator: self.set_metadata(w, i, s)))
            elif kind == "unset":
                key = self.rng.choice(sorted(before))
                after = {k: v for k, v in before.items() if k != key}
                jobs.append((Pending("unset", where, before=before, after=after),
                             lambda w=where, k=key: self.delete_key(w, k)))
            elif kind == "untag":
                tag = self.rng.choice(tags)
                jobs.append((Pending("untag", tag, digests=m.tags[tag]), lambda t=tag: self.delete_tag(t)))
            else:
                tag, digests = self.new_tag(where), (self.rng.choice(maps), self.rng.choice(configs))
                jobs.append((Pending("tag", tag, digests=digests), lambda t=tag, d=digests: self.create_tag(t, *d)))
        delay = self.rng.uniform(0, 0.03)
        answered: list[Pending] = []

        def run(pending: Pending, job) -> None:
            try:
                job()
                answered.append(pending)
            except (OSError, http.client.HTTPException):
                pass  # the server died first: unacknowledged

        threads = [threading.Thread(target=run, args=job) for job in jobs]
        self.figures.operations += len(jobs)
        for thread in threads:
            thread.start()
        time.sleep(delay)
        self.server.kill()
        for thread in threads:
            thread.join(TIMEOUT)
        self.pending += [p for p, _ in jobs if p not in answered]

    def ensure_big_tag(self) -> None:
        """A tag of a multi-MiB map, for a kill mid-tarball (a few more operations if need be)."""
        if any(len(self.model.blobs[(names.MAP, m)]) >= 1 << 20 for m, _ in self.model.tags.values()):
            return
        data, config = self.new_map_bytes(big=True), self.new_config_bytes()
        self.upload(names.MAP, data, chunked=False)
        self.upload(names.CONFIG, config, chunked=True)
        self.create_tag(self.new_tag(self.rng.choice(MAPS)), sha256(data), sha256(config))
        self.figures.operations += 3

    # -- after a restart --------------------------------------------------------------

    def resolve_pending(self) -> list[tuple[str, object]]:
        """Each unacknowledged write happened wholly or not at all: adopt what the registry says.
        Returns the writes to do first (timed): those that did not happen, redone on the same
        refs (a lock the killed writer left is on them), and a metadata change on their maps."""
        redo: list[tuple[str, object]] = []
        m = self.model
        for p in self.pending:
            self.figures.unacknowledged_writes += 1
            applied = False
            if p.kind == "upload":
                digest = sha256(p.data)
                path = f"/{'blobs' if p.upload_kind == names.MAP else 'configs'}/{digest}"
                status, _, body = self.server.request("GET", path)
                if status == 200 and body != p.data:
                    self.violation(f"unacknowledged upload {path}: {len(body)} bytes of {sha256(body)}, "
                                   f"not the {len(p.data)} sent")
                elif status == 200:
                    applied = True
                    m.blobs[(p.upload_kind, digest)] = p.data
                elif self.expect(f"GET unacknowledged {path}", status, 404, body):
                    redo.append((f"upload {digest}", lambda p=p: self.upload(p.upload_kind, p.data, chunked=False)))
            elif p.kind in ("tag", "untag"):
                found = self.tags_of(p.where[:2]).get(p.where[2])
                if found is not None and found != p.digests:
                    self.violation(f"unacknowledged {p.kind} {p.where}: the tag has {found}, not {p.digests}")
                elif p.kind == "tag" and found is not None:
                    applied = True
                    m.tags[p.where] = found
                elif p.kind == "tag":
                    redo.append((f"tag {p.where}", lambda p=p: self.create_tag(p.where, *p.digests)))
                elif found is None:
                    applied = True
                    del m.tags[p.where]
                    m.deleted.add(p.where)
                    m.history.add(p.where[:2])
                else:
                    redo.append((f"untag {p.where}", lambda p=p: self.delete_tag(p.where)))
            else:
                status, _, body = self.server.request("GET", f"/{p.where[0]}/{p.where[1]}/metadata")
                got = dict(line.split("=", 1) for line in body.decode().splitlines()) if status == 200 else None
                if got == p.after and p.after != p.before:
                    applied = True
                    m.metadata[p.where] = dict(p.after)
                    m.history.add(p.where)
                elif got != p.before:
                    self.violation(f"unacknowledged {p.kind} of {p.where}'s metadata: {status} {got}, "
                                   f"neither before {p.before} nor after {p.after}")
            self.figures.unacknowledged_applied += applied
            if p.kind != "upload" and m.map_exists(p.where[:2]):
                items, separator = self.new_items(), self.new_separator()
                redo.append((f"set {p.where[:2]}",
                             lambda w=p.where[:2], i=items, s=separator: self.set_metadata(w, i, s)))
        self.pending = []
        return redo

    def first_writes(self, redo: list[tuple[str, object]]) -> None:
        """The first writes after a restart, each timed: none may wait on a dead process's lock."""
        if not redo and any(self.model.map_exists(w) for w in MAPS):
            where = self.rng.choice([w for w in MAPS if self.model.map_exists(w)])
            items, separator = self.new_items(), self.new_separator()
            redo = [(f"set {where}", lambda: self.set_metadata(where, items, separator))]
        for what, write in redo:
            begin = time.monotonic()
            write()
            took = time.monotonic() - begin
            self.figures.operations += 1
            self.figures.first_write_max_seconds = max(self.figures.first_write_max_seconds, round(took, 3))
            if took > FIRST_WRITE_BOUND:
                self.violation(f"the first write after a restart ({what}) took {took:.1f} s")

    def tags_of(self, where: tuple[str, str]) -> dict[str, tuple[str, str]]:
        """The map's tags as the registry lists them (every page): tag -> digests."""
        found, path = {}, f"/{where[0]}/{where[1]}/_tags?n=1000"
        while path:
            status, headers, body = self.server.request("GET", path)
            if status == 404:
                return found
            if not self.expect(f"GET {path}", status, 200, body):
                return found
            found.update({t["tag"]: (t["map_digest"], t["config_digest"]) for t in json.loads(body)["tags"]})
            link = re.match(r"<([^>]+)>", headers.get("link", ""))
            path = link.group(1) if link else ""
        return found

    def check_everything(self, data: Path, thorough: bool) -> None:
        """After a restart: git fsck (and, ``thorough``, wogit fsck), the refs against the model,
        every write read back."""
        m = self.model
        fsck = subprocess.run(["git", "--git-dir", str(data), "fsck", "--strict", "--no-dangling"],
                              capture_output=True, text=True)
        if fsck.returncode != 0 or "error" in fsck.stderr.lower() or "warning" in fsck.stderr.lower():
            self.violation(f"git fsck --strict: {fsck.returncode} {fsck.stdout[-500:]} {fsck.stderr[-500:]}")
        if thorough:  # re-hashes every map and config (sha256): seconds, so not after every restart
            ours = subprocess.run([sys.executable, "-m", "wogit", "fsck", "--data", str(data)],
                                  capture_output=True, text=True, cwd=ROOT)
            self.figures.wogit_fscks += 1
            if ours.returncode != 0:
                self.violation(f"wogit fsck: {ours.returncode} {ours.stdout[-500:]} {ours.stderr[-500:]}")
        fsynced = subprocess.run(["git", "--git-dir", str(data), "config", "core.fsync"],
                                 capture_output=True, text=True)
        if fsynced.stdout.strip() != "all":  # what git's own ref transactions (tag deletions) sync
            self.violation(f"core.fsync is {fsynced.stdout.strip()!r}, not 'all'")
        # The refs, read with git: exactly the model's, each naming exactly the model's trees.
        listed = subprocess.run(["git", "--git-dir", str(data), "for-each-ref",
                                 "--format=%(refname) %(objectname) %(tree)",
                                 names.NAMESPACE], capture_output=True, text=True, check=True).stdout
        # a digest index ref names a tree, a tag or a metadata history a commit (docs/layout.md)
        actual = {ref: tree or oid for ref, oid, tree in (line.split(" ") for line in listed.splitlines())}
        wanted = {names.blob_ref(kind, digest): tree_id({kind: git_blob_id(b)})
                  for (kind, digest), b in m.blobs.items()}
        wanted.update({names.tag_ref(*t): tree_id({names.MAP: git_blob_id(m.blobs[(names.MAP, md)]),
                                                   names.CONFIG: git_blob_id(m.blobs[(names.CONFIG, cd)])})
                       for t, (md, cd) in m.tags.items()})
        wanted.update({names.metadata_ref(*w): tree_id({k: git_blob_id(v.encode())
                                                        for k, v in m.metadata.get(w, {}).items()})
                       for w in m.history})
        for ref in sorted(set(actual) | set(wanted)):
            if actual.get(ref) != wanted.get(ref):
                self.violation(f"ref {ref}: tree {actual.get(ref)}, the model's {wanted.get(ref)}")
        # Over HTTP: every acknowledged upload's bytes, every map's tags and metadata.
        for (kind, digest), b in m.blobs.items():
            self.check_blob(kind, digest, b)
        for where in MAPS:
            tags = {t[2]: d for t, d in m.tags.items() if t[:2] == where}
            got = self.tags_of(where)
            if got != tags:
                self.violation(f"tags of {where}: {got}, the model's {tags}")
            status, _, body = self.server.request("GET", f"/{where[0]}/{where[1]}/metadata")
            if m.map_exists(where):
                if self.expect(f"GET metadata {where}", status, 200, body) and \
                        body != wo_metadata.serialise(m.metadata.get(where, {})):
                    self.violation(f"metadata of {where}: {body!r}, the model's {m.metadata.get(where)}")
            else:
                self.expect(f"GET metadata of {where}, a map that does not exist", status, 404, body)
        for where in sorted(m.deleted - set(m.tags)):
            status, _, body = self.server.request("GET", "/" + "/".join(where))
            self.expect(f"GET deleted tag {where}", status, 404, body)
        locks, _ = leftovers(data)  # the first writes went through every lock a killed writer left
        if locks:
            self.violation(f"lock files left after the first writes: {locks}")


def tree_id(entries: dict[str, str]) -> str:
    """The git id of a tree of blobs (name -> blob id), as git sorts it."""
    body = b"".join(b"100644 %s\0%s" % (name.encode(), bytes.fromhex(oid)) for name, oid in sorted(entries.items()))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def kill_and_restart(driver: Driver, how: str, kills: int, data: Path) -> bool:
    """One kill of the kind ``how``, the restart, and every check; False if it did not restart."""
    figures, server = driver.figures, driver.server
    if how == "mid-tarball":
        driver.ensure_big_tag()
        driver.kill_mid_tarball()
    elif how == "mid-upload":
        driver.kill_mid_upload()
        figures.operations += 1
    elif how == "in-flight":
        driver.kill_in_flight()
    else:
        server.kill()
    figures.kills += 1
    counter = "kills_" + how.replace("-", "_")
    setattr(figures, counter, getattr(figures, counter) + 1)
    locks, tmps = leftovers(data)  # a dead writer's, or those of a git finishing by itself
    figures.locks_after_kill += len(locks)
    figures.tmp_files_left, figures.tmp_bytes_left = len(tmps), sum(p.stat().st_size for p in tmps)
    if locks:
        print(f"kill {figures.kills} ({how}) left {locks}", flush=True)
    try:
        figures.restart_max_seconds = max(figures.restart_max_seconds, round(server.start(), 3))
    except RuntimeError as exc:
        driver.violation(f"the server did not start again without repair: {exc}")
        return False
    figures.restarts += 1
    checks = time.monotonic()
    driver.first_writes(driver.resolve_pending())
    driver.check_everything(data, thorough=figures.restarts % 5 == 0 or figures.kills == kills)
    figures.checks_max_seconds = max(figures.checks_max_seconds, round(time.monotonic() - checks, 3))
    print(f"kill {figures.kills}/{kills} ({how}) after {figures.operations} operations: "
          f"{figures.violations} violations", flush=True)
    return True


def leftovers(data: Path) -> tuple[list[str], list[Path]]:
    """The lock files and temporary objects in a data directory (what a killed process left)."""
    # os.walk passes over directories that vanish meanwhile (a git finishing a deletion by itself)
    locks = sorted(os.path.relpath(os.path.join(folder, name), data)
                   for folder, _, files in os.walk(data) for name in files if name.endswith(".lock"))
    return locks, sorted((data / "objects").glob("tmp_*"))


# -- durability: what a 2xx has synced ------------------------------------------------------------

PUBLISH = re.compile(r'^(\d+) +([\d.]+) (rename|renameat|renameat2|unlink|unlinkat)\((.*)\) = 0')
FSYNC = re.compile(r'^(\d+) +([\d.]+) (?:fsync|fdatasync)\(\d+<([^>]*)>(\) = 0| <unfinished \.\.\.>)')
RMDIR = re.compile(r'^(\d+) +([\d.]+) rmdir\("([^"]*)"\) = 0')
MKDIR = re.compile(r'^(\d+) +([\d.]+) mkdir(?:at)?\((.*)\) = 0')
RESUMED = re.compile(r'^(\d+) +([\d.]+) <\.\.\. (?:fsync|fdatasync) resumed>\) = 0')
ANSWER = re.compile(r'^(\d+) +([\d.]+) (?:sendto|write|sendmsg)\(\d+<(?:socket|TCP)[^>]*>, "HTTP/1.1 2')
PATHS = re.compile(r'"([^"]*)"')


def durability(work: Path) -> dict:
    """One write of each kind against a server run under ``strace -f``: before each 2xx answer,
    every file made visible in the repository (renamed into ``objects/``, ``refs/``,
    ``packed-refs``) must have been fsync'd before its rename, and its directory after it (also
    for a ref file removed, and the parent of every directory made).  kill -9 keeps the page cache, so the crash runs cannot tell a
    write that was synced from one that was not: this reads the system calls instead."""
    data, trace = work / "durable.git", work / "durable.strace"
    server = Server(data, 1, work)
    strace = ["strace", "-f", "-y", "-qq", "-ttt", "-s", "12", "-o", str(trace),
              "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,sendto,write,sendmsg"]
    server.start(prefix=strace)
    rng = random.Random(0)
    driver = Driver(server, rng, Figures())
    map_bytes, config = driver.new_map_bytes(big=True), driver.new_config_bytes()
    driver.upload(names.MAP, map_bytes, chunked=False)
    driver.upload(names.CONFIG, config, chunked=True)
    tag = ("osm", "north", "v1")
    driver.create_tag(tag, sha256(map_bytes), sha256(config))
    driver.set_metadata(tag[:2], {"k1": "a", "k2": "b"}, " ")
    driver.delete_key(tag[:2], "k1")
    subprocess.run(["git", "--git-dir", str(data), "pack-refs", "--all"], check=True)  # a packed tag's deletion
    driver.create_tag(("osm", "north", "v2"), sha256(map_bytes), sha256(config))
    driver.delete_tag(tag)
    driver.delete_tag(("osm", "north", "v2"))
    server.stop()
    writes = driver.figures.acknowledged_writes
    root = os.path.realpath(data)
    synced: set[str] = set()  # files and directories fsync'd since they last changed
    waiting: dict[str, str] = {}  # directory -> what it must sync for
    checked, problems, answers = 0, [], 0
    syncing: dict[str, str] = {}  # thread -> the file its unfinished fsync is for
    for line in trace.read_text(errors="replace").splitlines():
        if (found := FSYNC.match(line)) and found.group(4) != ") = 0":
            syncing[found.group(1)] = os.path.normpath(found.group(3))
        elif found := FSYNC.match(line) or RESUMED.match(line):
            path = os.path.normpath(found.group(3)) if found.re is FSYNC else syncing.pop(found.group(1))
            synced.add(path)
            waiting.pop(path, None)
        elif (found := RMDIR.match(line)) and os.path.normpath(found.group(3)) in waiting:
            # a directory emptied by a deletion is removed: its parent is the one to sync
            parent = os.path.dirname(os.path.normpath(found.group(3)))
            waiting[parent] = waiting.pop(os.path.normpath(found.group(3)))
            synced.discard(parent)
        elif (found := MKDIR.match(line)) and (made := PATHS.findall(found.group(3))):
            # a new directory's entry is in its parent, which must reach the disk too
            made = os.path.normpath(made[0])
            if os.path.relpath(made, root).startswith(("objects" + os.sep, "refs" + os.sep)):
                synced.discard(os.path.dirname(made))
                waiting[os.path.dirname(made)] = f"mkdir {os.path.relpath(made, root)}"
        elif found := PUBLISH.match(line):
            paths = [os.path.normpath(p) for p in PATHS.findall(found.group(4))]
            target = paths[-1]
            if not target.startswith(root + os.sep) or "/wogit-cache/" in target or "tmp_" in os.path.basename(target) \
                    or target.endswith(".lock"):  # a lock given up, a temporary file removed: nothing published
                continue
            relative = os.path.relpath(target, root)
            if not (relative.startswith(("objects" + os.sep, "refs" + os.sep)) or relative == "packed-refs"):
                continue
            checked += 1
            if found.group(3).startswith("rename") and paths[0] not in synced:
                problems.append(f"{relative}: renamed from {os.path.basename(paths[0])}, never fsync'd")
            synced.discard(os.path.dirname(target))
            waiting[os.path.dirname(target)] = f"{found.group(3)} {relative}"
        elif ANSWER.match(line):
            answers += 1
            problems += [f"a 2xx answered before its directory was fsync'd after {what}" for what in waiting.values()]
            waiting.clear()
    if answers != writes:  # the trace must show every answer, or it proves nothing
        problems.append(f"the trace shows {answers} answers of the {writes} writes")
    return {"durability_answers": answers, "durability_publishes": checked, "durability_problems": problems}


# -- the run ----------------------------------------------------------------------------------------

KILLS = {"mid-upload": 3, "mid-tarball": 2, "in-flight": 4, "idle": 1}  # how often each kind is drawn


def run(seed: int, operations: int, kills: int, workers: int, work: Path) -> Figures:
    """``operations`` operations at least, with ``kills`` kills spread evenly among them."""
    figures = Figures(seed=seed, workers=workers)
    begin = time.monotonic()
    rng = random.Random(seed)
    data, logs = work / "registry.git", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = Server(data, workers, logs)
    server.start()
    driver = Driver(server, rng, figures)
    plan = rng.choices(list(KILLS), list(KILLS.values()), k=kills)
    at = [(i + 1) * operations // (kills + 1) for i in range(kills)]
    try:
        while figures.operations < operations or figures.kills < kills:
            if figures.kills < kills and figures.operations >= at[figures.kills]:
                if not kill_and_restart(driver, plan[figures.kills], kills, data):
                    break
            else:
                driver.random_operation()
    finally:
        if server.proc.poll() is None:
            server.stop()
        for log in sorted(logs.glob("server.*.log")):
            if "Traceback" in log.read_text(errors="replace"):
                driver.violation(f"a traceback in {log.name}: {log.read_text(errors='replace')[-2000:]}")
    if shutil.which("strace"):
        for key, value in durability(work).items():
            setattr(figures, key, value)
        for problem in figures.durability_problems:
            driver.violation(f"durability: {problem}")
    else:
        figures.durability_problems = ["not checked: no strace on this machine"]
    figures.wall_seconds = round(time.monotonic() - begin, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=2400, help="operations at least (default 2400)")
    parser.add_argument("--kills", type=int, default=60, help="kill -9s, spread over the operations (default 60)")
    parser.add_argument("--workers", type=int, default=1, help="wogit serve --workers (default 1)")
    parser.add_argument("--short", action="store_true", help="5 kills over 150 operations (the test suite's run)")
    parser.add_argument("--output", help="write the figures as JSON to this file")
    parser.add_argument("--keep", help="keep the data directory and logs in this (new) directory")
    args = parser.parse_args(argv)
    if args.short:
        args.ops, args.kills = 150, 5
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wogit-crash-"))
    try:
        figures = run(args.seed, args.ops, args.kills, args.workers, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {k: v for k, v in vars(figures).items() if k != "violation_list"}
    print(json.dumps(summary, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(vars(figures), indent=1) + "\n")
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
