#!/usr/bin/env python3
"""Races across processes: several `wogit serve` on ONE data directory, git pushes through its
hooks, and `wogit gc`, all writing the same refs at once.

    .venv/bin/python reliability/races.py [--rounds 250] [--racers 8] [--servers 3] [--workers 2]
                                          [--kinds tag,metadata,upload,gc,push] [--no-pack-refs]
                                          [--short] [--output FILE] [--keep DIR] [--seed N]

It starts ``--servers`` separate `wogit serve` processes and one more with ``--workers`` worker
processes (0: none), all on one fresh data directory, and runs rounds of five kinds in turn:

* ``tag``: every racer (threads spread over the servers) and one `git push` create the same tag
  with a different map each: exactly one creator (a 201, or the push's ``*``); every other HTTP
  racer gets 409 and the push is rejected; the ref is the winner's commit, naming its pair.
* ``metadata``: racers write their own keys (sequentially, so the last acknowledged value is
  known), a shared key (concurrently: the final value must be one that no later write
  followed) and a key they set then delete, while a `git push` adds commits on the same ref and a
  DELETE of one of the map's tags records itself in the same history (one transaction): every
  acknowledged value is there at the end and in the ref's first-parent history, which is linear
  and has exactly one commit per acknowledged change. (The API has no conditional metadata write,
  so shared keys are checked by real-time order, not by increments.)
* ``upload``: racers upload the same new bytes (a map or a config) and a `git push` creates its
  digest index ref: exactly one creator, every other racer 409, one index ref at the right tree,
  the blob stored with its bytes, no temporary file left behind.
* ``gc``: fresh uploads, then every loose object is aged past the grace period (os.utime, while
  nothing is in flight), then HTTP tag creations, HTTP re-uploads and a pushed tag naming those
  uploads race a loop of `wogit gc --grace 60s`: every tag's map and config objects exist and are
  indexed, every upload acknowledged during the round is still stored.
* ``push``: one push carrying a new tag and a metadata commit (``--atomic`` every other round)
  races HTTP creations of that tag and HTTP metadata writes on that map: exactly one tag creator,
  no acknowledged write lost, an atomic push applies both refs or neither.

Beside every third round, `git pack-refs --all` runs in a loop (as an operator may run it beside
live servers), so refs move from loose files into packed-refs while they are read and written.
After every round: `git fsck --strict` is clean (and `wogit fsck`, the registry's rules on every
ref, every 25th round and at the end), no answer was a 5xx other than 503, every error had a
JSON ``msg``; at the end, no server logged a traceback. Exit 0 when there was no violation; the
figures go to standard output (and ``--output`` as JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("tag", "metadata", "upload", "gc", "push")
HOUR = 3600
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "pusher", "GIT_AUTHOR_EMAIL": "pusher@example.com",
                "GIT_COMMITTER_NAME": "pusher", "GIT_COMMITTER_EMAIL": "pusher@example.com"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> str:
    return "sha256:" + sha256_hex(data)


def git_id(kind: str, data: bytes) -> str:
    return hashlib.sha1(b"%s %d\0" % (kind.encode(), len(data)) + data).hexdigest()


def index_tree(kind: str, data: bytes) -> str:
    """The id of the digest index tree {kind: blob} of ``data``."""
    return git_id("tree", b"100644 " + kind.encode() + b"\0" + bytes.fromhex(git_id("blob", data)))


# -- processes ---------------------------------------------------------------------------------------

class Server:
    """A `wogit serve` on the shared data directory and a free port, stopped by its PID."""

    def __init__(self, data: Path, log: Path, *args: str):
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0",
                                          *args], stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                         start_new_session=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://[\d.]+:\d+)", line)
        if not match:
            self.stop()
            raise SystemExit(f"races: a server did not start: {line!r}\n{log.read_text()[-2000:]}")
        self.url = match.group(1)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def git(data: Path, *args: str, input: bytes | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", str(data), *args], input=input, capture_output=True, check=check,
                          env={**os.environ, **GIT_IDENTITY, **(env or {})})


class Pusher:
    """A bare repository borrowing the registry's objects (objects/info/alternates) that makes
    tags and metadata commits with git's plumbing and pushes them, by path or over HTTP, through
    the registry's pre-receive hook."""

    def __init__(self, path: Path, data: Path):
        self.path, self.data = path, data
        subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
        (path / "objects" / "info" / "alternates").write_text(str(data / "objects") + "\n")
        self.seconds: list[float] = [0.5]  # how long pushes took: HTTP racers spread over that
        self.rejections: Counter = Counter()  # why pushes were refused

    def run(self, *args: str, input: bytes | None = None) -> str:
        return git(self.path, *args, input=input).stdout.decode().strip()

    def blob(self, data: bytes) -> str:
        return self.run("hash-object", "-w", "--stdin", input=data)

    def tree(self, entries: dict[str, str]) -> str:
        """A tree of blobs: name -> blob id."""
        return self.run("mktree", input="".join(f"100644 blob {oid}\t{name}\n"
                                                for name, oid in sorted(entries.items())).encode())

    def tag_commit(self, path: str, map_data: bytes, config: bytes) -> str:
        tree = self.tree({"map": git_id("blob", map_data), "config": git_id("blob", config)})
        return self.run("commit-tree", tree, "-m", f"tag {path}", "-m",
                        f"map_digest: {digest(map_data)}\nconfig_digest: {digest(config)}")

    def metadata_commit(self, ref: str, items: dict[str, str]) -> tuple[str, str]:
        """A commit setting ``items`` on the registry's current head of ``ref``: (commit, parent)."""
        parent = git(self.data, "rev-parse", "--verify", "--quiet", ref, check=False).stdout.decode().strip()
        entries = {}
        if parent:
            for line in git(self.data, "ls-tree", parent).stdout.decode().splitlines():
                meta, name = line.split("\t", 1)
                entries[name] = meta.split()[2]
        for key, value in items.items():
            entries[key] = self.blob(value.encode())
        body = "".join(f"{k}={v}\n" for k, v in sorted(items.items()))
        commit = self.run("commit-tree", self.tree(entries), *(["-p", parent] if parent else []),
                          "-m", f"set {', '.join(sorted(items))}", "-m", body)
        return commit, parent

    def push(self, target: str, specs: list[str], atomic: bool = False) -> dict[str, str]:
        """Push ``specs`` (``<oid>:<ref>``); each ref's porcelain flag: ``*`` created, `` `` moved,
        ``=`` up to date, ``!`` rejected (a whole push that failed: every ref ``!``)."""
        started = time.monotonic()
        result = subprocess.run(["git", "--git-dir", str(self.path), "push", "--porcelain",
                                 *(["--atomic"] if atomic else []), target, *specs],
                                capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY})
        self.seconds = (self.seconds + [time.monotonic() - started])[-20:]
        flags = {spec.split(":", 1)[1]: "!" for spec in specs}
        for line in result.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and ":" in parts[1] and parts[1].split(":", 1)[1] in flags:
                flags[parts[1].split(":", 1)[1]] = parts[0]
        if result.returncode == 0 and "!" in flags.values():
            raise AssertionError(f"git push exited 0 but refused a ref: {result.stdout}{result.stderr}")
        if "!" in flags.values():
            self.rejections[_reason(result.stdout + result.stderr)] += 1
        return flags

    def typical(self) -> float:
        return sorted(self.seconds)[len(self.seconds) // 2]


class PackRefs:
    """`git pack-refs --all` again and again beside the round (as an operator may run it beside
    live servers): every ref moves from its loose file into packed-refs while it is read and written."""

    def __init__(self, data: Path):
        self.data, self.runs, self.failures = data, 0, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            result = git(self.data, "pack-refs", "--all", check=False)
            self.runs += 1
            if result.returncode != 0 and b"Unable to create" not in result.stderr:  # another one's lock
                self.failures.append(result.stderr.decode()[-300:])
            self.done.wait(0.05)

    def finish(self) -> int:
        self.done.set()
        self.thread.join()
        if self.failures:
            raise AssertionError(f"git pack-refs failed: {self.failures[:2]}")
        return self.runs


REASONS = (  # why a push is refused, as git says it: its view of the ref was out of date, or a lock
    ("fetch first", "stale: the ref moved before the push began"),
    ("non-fast-forward", "stale: the ref moved before the push began"),
    ("already exists", "the ref was created before the push began"),
    ("wogit: refusing", "the registry's rules"),
    ("cannot lock ref", "the ref moved or was locked during the push"),
    ("failed to update ref", "the ref moved or was locked during the push"),
    ("atomic push failed", "another ref of the atomic push was refused"),
    ("unable to read", "gc swept an object the pusher borrows before it was sent"),
)


def _reason(output: str) -> str:
    for sign, reason in REASONS:
        if sign in output:
            if sign == "wogit: refusing":  # which rule, without the names and digests
                rule = output.split(sign, 1)[1].split("\n", 1)[0].split(": ", 1)[-1]
                return f"{reason}: {re.sub(r'sha256:[0-9a-f]{64}|refs/[^ ]+|[0-9a-f]{40}', '…', rule)[:90]}"
            return reason
    return "other: " + " ".join(output.split())[-200:]


# -- racing ------------------------------------------------------------------------------------------

_local = threading.local()


def session() -> requests.Session:
    """This thread's HTTP session (kept-alive connections)."""
    if getattr(_local, "session", None) is None:
        _local.session = requests.Session()
    return _local.session


def race(*tasks) -> list:
    """Run every task in its own thread, released together; their results (or exceptions) in order."""
    barrier = threading.Barrier(len(tasks))
    results: list = [None] * len(tasks)

    def run(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[i] = tasks[i]()
        except Exception as exc:  # counted as a violation by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        if t.is_alive():
            raise SystemExit("races: a racer hung for 300 s")
    return results


@dataclass
class Write:
    """One acknowledged metadata change: what, and when it was sent and answered."""
    key: str
    value: str | None  # None: a deletion
    sent: float
    answered: float
    writer: str


@dataclass
class Figures:
    rounds: Counter = field(default_factory=Counter)
    winners: Counter = field(default_factory=Counter)  # tag and upload rounds: creators (1 each)
    push_wins: Counter = field(default_factory=Counter)  # of those, by git push
    conflicts: Counter = field(default_factory=Counter)  # 409s and rejected pushes, by kind
    requests: int = 0
    pushes: Counter = field(default_factory=Counter)  # ok / rejected
    metadata_writes: int = 0  # acknowledged changes checked
    shared_writes: int = 0
    gc_runs: int = 0
    gc_swept: int = 0
    gc_tags_refused: int = 0  # 404: the upload was swept before the tag freshened it (allowed)
    unavailable: int = 0  # 503 answers (allowed: retry later)
    pack_refs: int = 0  # `git pack-refs --all` run during rounds
    seconds: Counter = field(default_factory=Counter)
    lost_updates: int = 0
    orphaned_tags: int = 0
    fsck_failures: int = 0
    violations: list[str] = field(default_factory=list)

    def violation(self, kind: str, round_: int, what: str) -> None:
        self.violations.append(f"{kind} round {round_}: {what}")
        print(f"VIOLATION {kind} round {round_}: {what}", file=sys.stderr, flush=True)


class Races:
    def __init__(self, args, work: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = work
        self.data = work / "registry.git"
        self.figures = Figures()
        self.servers: list[Server] = []
        self.urls: list[str] = []
        self.pusher: Pusher | None = None
        self.meta_value: dict[str, str] = {}  # metadata of race/meta as the writers know it
        self.commits_seen = 0

    # -- set-up ----------------------------------------------------------------------------------

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "wogit", "init", "--data", str(self.data)], check=True, cwd=ROOT,
                       capture_output=True)
        for i in range(self.args.servers):
            self.servers.append(Server(self.data, self.work / f"server{i}.log"))
        if self.args.workers:
            self.servers.append(Server(self.data, self.work / "workers.log", "--workers", str(self.args.workers)))
        self.urls = [s.url for s in self.servers]
        self.pusher = Pusher(self.work / "pusher.git", self.data)
        self.config = b"race: config\n"
        self.upload(self.urls[0], "config", self.config)
        # The tag racers' maps, each in use by a tag of its own (so gc never sweeps them).
        self.maps = [f"racer {i} map\n".encode() * 64 for i in range(self.args.racers + 1)]
        for i, data in enumerate(self.maps):
            self.upload(self.urls[i % len(self.urls)], "map", data)
            self.put_tag(self.urls[0], f"race/keep/k{i}", data, self.config, expect=201)
        self.put_tag(self.urls[0], "race/meta/v1", self.maps[0], self.config, expect=201)
        self.put_tag(self.urls[0], "race/push/v1", self.maps[0], self.config, expect=201)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- HTTP ------------------------------------------------------------------------------------

    def url(self, i: int) -> str:
        return self.urls[i % len(self.urls)]

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        reply = session().request(method, url, timeout=120, **kwargs)
        self.figures.requests += 1
        if reply.status_code == 503:
            self.figures.unavailable += 1
        elif reply.status_code >= 500:
            raise AssertionError(f"{method} {url}: {reply.status_code} {reply.text[:300]}")
        if reply.status_code >= 400 and (reply.headers.get("Content-Type") != "application/json"
                                         or set(reply.json()) != {"msg"}):
            raise AssertionError(f"{method} {url}: {reply.status_code} without a JSON msg: {reply.text[:300]}")
        return reply

    def upload(self, url: str, kind: str, data: bytes, announce: bool = False) -> requests.Response:
        """PUT the bytes; ``announce``: with their digest, which a stored upload answers unread."""
        header = "Wo-Map-Digest" if kind == "map" else "Wo-Config-Digest"
        reply = self.request("PUT", url + ("/blobs/upload" if kind == "map" else "/configs/upload"), data=data,
                             headers={header: digest(data)} if announce else {})
        if reply.status_code in (201, 409) and reply.headers.get(header) != digest(data):
            raise AssertionError(f"upload answered {reply.status_code} with {header} {reply.headers.get(header)}")
        return reply

    def put_tag(self, url: str, path: str, map_data: bytes, config: bytes, expect: int | None = None):
        reply = self.request("PUT", f"{url}/{path}", json={"map_digest": digest(map_data),
                                                           "config_digest": digest(config)})
        if expect is not None and reply.status_code != expect:
            raise AssertionError(f"PUT {path}: {reply.status_code} {reply.text}")
        return reply

    def set_metadata(self, url: str, path: str, items: dict[str, str], writer: str) -> Write | None:
        sent = time.monotonic()
        body = " ".join(f"{k}={v}" for k, v in items.items())
        reply = self.request("PUT", f"{url}/{path}/metadata", data=body.encode(),
                             headers={"Content-Type": "text/plain"})
        if reply.status_code == 503:
            return None
        if reply.status_code != 200 or reply.json()["set"] != sorted(items):
            raise AssertionError(f"PUT {path}/metadata {body}: {reply.status_code} {reply.text}")
        return [Write(k, v, sent, time.monotonic(), writer) for k, v in items.items()]

    def delete_metadata(self, url: str, path: str, key: str, writer: str) -> list[Write]:
        sent = time.monotonic()
        reply = self.request("DELETE", f"{url}/{path}/metadata/{key}")
        if reply.status_code == 503:
            return []
        if reply.status_code != 200 or reply.json() != {"deleted": key}:
            raise AssertionError(f"DELETE {path}/metadata/{key}: {reply.status_code} {reply.text}")
        return [Write(key, None, sent, time.monotonic(), writer)]

    def target(self, round_: int) -> str:
        """Where a push goes: the data directory itself, or a server's /_git, in turn."""
        return str(self.data) if round_ % 2 else self.url(round_ // 2) + "/_git"

    def spread(self, seconds: float) -> None:
        """This round's HTTP racers start together at a random moment within ``seconds`` (a push's
        time): before, during or after the push's ref update, each a few ms apart."""
        self.offset = self.rng.uniform(0, seconds)

    def later(self, spread: float | None = None):
        """A racer's pause: at this round's offset, give or take a little (``spread``: anywhere in it)."""
        pause = self.rng.uniform(0, spread) if spread is not None else self.offset + self.rng.uniform(0, 0.03)
        return lambda: time.sleep(pause)

    # -- checks ----------------------------------------------------------------------------------

    def refs(self, prefix: str = "refs/") -> dict[str, str]:
        out = git(self.data, "for-each-ref", "--format=%(refname) %(objectname)", prefix).stdout.decode()
        return dict(line.split(" ") for line in out.splitlines())

    def check_repository(self, kind: str, round_: int) -> None:
        strict = git(self.data, "fsck", "--strict", "--no-dangling", "--no-progress", check=False)
        problems = [line for line in (strict.stdout + strict.stderr).decode().splitlines()
                    if line.strip() and not line.startswith("notice:")]
        if strict.returncode != 0 or problems:
            self.figures.fsck_failures += 1
            self.figures.violation(kind, round_, f"git fsck --strict: {problems[:5]}")
        every = self.args.wogit_fsck_every
        if round_ % every == every - 1 or round_ == self.args.rounds - 1:
            result = subprocess.run([sys.executable, "-m", "wogit", "fsck", "--data", str(self.data), "--json"],
                                    capture_output=True, text=True, cwd=ROOT)
            if result.returncode != 0:
                self.figures.fsck_failures += 1
                self.figures.violation(kind, round_, f"wogit fsck: {result.stdout[-1500:]}{result.stderr[-500:]}")
        leftovers = [p.name for p in (self.data / "objects").glob("tmp_obj_*")]
        if leftovers:
            self.figures.violation(kind, round_, f"temporary object files left behind: {leftovers[:5]}")

    def check_tag(self, kind: str, round_: int, path: str, commit: str | None, map_data: bytes, config: bytes):
        """The tag's ref is ``commit`` (None: any), naming this pair, with its blobs stored."""
        ref = f"refs/wo/{path}"
        found = self.refs(ref).get(ref)
        if found is None or (commit is not None and found != commit):
            return self.figures.violation(kind, round_, f"{ref} is {found}, not the winner's {commit}")
        message = git(self.data, "log", "-1", "--format=%B", found).stdout.decode()
        expected = f"map_digest: {digest(map_data)}\nconfig_digest: {digest(config)}"
        if expected not in message:
            self.figures.violation(kind, round_, f"{ref} names {message!r}, not the winner's pair")
        for name, data in (("map", map_data), ("config", config)):
            oid = git(self.data, "rev-parse", f"{found}:{name}").stdout.decode().strip()
            if oid != git_id("blob", data):
                self.figures.violation(kind, round_, f"{ref}:{name} is {oid}, not the winner's")
        reply = self.request("GET", f"{self.url(self.rng.randrange(9))}/{path}")
        if reply.status_code != 200 or reply.headers.get("Wo-Map-Digest") != digest(map_data):
            self.figures.violation(kind, round_, f"GET {path}: {reply.status_code} {reply.headers.get('Wo-Map-Digest')}")

    def check_every_tag(self, kind: str, round_: int) -> None:
        """Every tag's map and config exist, and their digests are indexed (no orphaned tag): one
        git for-each-ref and one git cat-file for all of them."""
        refs = self.refs()
        out = git(self.data, "for-each-ref", "--format=%(refname)%00%(objectname)%00%(contents)%01",
                  "refs/wo/").stdout.decode()
        tags = {}
        for record in out.split("\x01")[:-1]:
            ref, commit, message = record.lstrip("\n").split("\x00", 2)
            parts = ref.split("/")
            if len(parts) == 5 and not parts[2].startswith("_"):
                tags[ref] = (commit, dict(re.findall(r"^(map|config)_digest: sha256:([0-9a-f]{64})$", message, re.M)))
        paths = [f"{commit}:{name}" for commit, _ in tags.values() for name in ("map", "config")]
        found = git(self.data, "cat-file", "--batch-check=%(objecttype)", input="".join(p + "\n" for p in paths).encode())
        kinds = dict(zip(paths, found.stdout.decode().splitlines()))
        for ref, (commit, fields) in sorted(tags.items()):
            broken = []
            for name in ("map", "config"):
                index = f"refs/wo/_{name}s/sha256/{fields.get(name)}"
                if kinds.get(f"{commit}:{name}") != "blob":
                    broken.append(f"its {name} object is missing ({kinds.get(f'{commit}:{name}')})")
                elif index not in refs:
                    broken.append(f"{index} is missing")
            if broken:
                self.figures.orphaned_tags += 1
                self.figures.violation(kind, round_, f"orphaned tag {ref}: {', '.join(broken)}")

    def check_metadata(self, kind: str, round_: int, path: str, writes: list[Write], pushed: list[dict],
                       known: dict[str, str], before: str | None, records: list[str] = ()) -> None:
        """No lost update on ``path``'s metadata: see the module's docstring."""
        reply = self.request("GET", f"{self.url(round_)}/{path}/metadata")
        got = dict(line.split("=", 1) for line in reply.text.splitlines())
        by_key: dict[str, list[Write]] = {}
        for w in writes:
            by_key.setdefault(w.key, []).append(w)
        for key, ws in by_key.items():
            # the values no other acknowledged write followed (sent after it was answered)
            latest = [w for w in ws if not any(o.sent > w.answered for o in ws)]
            if got.get(key) not in {w.value for w in latest}:
                self.figures.lost_updates += 1
                self.figures.violation(kind, round_, f"{path} {key}={got.get(key)}, expected one of "
                                                     f"{sorted(str(w.value) for w in latest)}")
            known[key] = got.get(key)
            if len({w.writer for w in ws}) > 1:
                self.figures.shared_writes += len(ws)
        for key, value in known.items():
            if key not in by_key and got.get(key) != value:
                self.figures.lost_updates += 1
                self.figures.violation(kind, round_, f"{path} {key}={got.get(key)}, untouched since {value}")
        for key in set(got) - set(known):
            self.figures.violation(kind, round_, f"{path} has {key}={got[key]} that nobody wrote")
        known.update({k: v for k, v in got.items()})
        for k in [k for k, v in known.items() if v is None]:
            del known[k]
        # The history since the round began: linear, one commit per acknowledged change, each there.
        ref = f"refs/wo/_metadata/{path}"
        span = f"{before}..{ref}" if before else ref
        chain = [line.split() for line in git(self.data, "rev-list", "--parents", span).stdout.decode().splitlines()]
        if any(len(c) != 2 for c in chain[:-1]) or (chain and len(chain[-1]) != (2 if before else 1)):
            self.figures.violation(kind, round_, f"{ref}: history not linear: {chain[:3]}")
        messages = "\n" + git(self.data, "log", "--format=%B%x00", span).stdout.decode()
        changes = {(w.writer, w.sent) for w in writes if w.writer != "push"}
        expected = len(changes) + len(pushed) + len(records)  # records: tag deletions, in the same history
        for record in records:
            if "\n" + record not in messages:
                self.figures.lost_updates += 1
                self.figures.violation(kind, round_, f"{ref}: no commit records the acknowledged {record.strip()}")
        if len(chain) != expected:
            self.figures.lost_updates += abs(len(chain) - expected)
            self.figures.violation(kind, round_, f"{ref}: {len(chain)} commits this round for {expected} changes")
        for w in writes:
            line = f"{w.key}={w.value}\n" if w.value is not None else f"delete {w.key}\n"
            if "\n" + line not in messages:
                self.figures.lost_updates += 1
                self.figures.violation(kind, round_, f"{ref}: no commit of the acknowledged {line.strip()}")
        self.figures.metadata_writes += len(writes)

    # -- the rounds ------------------------------------------------------------------------------

    def tag_round(self, round_: int) -> None:
        path = f"race/tag/t{round_}"
        commit = self.pusher.tag_commit(path, self.maps[-1], self.config)
        self.spread(1.3 * self.pusher.typical())
        racers = [lambda i=i, pause=self.later(): (pause(), self.put_tag(self.url(i), path, self.maps[i],
                                                                               self.config))[1]
                  for i in range(self.args.racers)]
        *replies, flags = race(*racers, lambda: self.pusher.push(self.target(round_), [f"{commit}:refs/wo/{path}"]))
        self.settle("tag", round_, path, replies, flags, commit, [(m, self.config) for m in self.maps])

    def settle(self, kind, round_, path, replies, flags, commit, pairs) -> None:
        """One creator of the tag ``path`` among HTTP ``replies`` and the push (``flags``)."""
        for r in [*replies, flags]:
            if isinstance(r, Exception):
                return self.figures.violation(kind, round_, f"a racer failed: {r!r}")
        statuses = [r.status_code for r in replies]
        pushed = flags[f"refs/wo/{path}"]
        winners = [i for i, s in enumerate(statuses) if s == 201] + ([len(replies)] if pushed == "*" else [])
        self.figures.pushes["ok" if pushed == "*" else "rejected"] += 1
        bad = [s for s in statuses if s not in (201, 409)] + ([pushed] if pushed not in "*!" else [])
        if len(winners) != 1 or bad:
            return self.figures.violation(kind, round_, f"creators {winners}, answers {statuses}, push {pushed!r}")
        self.figures.winners[kind] += 1
        self.figures.push_wins[kind] += pushed == "*"
        self.figures.conflicts[kind] += statuses.count(409) + (pushed == "!")
        (winner,) = winners
        self.check_tag(kind, round_, path, commit if pushed == "*" else None, *pairs[winner])

    def metadata_round(self, round_: int) -> None:
        path, ref = "race/meta", "refs/wo/_metadata/race/meta"
        before = self.refs(ref).get(ref)
        writes: list[Write] = []
        pushed: list[dict] = []
        lock = threading.Lock()

        def writer(i: int):
            mine = []
            for n in range(self.args.writes):
                items = {f"own-{i}": f"{round_}.{n}"}
                if n % 2 == 0:
                    items["shared"] = f"w{i}.{round_}.{n}"
                if n == 1:
                    items[f"gone-{i}"] = f"{round_}"
                mine += self.set_metadata(self.url(i + n), path, items, f"w{i}") or []
            mine += self.delete_metadata(self.url(i), path, f"gone-{i}", f"w{i}")
            with lock:
                writes.extend(mine)

        doomed = f"{path}/d{round_}"
        self.put_tag(self.url(round_), doomed, self.maps[0], self.config, expect=201)

        def deleter():
            pause = self.later(0.3)
            pause()
            reply = self.request("DELETE", f"{self.url(round_ + 1)}/{doomed}")
            if reply.status_code != 200 or reply.json()["tag"] != f"d{round_}":
                raise AssertionError(f"DELETE {doomed}: {reply.status_code} {reply.text}")
            deleted.append(doomed)

        deleted: list[str] = []

        def push():
            for attempt in range(3):
                items = {"pushed": f"{round_}.{attempt}", "shared": f"push.{round_}.{attempt}"}
                commit, _ = self.pusher.metadata_commit(ref, items)
                sent = time.monotonic()
                flags = self.pusher.push(self.target(round_ + attempt), [f"{commit}:{ref}"])
                if flags[ref] in " *":
                    with lock:
                        writes.extend(Write(k, v, sent, time.monotonic(), "push") for k, v in items.items())
                    pushed.append(items)
                    self.figures.pushes["ok"] += 1
                else:
                    self.figures.pushes["rejected"] += 1
                    self.figures.conflicts["metadata"] += 1

        results = race(*[lambda i=i: writer(i) for i in range(self.args.racers)], push, deleter)
        for r in results:
            if isinstance(r, Exception):
                return self.figures.violation("metadata", round_, f"a writer failed: {r!r}")
        if f"refs/wo/{doomed}" in self.refs(f"refs/wo/{doomed}"):
            self.figures.violation("metadata", round_, f"{doomed} was deleted (200) but is there")
        self.check_metadata("metadata", round_, path, writes, pushed, self.meta_value, before,
                            [f"delete-tag d{round_}\n" for _ in deleted])

    def upload_round(self, round_: int) -> None:
        kind = "map" if round_ % 2 else "config"
        data = f"race {round_}: the same {kind} uploaded by everyone\n".encode() * (1 + round_ % 50) * 40
        ref = f"refs/wo/_{kind}s/sha256/{sha256_hex(data)}"
        self.pusher.blob(data)
        tree = self.pusher.tree({kind: git_id("blob", data)})
        self.spread(1.3 * self.pusher.typical())
        racers = [lambda i=i, pause=self.later(): (pause(), self.upload(self.url(i), kind, data))[1]
                  for i in range(self.args.racers)]
        *replies, flags = race(*racers, lambda: self.pusher.push(self.target(round_), [f"{tree}:{ref}"]))
        for r in [*replies, flags]:
            if isinstance(r, Exception):
                return self.figures.violation("upload", round_, f"a racer failed: {r!r}")
        statuses = [r.status_code for r in replies]
        creators = statuses.count(201) + (flags[ref] == "*")
        self.figures.pushes["ok" if flags[ref] == "*" else "rejected"] += 1
        if creators != 1 or set(statuses) - {201, 409} or flags[ref] not in "*!=":
            return self.figures.violation("upload", round_, f"answers {statuses}, push {flags[ref]!r}")
        self.figures.winners["upload"] += 1
        self.figures.push_wins["upload"] += flags[ref] == "*"
        self.figures.conflicts["upload"] += statuses.count(409) + (flags[ref] != "*")
        matching = {r: o for r, o in self.refs().items() if r.endswith(sha256_hex(data))}
        if matching != {ref: index_tree(kind, data)}:
            self.figures.violation("upload", round_, f"index refs {matching}")
        stored = git(self.data, "cat-file", "blob", git_id("blob", data), check=False).stdout
        if stored != data:
            self.figures.violation("upload", round_, f"the stored blob has {len(stored)} bytes, not {len(data)}")

    def gc_round(self, round_: int) -> None:
        n = max(4, self.args.racers)
        maps = [f"gc {round_} map {i}\n".encode() * 30 for i in range(n)]
        configs = [f"gc{round_}: {i}\n".encode() for i in range(n)]
        for i in range(n):
            self.upload(self.url(i), "map", maps[i])
            self.upload(self.url(i + 1), "config", configs[i])
        self.age_loose_objects()  # nothing is in flight: every object looks older than the grace
        acknowledged: list[tuple[str, bytes]] = []
        tags: dict[str, tuple[bytes, bytes]] = {}
        spread = 1.5 * self.gc_seconds

        def tagger(i: int):
            path = f"race/gc/t{round_}-{i}"
            reply = self.put_tag(self.url(i), path, maps[i], configs[i])
            if reply.status_code == 201:
                tags[path] = (maps[i], configs[i])
            elif reply.status_code == 404:
                self.figures.gc_tags_refused += 1
            else:
                raise AssertionError(f"PUT {path}: {reply.status_code} {reply.text}")

        def uploader(i: int):
            kind, data = ("map", maps[i]) if i % 2 else ("config", configs[i])
            if self.upload(self.url(i), kind, data, announce=i % 4 < 2).status_code in (201, 409):
                acknowledged.append((kind, data))

        pushed_path = f"race/gc/p{round_}"
        pushed_commit = self.pusher.tag_commit(pushed_path, maps[0], configs[0])  # while its blobs are there

        def push():
            path, commit = pushed_path, pushed_commit
            if self.pusher.push(self.target(round_), [f"{commit}:refs/wo/{path}"])[f"refs/wo/{path}"] == "*":
                tags[path] = (maps[0], configs[0])
                self.figures.pushes["ok"] += 1
            else:
                self.figures.pushes["rejected"] += 1

        half = n // 2
        tasks = [lambda i=i, p=self.later(spread): (p(), tagger(i)) for i in range(half)]
        tasks += [lambda i=i, p=self.later(spread): (p(), uploader(i)) for i in range(half, n)]
        tasks += [lambda p=self.later(spread): (p(), push())]
        runs = self.figures.gc_runs
        done = threading.Event()
        collector = threading.Thread(target=self.collect, args=(done,))
        collector.start()
        results = race(*tasks)
        done.set()
        collector.join()
        for r in results:
            if isinstance(r, Exception):
                self.figures.violation("gc", round_, f"a racer failed: {r!r}")
        if self.figures.gc_runs == runs:
            self.figures.violation("gc", round_, "no gc ran during the round")
        for path, pair in tags.items():
            self.check_tag("gc", round_, path, None, *pair)
        refs = self.refs()
        for kind, data in acknowledged:
            ref = f"refs/wo/_{kind}s/sha256/{sha256_hex(data)}"
            if refs.get(ref) != index_tree(kind, data) or \
                    git(self.data, "cat-file", "-e", git_id("blob", data), check=False).returncode != 0:
                self.figures.lost_updates += 1
                self.figures.violation("gc", round_, f"the acknowledged upload {ref} was swept")
        self.check_every_tag("gc", round_)

    def collect(self, done: threading.Event) -> None:
        """`wogit gc` again and again until ``done``."""
        while True:
            self.run_gc()
            if done.is_set():
                return

    gc_seconds = 1.0

    def run_gc(self) -> None:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "wogit", "gc", "--data", str(self.data), "--grace", "60s",
                                 "--json"], capture_output=True, text=True, cwd=ROOT)
        self.gc_seconds = time.monotonic() - started
        self.figures.gc_runs += 1
        if result.returncode != 0:
            self.figures.violation("gc", -1, f"wogit gc exited {result.returncode}: {result.stderr[-800:]}")
            return
        self.figures.gc_swept += len(json.loads(result.stdout)["swept"])

    def age_loose_objects(self) -> None:
        then = time.time() - 2 * HOUR
        for fan in (self.data / "objects").iterdir():
            if len(fan.name) == 2 and fan.is_dir():
                for obj in fan.iterdir():
                    os.utime(obj, (then, then))

    def push_round(self, round_: int) -> None:
        path, ref = f"race/push/t{round_}", "refs/wo/_metadata/race/push"
        before = self.refs(ref).get(ref)
        atomic = round_ % 2 == 0
        tag_commit = self.pusher.tag_commit(path, self.maps[-1], self.config)
        items = {"pushed": str(round_), "shared": f"push.{round_}"}
        meta_commit, _ = self.pusher.metadata_commit(ref, items)
        writes: list[Write] = []
        self.spread(1.3 * self.pusher.typical())
        half = max(1, self.args.racers // 2)

        def meta(i: int):
            mine = []
            for n in range(max(1, self.args.writes // 2)):
                mine += self.set_metadata(self.url(i + n), "race/push",
                                          {f"own-{i}": f"{round_}.{n}", "shared": f"w{i}.{round_}.{n}"}, f"w{i}") or []
            writes.extend(mine)

        taggers = [lambda i=i, p=self.later(): (p(), self.put_tag(self.url(i), path, self.maps[i],
                                                                  self.config))[1] for i in range(half)]
        writers = [lambda i=i, p=self.later(): (p(), meta(i)) for i in range(half, self.args.racers)]
        sent = time.monotonic()
        results = race(*taggers, *writers, lambda: self.pusher.push(
            self.target(round_), [f"{tag_commit}:refs/wo/{path}", f"{meta_commit}:{ref}"], atomic=atomic))
        flags = results[-1]
        for r in results:
            if isinstance(r, Exception):
                return self.figures.violation("push", round_, f"a racer failed: {r!r}")
        pushed = []
        if flags[ref] in " *":
            writes.extend(Write(k, v, sent, time.monotonic(), "push") for k, v in items.items())
            pushed.append(items)
        if atomic and (flags[ref] in " *") != (flags[f"refs/wo/{path}"] == "*"):
            self.figures.violation("push", round_, f"an atomic push applied part of itself: {flags}")
        self.settle("push", round_, path, results[:half], flags, tag_commit,
                    [(m, self.config) for m in self.maps[:half]] + [(self.maps[-1], self.config)])
        self.check_metadata("push", round_, "race/push", writes, pushed, self.push_value, before)

    push_value: dict[str, str] = {}

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        rounds = {"tag": self.tag_round, "metadata": self.metadata_round, "upload": self.upload_round,
                  "gc": self.gc_round, "push": self.push_round}
        self.push_value = {}
        kinds = self.args.kinds.split(",")
        for round_ in range(self.args.rounds):
            kind = kinds[round_ % len(kinds)]
            started = time.monotonic()
            packer = PackRefs(self.data) if self.args.pack_refs and round_ % 3 == 2 else None
            try:
                rounds[kind](round_)
            except AssertionError as exc:
                self.figures.violation(kind, round_, str(exc))
            finally:
                if packer is not None:
                    self.figures.pack_refs += packer.finish()
            self.figures.seconds[kind] += time.monotonic() - started
            self.figures.rounds[kind] += 1
            self.check_repository(kind, round_)
            if self.args.progress and (round_ + 1) % 25 == 0:
                print(f"races: {round_ + 1}/{self.args.rounds} rounds, "
                      f"{len(self.figures.violations)} violations", file=sys.stderr, flush=True)
        self.check_every_tag("end", self.args.rounds)
        for server in self.servers:
            log = server.log.read_text()
            if "Traceback" in log:
                self.figures.violation("end", self.args.rounds, f"a traceback in {server.log.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=250, help="rounds in all, the kinds in turn (default 250)")
    parser.add_argument("--racers", type=int, default=8, help="HTTP racers in each round (default 8)")
    parser.add_argument("--writes", type=int, default=4, help="metadata writes by each racer in a round (default 4)")
    parser.add_argument("--servers", type=int, default=3, help="separate `wogit serve` processes (default 3)")
    parser.add_argument("--workers", type=int, default=2,
                        help="one more `wogit serve --workers N` (default 2; 0: none)")
    parser.add_argument("--short", action="store_true", help="the CI version: 10 rounds, 4 racers, 2 servers")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"the kinds of round, in turn (default {','.join(KINDS)})")
    parser.add_argument("--no-pack-refs", dest="pack_refs", action="store_false",
                        help="no `git pack-refs --all` loop beside every third round")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", help="write the figures as JSON to this file")
    parser.add_argument("--keep", help="keep the data directory and logs in this directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if set(args.kinds.split(",")) - set(KINDS):
        parser.error(f"--kinds: choose among {', '.join(KINDS)}")
    if args.short:
        args.rounds, args.racers, args.writes, args.servers = 10, 4, 3, 2
    args.wogit_fsck_every = 5 if args.short else 25  # its rules' check runs git for each ref: costly
    args.progress = not args.short
    if args.servers + (args.workers > 0) < 1 or args.racers < 2 or args.writes < 2:
        parser.error("at least one server, two racers and two writes")
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        parser.error(f"--keep {args.keep}: not empty (a run needs a fresh data directory)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wogit-races-"))
    work.mkdir(parents=True, exist_ok=True)
    races = Races(args, work)
    started = time.monotonic()
    try:
        races.start()
        races.run()
    finally:
        races.stop()
    seconds = time.monotonic() - started
    f = races.figures
    figures = {
        "servers": args.servers, "workers": args.workers, "racers": args.racers, "rounds": dict(f.rounds),
        "winners": dict(f.winners), "push_wins": dict(f.push_wins), "conflicts": dict(f.conflicts),
        "requests": f.requests, "pushes": dict(f.pushes), "metadata_writes_checked": f.metadata_writes,
        "shared_key_writes": f.shared_writes, "gc_runs": f.gc_runs, "gc_swept": f.gc_swept,
        "gc_tags_refused": f.gc_tags_refused, "pack_refs_runs": f.pack_refs,
        "push_rejections": dict(races.pusher.rejections) if races.pusher else {},
        "seconds_by_kind": {k: round(v, 1) for k, v in f.seconds.items()}, "unavailable_503": f.unavailable, "lost_updates": f.lost_updates,
        "orphaned_tags": f.orphaned_tags, "fsck_failures": f.fsck_failures, "violations": len(f.violations),
        "violation_list": f.violations[:50], "seconds": round(seconds, 1),
    }
    print(f"races: {args.servers} servers + {'one with --workers %d' % args.workers if args.workers else 'no workers'},"
          f" {args.racers} racers, {sum(f.rounds.values())} rounds in {seconds:.1f} s")
    for kind in KINDS:
        print(f"  {kind:9} rounds {f.rounds[kind]:4}  winners {f.winners[kind]:4} (by push {f.push_wins[kind]:3})"
              f"  conflicts {f.conflicts[kind]:5}  {f.seconds[kind]:6.1f} s")
    print(f"  requests {f.requests}, pushes {dict(f.pushes)}, metadata writes checked {f.metadata_writes} "
          f"({f.shared_writes} on shared keys), gc runs {f.gc_runs} (swept {f.gc_swept}, tags refused "
          f"{f.gc_tags_refused}), git pack-refs runs {f.pack_refs}, 503s {f.unavailable}")
    if races.pusher:
        print(f"  pushes refused: {dict(races.pusher.rejections)}")
    print(f"  lost updates {f.lost_updates}, orphaned tags {f.orphaned_tags}, fsck failures {f.fsck_failures}, "
          f"violations {len(f.violations)}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if f.violations else 0


if __name__ == "__main__":
    sys.exit(main())
