"""Shared fixtures: real `wogit serve` processes on 127.0.0.1, real git, real files."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"  # the project's read-only inputs, beside a checkout (not in a clone)
FIELD_CASES = ROOT / "tests" / "data" / "field-cases.json"  # a copy of shared/cases/field-cases.json
MAPS = ROOT / "examples" / "maps"
TEST_MAP = MAPS / "test.osm.pbf"
TEST_CONFIG = MAPS / "test.yaml"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    """The git id of a blob of ``data`` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def index_tree_id(kind: str, data: bytes) -> str:
    """The git id of the digest index tree of ``data`` uploaded as ``kind``: {kind: blob}."""
    body = b"100644 " + kind.encode() + b"\0" + bytes.fromhex(git_blob_id(data))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def run_harness(name: str, output, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``reliability/<name>.py --short --output OUTPUT *args`` from the checkout's top:
    the finished process and the figures it wrote (the harness's own JSON)."""
    import json
    run = subprocess.run([sys.executable, f"reliability/{name}.py", "--short", "--output", str(output), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert output.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(output.read_text())


def git(git_dir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, check=check)


def refs(git_dir) -> dict[str, str]:
    """Every ref of a repository: name -> object id."""
    out = git(git_dir, "for-each-ref", "--format=%(refname) %(objectname)").stdout
    return dict(line.split(" ") for line in out.splitlines())


def fsck(git_dir) -> None:
    result = git(git_dir, "fsck", "--strict", "--no-dangling", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stderr.lower() and "warning" not in result.stderr.lower(), result.stderr


class Server:
    """A `wogit serve` process on its own data directory and a free port."""

    started: list[Server] = []  # every one of this session: those a failed fixture left are stopped at its end

    def __init__(self, data: Path, *args: str, env: dict[str, str] | None = None):
        self.data = Path(data)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Server:
        # The server's log goes to a file: a pipe nobody reads would block it once full.
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.data.parent / f"{self.data.name}.{len(list(self.data.parent.glob(self.data.name + '.*.log')))}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wogit", "serve", "--data", str(self.data), "--port", "0", *self.args],
                stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=ROOT)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://[\d.]+:\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.log.read_text()}")
        self.url = match.group(1)
        Server.started.append(self)
        return self

    def log_text(self) -> str:
        return self.log.read_text()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    # -- the API, for tests that are not about the call itself ---------------

    def upload(self, kind: str, data: bytes) -> str:
        path = "/blobs/upload" if kind == "map" else "/configs/upload"
        reply = requests.put(self.url + path, data=data)
        assert reply.status_code in (201, 409), reply.text
        return reply.headers["Wo-Map-Digest" if kind == "map" else "Wo-Config-Digest"]

    def tag(self, path: str, map_digest: str, config_digest: str) -> requests.Response:
        return requests.put(f"{self.url}/{path}", json={"map_digest": map_digest, "config_digest": config_digest})

    def push(self, path: str, map_data: bytes = b"map bytes", config: bytes = b"a: 1\n") -> tuple[str, str]:
        """Upload a map and a config and tag them as ``path`` (repository/map/tag)."""
        m, c = self.upload("map", map_data), self.upload("config", config)
        reply = self.tag(path, m, c)
        assert reply.status_code == 201, reply.text
        return m, c


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session():
    """A fixture whose set-up failed after its server started never reaches its ``stop``."""
    yield
    for srv in Server.started:
        srv.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One registry shared by the tests of a session; use `unique` names in it."""
    srv = Server(tmp_path_factory.mktemp("shared") / "registry.git").start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()


@pytest.fixture
def fresh_server(tmp_path):
    """A factory of registries of this test's own, stopped at its end."""
    started: list[Server] = []

    def start(data: Path | None = None, *args: str, **kwargs) -> Server:
        srv = Server(data or tmp_path / f"registry{len(started)}.git", *args, **kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


_counter = itertools.count()


@pytest.fixture
def unique() -> str:
    """A repository name no other test uses."""
    return f"r{os.getpid()}-{next(_counter)}"


def raw_request(url: str, data: bytes, read_timeout: float = 10, shutdown_write: bool = False) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes (or times out)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(data)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + read_timeout
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def json_body_of(raw: bytes):
    import json

    head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)
