#!/usr/bin/env python3
"""Fuzzing: schemathesis against the registry's own ``GET /openapi.json``, with auth off and on.

    .venv/bin/python reliability/fuzz.py                  # the full run: >= 5,000 requests
    .venv/bin/python reliability/fuzz.py --short          # the test suite's: >= 500 requests, seconds
    .venv/bin/python reliability/fuzz.py --output fuzz.json --seed 7

Two real ``wogit serve`` processes on 127.0.0.1, each on a fresh data directory: one open (no
user file), one with a user file and an ``[access]`` table (users at every level, anonymous
clients reading ``public-*``). Both are seeded with maps, configs, tags and metadata, and the
fuzzer is given their names, digests and commit ids (mixed with generated values), so that it
reaches the 2xx paths, not only the 404s. schemathesis then runs every phase (examples,
coverage, fuzzing, stateful through the document's links) once per identity: anonymous on the
open server; admin, writer, deleter, reader and anonymous on the other.

Every answer is checked: schemathesis' own checks (no 5xx, status documented, content type,
headers and body against the document, Allow of a 405, ...), and three of this harness: every
4xx/5xx body is ``{"msg": "<text>"}`` as ``application/json``, no answer carries a traceback, and
the servers' logs hold none either. Exit status 0 only with no failure at all.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import requests

from wogit import names

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from benchlib import Process  # noqa: E402  (the benchmarks' server processes)

ROOT = Path(__file__).resolve().parent.parent

#: Who the fuzzer is on the server with users: name -> (password, what [access] grants).
USERS = {
    "alice": ("Alice-fuzz-pw-1", '{ "*" = "admin" }'),
    "bob": ("Bob-fuzz-pw-2", '{ "fz-*" = "write", "*" = "read" }'),
    "dora": ("Dora-fuzz-pw-3", '{ "fz-*" = "delete", "*" = "read" }'),
    "carol": ("Carol-fuzz-pw-4", '{ "*" = "read" }'),
}
ANONYMOUS = '{ "public-*" = "read" }'

#: What is seeded on both servers: repository -> map -> tags; and metadata per map.
SEED_TAGS = {
    "osm": {"helsinki": ["v1", "2026-12"], "test-area": ["v1"]},
    "fz-robots": {"lab": ["v1", "v2", "rc.1"]},
    "public-maps": {"city": ["v1"]},
}
SEED_METADATA = "license=ODbL-1.0 source=openstreetmap region=helsinki note=a=b"

ALL_PHASES = ("examples", "coverage", "fuzzing", "stateful")
#: The runs of each mode: (server "open" or "auth", identity, phases, examples per operation in a phase).
MODES = {
    "full": [("open", None, ALL_PHASES, 30), ("auth", "alice", ALL_PHASES, 30), ("auth", "bob", ALL_PHASES, 8),
             ("auth", "dora", ALL_PHASES, 8), ("auth", "carol", ALL_PHASES, 8), ("auth", None, ALL_PHASES, 8)],
    # Seconds: boundary values, wrong methods and links, through the gate as admin (~900 requests).
    "short": [("auth", "alice", ("coverage", "stateful"), 2)],
}


@dataclass
class Tally:
    """What one schemathesis run (one server, one identity) did."""

    label: str
    requests: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    by_operation: dict[str, collections.Counter] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (check, operation, title) -> sample
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, dict] = field(default_factory=dict)  # phase -> {"requests": n, "seconds": s}
    phase: str = ""
    slowest: tuple = (0.0, "")
    links: dict = field(default_factory=dict)
    checks: collections.Counter = field(default_factory=collections.Counter)  # check -> times it ran


DOCUMENT_BYTES = (ROOT / "wogit" / "openapi.json").read_bytes()
DOCUMENTED = [f"{method.upper()} {path}" for path, item in json.loads(DOCUMENT_BYTES)["paths"].items() for method in item]
UPLOAD_HEADERS = {"/blobs/upload": "Wo-Map-Digest", "/configs/upload": "Wo-Config-Digest"}
#: Checks that do not apply to an operation, and why.
NOT_APPLICABLE = [
    # git's requests are opaque bytes (application/x-git-*-request): no body violates their schema,
    # whatever schemathesis generates to "violate" it is just other bytes, which git answers itself.
    {"include-path-regex": "^/_git/git-", "checks": {"negative_data_rejection": {"enabled": False}}},
    # A valid Range that starts past the end of these bytes is answered 416 (documented): not a refusal.
    {"include-path-regex": r"^/(blobs|configs)/\{digest\}$", "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 416, 429, "5xx"]}}},
]

CURRENT: Tally | None = None  # the run the checks below count for


# -- the harness's own checks (registered with schemathesis, run on every answer) ----------------

def _register_checks() -> None:
    import schemathesis

    @schemathesis.check
    def wogit_counted(ctx, response, case):
        """Not a check: counts every answer, by operation and status."""
        if CURRENT is not None:
            CURRENT.requests += 1
            CURRENT.slowest = max(CURRENT.slowest, (response.elapsed, f"{case.method} {case.formatted_path}"))
            CURRENT.statuses[response.status_code] += 1
            CURRENT.phases.setdefault(CURRENT.phase, {"requests": 0, "seconds": 0.0})["requests"] += 1
            if case.method.upper() == case.operation.method.upper():  # not a probe with another method
                label = f"{case.method.upper()} {case.operation.path}"
                CURRENT.by_operation.setdefault(label, collections.Counter())[f"{response.status_code // 100}xx"] += 1
        return None

    @schemathesis.check
    def wogit_error_body(ctx, response, case):
        """Every 4xx and 5xx answer is application/json {"msg": "<text>"} (HEAD: the header only)."""
        if response.status_code < 400:
            return None
        media = response.headers.get("content-type", [""])[0]
        assert media == "application/json", f"a {response.status_code} answer of type {media!r}, not application/json"
        if case.method.upper() == "HEAD":
            assert response.content == b"", "a HEAD answer with a body"
            return None
        try:
            body = json.loads(response.content)
        except ValueError:
            raise AssertionError(f"a {response.status_code} answer whose body is not JSON: {response.content[:200]!r}")
        assert isinstance(body, dict) and set(body) == {"msg"} and isinstance(body["msg"], str) and body["msg"], \
            f'a {response.status_code} answer whose body is not {{"msg": "<text>"}}: {body!r}'
        return None

    @schemathesis.check
    def wogit_no_traceback(ctx, response, case):
        """No answer, whatever its status, shows a Python traceback."""
        text = response.content[:1 << 20]
        for sign in (b"Traceback (most recent call last)", b'File "/'):
            assert sign not in text, f"the answer shows a traceback: {text[:300]!r}"
        return None

    @schemathesis.hook
    def before_call(context, case, kwargs):
        """What a schema cannot say, made true of valid (positive) cases: an upload's announced
        digest is the digest of its body (else 400), and the ``last`` of ``_tags?sort=time`` is a
        ``<seconds>,<tag>`` token (the form of ``last`` depends on ``sort``; else 400)."""
        from schemathesis import GenerationMode
        from schemathesis.transport.requests import REQUESTS_TRANSPORT

        if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
            return
        query = case.query or {}
        if case.path == "/{repository}/{map}/_tags" and query.get("sort") == "time" and "last" in query:
            last = str(query["last"])
            token = re.fullmatch(r"[0-9]{1,12},(.*)", last)
            if not (token and names.is_tag(token.group(1))):
                query["last"] = f"{len(last)},{last if names.is_tag(last) else 'v1'}"
        name = UPLOAD_HEADERS.get(case.path)
        if name and case.headers and name in case.headers:
            data = REQUESTS_TRANSPORT.serialize_case(case).get("data") or b""
            data = data.encode("utf-8") if isinstance(data, str) else data
            case.headers[name] = "sha256:" + hashlib.sha256(data).hexdigest()

    # git's request bodies are bytes: sent as they are, like a map's.
    schemathesis.serializer.alias(["application/x-git-upload-pack-request",
                                   "application/x-git-receive-pack-request"], "application/octet-stream")


# -- servers ------------------------------------------------------------------------------------

class Server(Process):
    """``wogit serve`` on a data directory of its own (benchlib.Process: started, stopped by its PID)."""

    def __init__(self, workdir: Path, name: str, *args: str):
        self.repository = workdir / f"{name}.git"
        super().__init__([sys.executable, "-m", "wogit", "serve", "--data", str(self.repository), "--port", "0",
                          *args], name, workdir / f"{name}.log", r"on (http://[\d.]+:\d+)", None)

    def log_faults(self) -> list[str]:
        """Lines of the server's log that show a fault: a traceback or an unexpected failure."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "Traceback" in line or "unexpected failure" in line or " ERROR " in line]


def write_access(workdir: Path) -> Path:
    """A user file (bcrypt cost 4: fast logins) and the config granting each user its level."""
    lines = [f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n"
             for name, (password, _) in USERS.items()]
    (workdir / "users.htpasswd").write_text("".join(lines))
    access = "".join(f"{name} = {grant}\n" for name, (_, grant) in USERS.items())
    config = workdir / "wogit.toml"
    config.write_text(f'[auth]\nhtpasswd = "users.htpasswd"\n\n[access]\n{access}"*" = {ANONYMOUS}\n')
    return config


# -- seed data ----------------------------------------------------------------------------------

def seed(url: str, auth: tuple[str, str] | None) -> dict[str, list]:
    """Maps, configs, tags and metadata (again: the fuzzer deletes some), and the values the
    fuzzer is given to reach them."""
    session = requests.Session()
    session.auth = auth
    digests, commits = [], []

    def upload(path: str, data: bytes) -> str:
        reply = session.put(url + path, data=data)
        assert reply.status_code in (201, 409), (path, reply.status_code, reply.text)
        return reply.headers["Wo-Map-Digest" if "blobs" in path else "Wo-Config-Digest"]

    for repository, maps in SEED_TAGS.items():
        for map_name, tags in maps.items():
            for tag in tags:
                map_digest = upload("/blobs/upload", f"map {repository}/{map_name}/{tag}\n".encode() * 50)
                config_digest = upload("/configs/upload", f"name: {map_name}\nversion: {tag}\n".encode())
                digests += [map_digest, config_digest]
                reply = session.put(f"{url}/{repository}/{map_name}/{tag}",
                                    json={"map_digest": map_digest, "config_digest": config_digest})
                assert reply.status_code in (201, 409), (reply.status_code, reply.text)
            reply = session.put(f"{url}/{repository}/{map_name}/metadata", data=SEED_METADATA.encode())
            assert reply.status_code == 200, (reply.status_code, reply.text)
            history = session.get(f"{url}/{repository}/{map_name}/_history").json()["history"]
            commits += [change["commit"] for change in history[:2]]
    return {
        "repositories": list(SEED_TAGS),
        "maps": sorted({m for maps in SEED_TAGS.values() for m in maps}),
        "tags": sorted({t for maps in SEED_TAGS.values() for tags in maps.values() for t in tags}),
        "keys": [pair.split("=", 1)[0] for pair in SEED_METADATA.split()],
        "digests": sorted(set(digests)),
        "at": sorted(set(commits)) + ["2026-01-01", "2099-12-31T23:59:59Z"],
    }


# -- one schemathesis run -----------------------------------------------------------------------

def config_for(url: str, values: dict[str, list], auth: tuple[str, str] | None, phases: tuple[str, ...],
               max_examples: int, seed_value: int):
    from schemathesis.config import SchemathesisConfig

    project = {
        "base-url": url,
        "request-timeout": 30,
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
        "dictionaries": {},
        "phases": {name: {"enabled": name in phases} for name in ALL_PHASES},
        "operations": NOT_APPLICABLE,
    }
    data = {"seed": seed_value, "max-failures": 10000, "dictionaries": {}, "parameters": {}}
    where = {"repository": "repositories", "map": "maps", "tag_id": "tags", "key": "keys", "digest": "digests",
             "at": "at"}
    for parameter, name in where.items():
        data["dictionaries"][name] = {"values": values[name]}
        location = "query" if parameter == "at" else "path"
        data["parameters"][f"{location}.{parameter}"] = {"dictionary": name, "probability": 0.75}
    project.pop("dictionaries")
    if auth:
        project["auth"] = {"basic": {"username": auth[0], "password": auth[1]}}
    data.update(project)
    return SchemathesisConfig.from_dict(data)


def run_schemathesis(tally: Tally, url: str, values: dict[str, list], auth, phases: tuple[str, ...],
                     max_examples: int, seed_value: int) -> Tally:
    global CURRENT
    import schemathesis
    from schemathesis.engine import Status, events, from_schema

    config = config_for(url, values, auth, phases, max_examples, seed_value)
    served = requests.get(url + "/openapi.json", timeout=30)
    assert served.content == DOCUMENT_BYTES, "GET /openapi.json is not wogit/openapi.json"
    # Loaded from the answer (not from its URL, which schemathesis would leave out of the operations).
    schema = schemathesis.openapi.from_dict(served.json(), config=config)
    CURRENT = tally
    started = phase_started = time.monotonic()
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.PhaseStarted):
                tally.phase, phase_started = event.phase.name.value, time.monotonic()
                if event.payload is not None:  # the stateful phase: the links it follows
                    tally.links = {"documented": event.payload.transitions_total - event.payload.inferred_transitions,
                                   "inferred": event.payload.inferred_transitions,
                                   "selected": event.payload.transitions_selected}
            elif isinstance(event, events.PhaseFinished) and tally.phase in tally.phases:
                tally.phases[tally.phase]["seconds"] += round(time.monotonic() - phase_started, 1)
            if isinstance(event, events.ScenarioFinished):
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        tally.checks[check.name] += 1
                        if check.status != Status.FAILURE or check.failure_info is None:
                            continue
                        failure = check.failure_info.failure
                        key = (check.name, failure.operation or event.recorder.label, failure.title)
                        tally.failures.setdefault(key, {
                            "check": check.name, "operation": key[1], "title": failure.title,
                            "message": failure.message[:2000], "reproduce": check.failure_info.code_sample,
                            "count": 0})["count"] += 1
            elif isinstance(event, events.NonFatalError):
                tally.errors.append(f"{event.label}: {event.info.title}: {event.info.message}"[:2000])
            elif isinstance(event, events.FatalError):
                tally.errors.append(f"fatal: {event.exception!r}")
    finally:
        CURRENT = None
        tally.seconds = time.monotonic() - started
    return tally


# -- the whole run ------------------------------------------------------------------------------

def fsck(data: Path) -> str:
    result = subprocess.run(["git", "--git-dir", str(data), "fsck", "--strict", "--no-dangling"],
                            capture_output=True, text=True)
    said = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                     if "HEAD points to an unborn branch" not in line)  # a registry has no branches
    return said if result.returncode or said.strip() else ""


def run(mode: str, seed_value: int, workdir: Path) -> dict:
    _register_checks()
    started = time.monotonic()
    tallies: list[Tally] = []
    servers: dict[str, Server] = {}
    problems: list[str] = []
    try:
        for number, (which, who, phases, max_examples) in enumerate(MODES[mode]):
            if which not in servers:
                args = ("--config", str(write_access(workdir))) if which == "auth" else ()
                servers[which] = Server(workdir, which, *args)
            server = servers[which]
            label = "auth off" if which == "open" else f"auth on, {who or 'anonymous'}"
            admin = ("alice", USERS["alice"][0]) if which == "auth" else None
            values = seed(server.url, admin)
            auth = (who, USERS[who][0]) if who else None
            tally = run_schemathesis(Tally(label), server.url, values, auth, phases, max_examples, seed_value + number)
            tallies.append(tally)
            print(f"  {label}: {tally.requests} requests, {len(tally.failures)} failures, "
                  f"{len(tally.errors)} errors, {tally.seconds:.1f} s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    for server in servers.values():
        problems += [f"{server.log.name}: {line}" for line in server.log_faults()]
        if (damage := fsck(server.repository)):
            problems.append(f"git fsck --strict {server.repository.name}: {damage}")
    return report(tallies, problems, mode, seed_value, time.monotonic() - started)


def report(tallies: list[Tally], problems: list[str], mode: str, seed_value: int, seconds: float) -> dict:
    operations: dict[str, collections.Counter] = {}
    statuses: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    checks: collections.Counter = collections.Counter()
    failures = []
    for tally in tallies:
        statuses.update(tally.statuses)
        checks.update(tally.checks)
        for label, counts in tally.by_operation.items():
            operations.setdefault(label, collections.Counter()).update(counts)
        for sample in tally.failures.values():
            kinds[sample["check"]] += 1
            failures.append({"run": tally.label, **sample})
    errors = [f"{t.label}: {e}" for t in tallies for e in t.errors]
    return {
        "mode": mode, "seed": seed_value, "wall_seconds": round(seconds, 1),
        "requests": sum(t.requests for t in tallies),
        "operations_covered": len(operations),
        "operations_with_2xx": sum(1 for c in operations.values() if c["2xx"]),
        "operations_documented": len(DOCUMENTED),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "runs": [{"label": t.label, "requests": t.requests, "failures": len(t.failures), "errors": len(t.errors),
                  "seconds": round(t.seconds, 1), "phases": t.phases, "links": t.links,
                  "slowest": t.slowest} for t in tallies],
        "by_operation": {label: {str(k): v for k, v in sorted(c.items())} for label, c in sorted(operations.items())},
        "checks": dict(sorted(checks.items())),
        "failures_by_kind": dict(kinds),
        "failures": failures,
        "errors": errors,
        "server_problems": problems,
        "total_failures": len(failures) + len(errors) + len(problems),
    }


def summary(result: dict) -> str:
    lines = [f"fuzz ({result['mode']}, seed {result['seed']}): {result['requests']} requests, "
             f"{result['operations_covered']} of {result['operations_documented']} operations covered ({result['operations_with_2xx']} answered 2xx), "
             f"{result['wall_seconds']} s"]
    lines += [f"  {r['label']}: {r['requests']} requests, {r['failures']} failures, {r['errors']} errors, "
              f"{r['seconds']} s" for r in result["runs"]]
    lines.append("  statuses: " + ", ".join(f"{k}: {v}" for k, v in result["statuses"].items()))
    lines.append("  checks run: " + ", ".join(f"{k}: {v}" for k, v in result["checks"].items()))
    kinds = result["failures_by_kind"]
    lines.append("  failures by kind: " + (", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "none"))
    for failure in result["failures"]:
        lines.append(f"  FAIL [{failure['run']}] {failure['check']} {failure['operation']}: {failure['title']}")
        lines.append("      " + failure["message"].replace("\n", "\n      ")[:1500])
        lines.append("      " + failure["reproduce"].replace("\n", " ")[:1500])
    lines += [f"  ERROR {e}" for e in result["errors"]]
    lines += [f"  SERVER {p}" for p in result["server_problems"]]
    lines.append(f"  total failures: {result['total_failures']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliability/fuzz.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the test suite's run: >= 500 requests, seconds")
    parser.add_argument("--seed", type=int, default=1, help="schemathesis' seed (default 1; runs are deterministic)")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the servers' data and logs here (default: a temporary "
                                                     "directory, removed)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wogit-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run("short" if args.short else "full", args.seed, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(summary(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["total_failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
