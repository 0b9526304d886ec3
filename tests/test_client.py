"""The `wogit` client end to end: the CLI as a subprocess against real `wogit serve` processes.

Downloads are broken on purpose by a real TCP proxy (a thread between the client and the
server) that cuts or stalls the first map download after a number of body bytes and records
every request it forwards, so the tests can see the client's `Range` requests.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import ROOT, TEST_CONFIG, TEST_MAP, sha256
from htpasswd_tool import htpasswd

MAP_BYTES = TEST_MAP.read_bytes()
CONFIG_BYTES = TEST_CONFIG.read_bytes()
MAP_DIGEST = sha256(MAP_BYTES)
CONFIG_DIGEST = sha256(CONFIG_BYTES)
PASSWORD = "Sésame-ouvre-toi 42"
ALICE = (b"alice", PASSWORD.encode())  # requests would send a str password in latin-1


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty home directory: no user config, no netrc of the real user."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("WOGIT_") and key not in ("NETRC", "XDG_CONFIG_HOME")}
    return {**env, "HOME": str(home), **extra}


def wogit(home: Path, *args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m wogit ARGS` with standard input closed and output in pipes, as in a script."""
    return subprocess.run([sys.executable, "-m", "wogit", *args], capture_output=True, stdin=subprocess.DEVNULL,
                          text=True, env=env or environment(home), cwd=cwd or ROOT, timeout=60)


def as_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def push(home, registry: str, reference: str, *extra: str, map_file=TEST_MAP, config_file=TEST_CONFIG, env=None):
    return wogit(home, "push", reference, "--map", str(map_file), "--config", str(config_file),
                 "--registry", registry, *extra, env=env)


def pushed(reference: str, *, uploaded: bool, created: bool = True, metadata_set=()) -> dict:
    """What `push --json` prints for the test map and config."""
    where, tag = reference.rsplit(":", 1)
    repository, map = where.split("/")
    return {"repository": repository, "map": map, "tag": tag, "map_digest": MAP_DIGEST,
            "config_digest": CONFIG_DIGEST, "map_uploaded": uploaded, "config_uploaded": uploaded,
            "tag_created": created, "metadata_set": list(metadata_set), "metadata_ignored": []}


def pulled(reference: str, directory: Path, *, resumed: int = 0, retries: int = 0) -> dict:
    where, tag = reference.rsplit(":", 1)
    repository, map = where.split("/")
    return {"repository": repository, "map": map, "tag": tag, "directory": str(directory),
            "map_digest": MAP_DIGEST, "config_digest": CONFIG_DIGEST, "map_size": len(MAP_BYTES),
            "config_size": len(CONFIG_BYTES), "resumed_bytes": resumed, "retries": retries}


def assert_release(directory: Path, metadata: str) -> None:
    """The directory holds exactly the test map, config and this metadata."""
    assert sorted(p.name for p in directory.iterdir()) == ["config", "map", "metadata"]
    assert (directory / "map").read_bytes() == MAP_BYTES
    assert hashlib.sha256((directory / "map").read_bytes()).hexdigest() == MAP_DIGEST.removeprefix("sha256:")
    assert (directory / "config").read_bytes() == CONFIG_BYTES
    assert (directory / "metadata").read_text() == metadata


def access_log(srv, pattern: str) -> list[str]:
    """The access-log requests (method path status) of a server matching a regex."""
    lines = re.findall(r"wogit\.access INFO \S+ \S+ (\S+ \S+ \d+)", srv.log_text())
    return [line for line in lines if re.fullmatch(pattern, line)]


# -- push and pull ------------------------------------------------------------------------

def test_push_then_pull_gives_the_exact_files_and_a_second_push_uploads_nothing(fresh_server, home, tmp_path):
    srv = fresh_server()
    first = push(home, srv.url, "osm/test-area:v1", "--meta", "source=openstreetmap", "--meta", "license=ODbL-1.0",
                 "--json")
    assert as_json(first) == pushed("osm/test-area:v1", uploaded=True, metadata_set=["license", "source"])
    assert first.stderr == ""

    out = tmp_path / "out"
    pull = wogit(home, "pull", "osm/test-area:v1", "-o", str(out), "--registry", srv.url, "--json")
    assert as_json(pull) == pulled("osm/test-area:v1", out)
    assert_release(out, "license=ODbL-1.0\nsource=openstreetmap\n")

    again = push(home, srv.url, "osm/test-area:v1", "--json")
    assert as_json(again) == pushed("osm/test-area:v1", uploaded=False, created=False)
    assert access_log(srv, r"PUT /(blobs|configs)/upload \d+") == ["PUT /blobs/upload 201", "PUT /configs/upload 201"]
    assert access_log(srv, rf"HEAD /blobs/{MAP_DIGEST} \d+") == [f"HEAD /blobs/{MAP_DIGEST} 404",
                                                                 f"HEAD /blobs/{MAP_DIGEST} 200"]
    assert access_log(srv, r"PUT /osm/test-area/v1 \d+") == ["PUT /osm/test-area/v1 201", "PUT /osm/test-area/v1 409"]


def test_push_and_pull_report_in_text_and_pull_defaults_to_repo_map_tag(server, unique, home, tmp_path):
    result = push(home, server.url, f"{unique}/area:v1", "--meta", "k=v")
    assert result.returncode == 0, result.stderr
    uploaded = result.stdout.splitlines()
    assert uploaded[2:] == [f"tagged {unique}/area:v1", "metadata set: k"]
    assert uploaded[0] in (f"map {MAP_DIGEST} uploaded", f"map {MAP_DIGEST} already in the registry")
    again = push(home, server.url, f"{unique}/area:v1")
    assert again.stdout == (f"map {MAP_DIGEST} already in the registry\nconfig {CONFIG_DIGEST} already in the "
                            f"registry\nalready tagged {unique}/area:v1\n")

    pull = wogit(home, "pull", f"{unique}/area:v1", "--registry", server.url, cwd=tmp_path)
    directory = tmp_path / f"{unique}-area-v1"
    assert (pull.returncode, pull.stderr) == (0, "")
    assert pull.stdout == (f"pulled {unique}/area:v1 into {unique}-area-v1: map {len(MAP_BYTES)} bytes, "
                           f"config {len(CONFIG_BYTES)} bytes, digests verified\n")
    assert_release(directory, "k=v\n")
    # Pulled again: the files on disk have the digests, so nothing is downloaded.
    again = wogit(home, "pull", f"{unique}/area:v1", "--registry", server.url, "--json", cwd=tmp_path)
    assert as_json(again) == pulled(f"{unique}/area:v1", Path(f"{unique}-area-v1"),
                                    resumed=len(MAP_BYTES) + len(CONFIG_BYTES))
    assert_release(directory, "k=v\n")


def test_a_tag_that_exists_with_other_digests_is_a_conflict(server, unique, home, tmp_path):
    assert push(home, server.url, f"{unique}/area:v1").returncode == 0
    other = tmp_path / "other.pbf"
    other.write_bytes(MAP_BYTES + b"!")
    result = push(home, server.url, f"{unique}/area:v1", "--json", map_file=other)
    assert result.returncode == 5
    message = f"tag {unique}/area/v1 already exists; tags are immutable"
    assert result.stderr == f"wogit: {message}\n"
    assert json.loads(result.stdout) == {"error": message, "status": 409, "exit_code": 5}


# -- progress -----------------------------------------------------------------------------

def run_on_terminal(home: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI with standard error on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "wogit", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=terminal, env=environment(home), cwd=ROOT, text=True)
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    stdout = proc.stdout.read()
    return proc.wait(30), stdout, seen.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_and_none_in_a_pipe(server, unique, home, tmp_path):
    big = tmp_path / "big.pbf"  # a map of its own, so that this push uploads it
    big.write_bytes(MAP_BYTES * 3)
    code, _, terminal = run_on_terminal(home, "push", f"{unique}/area:v1", "--map", str(big),
                                        "--config", str(TEST_CONFIG), "--registry", server.url)
    assert code == 0
    assert "map: 100%|" in terminal and "B/s]" in terminal
    assert f"{len(MAP_BYTES) * 3 / 1024:.0f}k/{len(MAP_BYTES) * 3 / 1024:.0f}k" in terminal
    code, stdout, terminal = run_on_terminal(home, "pull", f"{unique}/area:v1", "-o", str(tmp_path / "a"),
                                             "--registry", server.url)
    assert code == 0
    assert stdout.startswith(f"pulled {unique}/area:v1 into ")
    assert "map: 100%|" in terminal and "B/s]" in terminal and "config: 100%|" in terminal
    size = f"{len(MAP_BYTES) * 3 / 1024:.0f}k"  # 402k: tqdm's binary units
    assert f"{size}/{size}" in terminal

    code, _, terminal = run_on_terminal(home, "pull", f"{unique}/area:v1", "-o", str(tmp_path / "b"),
                                        "--registry", server.url, "--quiet")
    assert (code, terminal) == (0, "")
    piped = wogit(home, "pull", f"{unique}/area:v1", "-o", str(tmp_path / "c"), "--registry", server.url)
    assert (piped.returncode, piped.stderr) == (0, "")
    assert (tmp_path / "c" / "map").read_bytes() == MAP_BYTES * 3
    quiet = wogit(home, "pull", f"{unique}/area:v1", "-o", str(tmp_path / "d"), "--registry", server.url, "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


# -- interrupted downloads ----------------------------------------------------------------

class Proxy:
    """A TCP proxy to a server on 127.0.0.1 that records what clients send, and breaks the answer
    to the first ``GET /blobs/...`` after ``limit`` body bytes: it closes the connection
    (``stall=False``) or stops forwarding and holds it open (``stall=True``)."""

    def __init__(self, port: int, limit: int | None = None, stall: bool = False):
        self.port, self.limit, self.stall = port, limit, stall
        self.armed = limit is not None
        self.sent: list[bytearray] = []  # what each connection's client sent, in order of connection
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()

    def requests(self) -> list[str]:
        """Every request head forwarded, in order: request line and headers, CRLF-separated."""
        return [head.decode() for sent in self.sent for head in bytes(sent).split(b"\r\n\r\n") if head]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            sent = bytearray()
            self.sent.append(sent)
            threading.Thread(target=self._serve, args=(client, sent), daemon=True).start()

    def _serve(self, client: socket.socket, sent: bytearray) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.port))
        broken = threading.Event()

        def forward_requests():
            while chunk := _recv(client):
                sent.extend(chunk)
                with self.lock:
                    if self.armed and b"GET /blobs/" in chunk:
                        self.armed = False
                        broken.set()
                upstream.sendall(chunk)
            _shutdown(upstream)

        threading.Thread(target=forward_requests, daemon=True).start()
        answer, forwarded = bytearray(), 0
        while chunk := _recv(upstream):
            if not broken.is_set():
                client.sendall(chunk)
                continue
            answer += chunk
            end = answer.find(b"\r\n\r\n")
            allowed = len(answer) if end < 0 else end + 4 + self.limit
            client.sendall(answer[forwarded:allowed])
            forwarded = min(len(answer), allowed)
            if end >= 0 and forwarded == allowed:
                break
        if self.stall:
            self.closing.wait(30)
        for sock in (client, upstream):
            _shutdown(sock)
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def blob_gets(proxy: Proxy, route: str = "blobs") -> list[str]:
    """The GET requests for maps (or configs) the proxy forwarded: request line and Range/If-Range."""
    found = []
    for head in proxy.requests():
        lines = head.split("\r\n")
        if lines[0].startswith(f"GET /{route}/"):
            found.append(" ".join([lines[0]] + sorted(line for line in lines[1:]
                                                      if line.lower().startswith(("range:", "if-range:")))))
    return found


@pytest.fixture
def tagged(server, unique, home) -> str:
    """The test map and config tagged in the shared registry: its reference."""
    reference = f"{unique}/area:v1"
    assert push(home, server.url, reference).returncode == 0
    return reference


def test_a_connection_cut_in_the_middle_of_the_map_is_resumed_with_a_range(server, tagged, home, tmp_path):
    proxy = Proxy(server.port, limit=50_000)
    try:
        out = tmp_path / "out"
        result = wogit(home, "pull", tagged, "-o", str(out), "--registry", proxy.url, "--json")
        assert as_json(result) == pulled(tagged, out, retries=1)
    finally:
        proxy.close()
    assert_release(out, "")
    assert blob_gets(proxy) == [f"GET /blobs/{MAP_DIGEST} HTTP/1.1",
                                f'GET /blobs/{MAP_DIGEST} HTTP/1.1 If-Range: "{MAP_DIGEST}" Range: bytes=50000-']
    assert blob_gets(proxy, "configs") == [f"GET /configs/{CONFIG_DIGEST} HTTP/1.1"]


def test_a_part_left_by_a_killed_pull_is_resumed_by_the_next(server, tagged, home, tmp_path):
    proxy = Proxy(server.port, limit=70_000, stall=True)
    out = tmp_path / "out"
    part = out / "map.part"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "wogit", "pull", tagged, "-o", str(out), "--registry",
                                 proxy.url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=environment(home), cwd=ROOT)
        deadline = time.monotonic() + 20
        while not (part.is_file() and part.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the stalled client has written all it will
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        have = part.stat().st_size
        assert 0 < have <= 70_000
        assert part.read_bytes() == MAP_BYTES[:have]
        assert sorted(p.name for p in out.iterdir()) == ["map.part"]

        result = wogit(home, "pull", tagged, "-o", str(out), "--registry", proxy.url, "--json")
        assert as_json(result) == pulled(tagged, out, resumed=have)
    finally:
        proxy.close()
    assert_release(out, "")
    assert blob_gets(proxy) == [f"GET /blobs/{MAP_DIGEST} HTTP/1.1",
                                f'GET /blobs/{MAP_DIGEST} HTTP/1.1 If-Range: "{MAP_DIGEST}" Range: bytes={have}-']


def test_a_part_that_is_not_a_prefix_of_the_map_is_a_digest_mismatch_and_is_removed(server, tagged, home, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "map.part").write_bytes(b"x" * 1000)
    result = wogit(home, "pull", tagged, "-o", str(out), "--registry", server.url, "--json")
    assert result.returncode == 6
    message = f"the downloaded map is not {MAP_DIGEST}; removed it, try again"
    assert result.stderr == f"wogit: {message}\n"
    assert json.loads(result.stdout) == {"error": message, "status": None, "exit_code": 6}
    assert list(out.iterdir()) == []
    assert wogit(home, "pull", tagged, "-o", str(out), "--registry", server.url).returncode == 0
    assert_release(out, "")


# -- errors and credentials ---------------------------------------------------------------

def test_an_unknown_tag_is_exit_3_with_the_servers_message(server, tagged, home):
    repository = tagged.split("/")[0]
    result = wogit(home, "pull", f"{repository}/area:nope", "--registry", server.url)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == f"wogit: tag {repository}/area/nope does not exist\n"
    expected = requests.get(f"{server.url}/{repository}/area/metadata/missing").json()["msg"]
    result = wogit(home, "meta", "get", f"{repository}/area", "missing", "--registry", server.url, "--json")
    assert (result.returncode, result.stderr) == (3, f"wogit: {expected}\n")
    assert json.loads(result.stdout) == {"error": expected, "status": 404, "exit_code": 3}


def test_connection_refused_is_exit_7(home):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = wogit(home, "ls", "--registry", f"http://127.0.0.1:{port}")
    assert (result.returncode, result.stdout) == (7, "")
    assert result.stderr == f"wogit: cannot reach http://127.0.0.1:{port}: Connection refused\n"


@pytest.mark.parametrize("args, code, message", [
    (["pull", "osm/area"], 2, "'osm/area' is not REPO/MAP:TAG"),
    (["pull", "OSM/area:v1"], 2, "'OSM/area' is not REPO/MAP (names: [a-z0-9]+([._-][a-z0-9]+)*, at most 64 characters)"),
    (["pull", "osm/area:metadata"], 2, "'metadata' is not a tag name ([A-Za-z0-9][A-Za-z0-9._-]{0,127}, not "
                                       "'metadata', no '..', not ending in '.' or '.lock')"),
    (["meta", "set", "osm/area", "novalue"], 2, "'novalue' is not KEY=VALUE"),
    (["meta", "set", "osm/area", "k=with space"], 2,
     "'k=with space' holds whitespace: keys and values cannot (it separates pairs)"),
    (["push", "osm/area:v1", "--map", "absent.pbf", "--config", str(TEST_CONFIG)], 1,
     "absent.pbf: No such file or directory"),  # before anything is sent
])
def test_mistakes_are_found_before_asking_the_registry(home, args, code, message):
    result = wogit(home, *args, "--registry", "http://127.0.0.1:9")  # nothing listens there
    assert (result.returncode, result.stdout, result.stderr) == (code, "", f"wogit: {message}\n")


def test_argparse_usage_errors_are_exit_2(home):
    result = wogit(home, "pull")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("wogit pull: error: the following arguments are required: REPO/MAP:TAG\n")
    for size in ("0", "1001", "x"):
        result = wogit(home, "tags", "osm/area", "--page-size", size)
        assert result.returncode == 2
        assert result.stderr.endswith(f"a page size is a whole number from 1 to 1000, not '{size}'\n")


def test_a_request_the_registry_refuses_as_malformed_is_exit_2(server, tagged, home):
    map_reference = tagged.split(":")[0]
    expected = requests.get(f"{server.url}/{map_reference}/metadata", params={"at": "yesterday"}).json()["msg"]
    result = wogit(home, "meta", "get", map_reference, "--at", "yesterday", "--registry", server.url)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"wogit: {expected}\n")


@pytest.mark.parametrize("variables, message", [
    ({"WOGIT_USER": "alice"}, "WOGIT_USER is set but WOGIT_PASSWORD is not: set both, or neither (to use the netrc file)"),
    ({"WOGIT_PASSWORD": "pw"}, "WOGIT_PASSWORD is set but WOGIT_USER is not: set both, or neither (to use the netrc file)"),
])
def test_half_the_credential_variables_is_a_usage_error(home, variables, message):
    result = wogit(home, "ls", "--registry", "http://127.0.0.1:9", env=environment(home, **variables))
    assert (result.returncode, result.stderr) == (2, f"wogit: {message}\n")


def test_a_netrc_that_is_not_a_file_is_a_usage_error(home, tmp_path):
    (tmp_path / "netrc.d").mkdir()
    result = wogit(home, "ls", "--registry", "http://127.0.0.1:9", env=environment(home, NETRC=str(tmp_path / "netrc.d")))
    assert (result.returncode, result.stderr) == (2, f"wogit: the netrc file {tmp_path / 'netrc.d'} is not a file\n")


@pytest.fixture
def auth_server(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    htpasswd("-c", "-B", "-C", "4", "-b", str(users), "alice", PASSWORD)
    srv = fresh_server(None, "--auth-file", str(users))
    reply = requests.put(srv.url + "/blobs/upload", data=MAP_BYTES, auth=ALICE)
    assert reply.status_code == 201
    return srv


def test_without_credentials_a_protected_registry_is_exit_4(auth_server, home):
    expected = requests.get(auth_server.url + "/osm/area/metadata").json()["msg"]
    result = wogit(home, "meta", "get", "osm/area", "--registry", auth_server.url)
    assert (result.returncode, result.stdout, result.stderr) == (4, "", f"wogit: {expected}\n")
    wrong = wogit(home, "meta", "get", "osm/area", "--registry", auth_server.url,
                  env=environment(home, WOGIT_USER="alice", WOGIT_PASSWORD="not-" + PASSWORD))
    refused = requests.get(auth_server.url + "/osm/area/metadata", auth=(b"alice", b"not-")).json()["msg"]
    assert (wrong.returncode, wrong.stderr) == (4, f"wogit: {refused}\n")
    assert PASSWORD not in wrong.stdout + wrong.stderr


def test_credentials_from_the_environment(auth_server, home, tmp_path):
    env = environment(home, WOGIT_USER="alice", WOGIT_PASSWORD=PASSWORD, WOGIT_REGISTRY=auth_server.url)
    result = wogit(home, "push", "osm/area:v1", "--map", str(TEST_MAP), "--config", str(TEST_CONFIG), "--json",
                   env=env)
    assert as_json(result) == {**pushed("osm/area:v1", uploaded=True), "map_uploaded": False}
    pull = wogit(home, "pull", "osm/area:v1", "-o", str(tmp_path / "out"), env=env)
    assert pull.returncode == 0, pull.stderr
    assert PASSWORD not in result.stdout + result.stderr + pull.stdout + pull.stderr
    assert_release(tmp_path / "out", "")
    in_url = auth_server.url.replace("http://", f"http://alice:{quote(PASSWORD, safe='')}@")
    by_url = wogit(home, "meta", "get", "osm/area", "--registry", in_url, "--json")
    assert as_json(by_url) == {"metadata": {}, "commit": None}
    wrong = wogit(home, "meta", "get", "osm/area", "--registry", in_url.replace("alice", "bob"))
    assert wrong.returncode == 4 and quote(PASSWORD, safe="") not in wrong.stderr and PASSWORD not in wrong.stderr


def test_credentials_from_a_netrc_file(auth_server, home, tmp_path):
    requests.put(auth_server.url + "/configs/upload", data=CONFIG_BYTES, auth=ALICE)
    assert requests.put(auth_server.url + "/osm/area/v1", auth=ALICE,
                        json={"map_digest": MAP_DIGEST, "config_digest": CONFIG_DIGEST}).status_code == 201
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\n  login alice\n  password {PASSWORD.replace(' ', chr(92) + ' ')}\n")
    netrc.chmod(0o600)
    by_variable = wogit(home, "meta", "set", "osm/area", "a=1", "--registry", auth_server.url, "--json",
                        env=environment(home, NETRC=str(netrc)))
    assert as_json(by_variable) == {"set": ["a"], "ignored": []}
    (home / ".netrc").write_text(netrc.read_text())
    (home / ".netrc").chmod(0o600)
    in_home = wogit(home, "meta", "get", "osm/area", "a", "--registry", auth_server.url)
    assert (in_home.returncode, in_home.stdout, in_home.stderr) == (0, "1\n", "")


def test_a_terminal_is_asked_for_credentials_after_a_401_without_echoing_the_password(auth_server, home):
    requests.put(auth_server.url + "/configs/upload", data=CONFIG_BYTES, auth=ALICE)
    requests.put(auth_server.url + "/osm/area/v1", auth=ALICE,
                 json={"map_digest": MAP_DIGEST, "config_digest": CONFIG_DIGEST})
    requests.put(auth_server.url + "/osm/area/metadata", data="k=v", auth=ALICE)
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "wogit", "meta", "get", "osm/area", "--registry", auth_server.url],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, env=environment(home),
                            cwd=ROOT, start_new_session=True)  # no controlling terminal: getpass uses stdin
    os.close(terminal)
    seen = bytearray()

    def read_until(text: bytes) -> None:
        deadline = time.monotonic() + 15
        while text not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.1)[0]:
                seen.extend(os.read(main, 4096))
        assert text in seen, seen

    read_until(b"User: ")
    os.write(main, b"alice\n")
    read_until(b"Password: ")
    os.write(main, PASSWORD.encode() + b"\n")
    stdout = proc.stdout.read()
    assert proc.wait(15) == 0
    try:
        while select.select([main], [], [], 0.2)[0]:
            seen.extend(os.read(main, 4096))
    except OSError:
        pass
    os.close(main)
    assert stdout == b"k=v\n"
    assert seen.decode().replace("\r\n", "\n") == f"Login for {auth_server.url}\nUser: alice\nPassword: \n"


# -- registry URL -------------------------------------------------------------------------

def test_the_registry_comes_from_the_flag_the_variable_or_the_config_file(server, unique, home):
    assert push(home, server.url, f"{unique}/area:v1", "--meta", "k=v").returncode == 0
    config = home / "config" / "wogit" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'registry = "{server.url}"\n')
    get = ("meta", "get", f"{unique}/area", "k")
    from_file = wogit(home, *get, env=environment(home, XDG_CONFIG_HOME=str(home / "config")))
    assert (from_file.returncode, from_file.stdout) == (0, "v\n")
    (home / ".config").symlink_to(home / "config")
    in_home = wogit(home, *get)
    assert (in_home.returncode, in_home.stdout) == (0, "v\n")
    config.write_text('registry = "http://127.0.0.1:9"\n')
    by_variable = wogit(home, *get, env=environment(home, WOGIT_REGISTRY=server.url))
    assert (by_variable.returncode, by_variable.stdout) == (0, "v\n")
    by_flag = wogit(home, *get, "--registry", server.url, env=environment(home, WOGIT_REGISTRY="http://127.0.0.1:9"))
    assert (by_flag.returncode, by_flag.stdout) == (0, "v\n")
    from_config = wogit(home, *get)
    assert (from_config.returncode, from_config.stderr) == (7, "wogit: cannot reach http://127.0.0.1:9: "
                                                                "Connection refused\n")
    config.write_text("registry = \n")
    broken = wogit(home, *get)
    assert (broken.returncode, broken.stderr.split(":")[:2]) == (2, ["wogit", f" cannot read {home}/.config/wogit/client.toml"])


# -- lists, metadata, history, rm ---------------------------------------------------------

def test_tags_follow_the_link_header_and_sort_by_time(fresh_server, home):
    srv = fresh_server()
    names = ["t1", "t2", "t3", "t4", "t5"]
    digests = srv.push(f"osm/area/{names[0]}")
    time.sleep(1.1)  # the next tags are a second newer
    for name in names[1:]:
        srv.push(f"osm/area/{name}")
    proxy = Proxy(srv.port)  # to see the query strings
    try:
        listed = as_json(wogit(home, "tags", "osm/area", "--page-size", "2", "--registry", proxy.url, "--json"))
    finally:
        proxy.close()
    assert [t["tag"] for t in listed["tags"]] == names
    assert {(t["repository"], t["map"], t["map_digest"], t["config_digest"]) for t in listed["tags"]} == {
        ("osm", "area", *digests)}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t["created"]) for t in listed["tags"])
    assert [head.split("\r\n")[0] for head in proxy.requests()] == [
        "GET /osm/area/_tags?n=2 HTTP/1.1", "GET /osm/area/_tags?n=2&last=t2 HTTP/1.1",
        "GET /osm/area/_tags?n=2&last=t4 HTTP/1.1"]

    by_time = wogit(home, "tags", "osm/area", "--sort", "time", "--page-size", "3", "--registry", srv.url)
    assert by_time.returncode == 0
    newest_first = sorted(listed["tags"], key=lambda t: (-_seconds(t["created"]), t["tag"]))
    assert [line.split("\t")[0] for line in by_time.stdout.splitlines()] == [t["tag"] for t in newest_first]
    assert newest_first[-1]["tag"] == "t1"
    first = listed["tags"][0]
    assert by_time.stdout.splitlines()[-1] == f"t1\t{first['created']}\t{digests[0]}\t{digests[1]}"


def _seconds(created: str) -> int:
    return int(datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp())


def test_ls_lists_repositories_and_maps_page_by_page(fresh_server, home):
    srv = fresh_server()
    for path in ["osm/helsinki/v1", "osm/area/v1", "robots/lab/v1", "games/level-1/v1"]:
        srv.push(path)
    repositories = wogit(home, "ls", "--page-size", "1", "--registry", srv.url)
    assert (repositories.returncode, repositories.stdout) == (0, "games\nosm\nrobots\n")
    assert as_json(wogit(home, "ls", "--registry", srv.url, "--json")) == {"repositories": ["games", "osm", "robots"]}
    maps = wogit(home, "ls", "osm", "--page-size", "1", "--registry", srv.url, "--json")
    assert as_json(maps) == {"repository": "osm", "maps": ["area", "helsinki"]}
    assert len(access_log(srv, r"GET /_catalog/osm\S* 200")) == 2
    unknown = wogit(home, "ls", "nothing", "--registry", srv.url)
    assert unknown.returncode == 3 and unknown.stderr.startswith("wogit: ")


def test_meta_verbs_history_and_rm(fresh_server, home):
    srv = fresh_server()
    r = ("--registry", srv.url)
    assert push(home, srv.url, "osm/area:v1", "--meta", "source=osm", "--meta", "license=ODbL-1.0").returncode == 0
    assert as_json(wogit(home, "meta", "set", "osm/area", "draft=yes", "a.b=nested", *r, "--json")) == {
        "set": ["draft"], "ignored": ["a.b"]}
    assert wogit(home, "meta", "get", "osm/area", *r).stdout == "draft=yes\nlicense=ODbL-1.0\nsource=osm\n"
    assert wogit(home, "meta", "ls", "osm/area", *r).stdout == "draft\nlicense\nsource\n"
    assert wogit(home, "meta", "get", "osm/area", "license", *r).stdout == "ODbL-1.0\n"
    removed = wogit(home, "meta", "rm", "osm/area", "draft", *r, "--json")
    assert as_json(removed) == {"deleted": "draft"}
    assert wogit(home, "meta", "rm", "osm/area", "draft", *r).returncode == 3

    deleted = as_json(wogit(home, "rm", "osm/area:v1", *r, "--json"))
    assert {k: v for k, v in deleted.items() if k != "created"} == {
        "repository": "osm", "map": "area", "tag": "v1", "map_digest": MAP_DIGEST, "config_digest": CONFIG_DIGEST}
    gone = wogit(home, "pull", "osm/area:v1", *r)
    assert (gone.returncode, gone.stderr) == (3, "wogit: tag osm/area/v1 does not exist\n")

    history = as_json(wogit(home, "history", "osm/area", "--page-size", "2", *r, "--json"))["history"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", e["commit"]) and e["user"] is None for e in history)
    metadata = [(e["action"], e["keys"]) for e in history if e["action"].endswith("-metadata")]
    assert metadata == [("delete-metadata", ["draft"]), ("set-metadata", ["draft"]),
                        ("set-metadata", ["license", "source"])]
    tags = [(e["action"], e["tag"]) for e in history if e["action"].endswith("-tag")]
    assert tags == [("delete-tag", "v1"), ("create-tag", "v1")]
    created = next(e for e in history if e["action"] == "create-tag")
    assert (created["map_digest"], created["config_digest"]) == (MAP_DIGEST, CONFIG_DIGEST)
    assert len(history) == 5

    first_set = next(e["commit"] for e in reversed(history) if e["action"] == "set-metadata")
    then = as_json(wogit(home, "meta", "get", "osm/area", "--at", first_set, *r, "--json"))
    assert then == {"metadata": {"license": "ODbL-1.0", "source": "osm"}, "commit": first_set}
    assert wogit(home, "meta", "get", "osm/area", "draft", "--at", first_set, *r).returncode == 3
    before = as_json(wogit(home, "meta", "ls", "osm/area", "--at", "2000-01-01", *r, "--json"))
    assert before == {"keys": [], "commit": None}
    text = wogit(home, "history", "osm/area", *r).stdout.splitlines()
    assert [line.split("\t")[2] for line in text] == [e["action"] for e in history]


# -- the README's client session, pasted as it is -----------------------------------------

def readme_block(language: str) -> str:
    """The first ```language block of the README's client section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The `wogit` client"):]
    return re.search(rf"```{language}\n(.+?)\n```", section, re.S).group(1)


def test_the_readme_client_session_runs_as_written(fresh_server, home, tmp_path):
    srv = fresh_server()
    script = readme_block("sh").replace(".venv/bin/wogit", f"'{sys.executable} -m wogit'").replace(
        "/tmp/test-area", str(tmp_path / "test-area"))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env=environment(home, WOGIT_REGISTRY=srv.url), stdin=subprocess.DEVNULL, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    tags = json.loads(lines[8])["tags"]
    assert tags == [{"repository": "osm", "map": "test-area", "tag": "v1", "map_digest": MAP_DIGEST,
                     "config_digest": CONFIG_DIGEST, "created": tags[0]["created"]}]
    assert lines[:8] + lines[9:21] == [
        f"map {MAP_DIGEST} uploaded", f"config {CONFIG_DIGEST} uploaded", "tagged osm/test-area:v1",
        "metadata set: license source",
        f"pulled osm/test-area:v1 into {tmp_path / 'test-area'}: map {len(MAP_BYTES)} bytes, "
        f"config {len(CONFIG_BYTES)} bytes, digests verified",
        "license=ODbL-1.0", "source=openstreetmap", f"v1\t{tags[0]['created']}\t{MAP_DIGEST}\t{CONFIG_DIGEST}",
        "osm", "test-area", "set: draft region",
        "draft=yes", "license=ODbL-1.0", "region=helsinki", "source=openstreetmap", "helsinki", "deleted draft",
        "license", "region", "source"]
    history = [tuple(line.split("\t")[1:4]) for line in lines[21:]]
    assert len(history) == 4
    assert [entry for entry in history if entry[1].endswith("-metadata")] == [
        ("-", "delete-metadata", "draft"), ("-", "set-metadata", "draft region"),
        ("-", "set-metadata", "license source")]  # a tag's and the metadata's changes interleave by time
    assert ("-", "create-tag", f"v1 map={MAP_DIGEST} config={CONFIG_DIGEST}") in history
    assert_release(tmp_path / "test-area", "license=ODbL-1.0\nsource=openstreetmap\n")

    code = readme_block("python").replace("http://127.0.0.1:8080", srv.url).replace(
        "/tmp/test-area", str(tmp_path / "again"))
    program = code + "\nprint(pushed.tag_created, pushed.map_uploaded, pulled.map_size, names)\n"
    run = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"False False {len(MAP_BYTES)} ['v1']\n", "")
    assert_release(tmp_path / "again", "license=ODbL-1.0\nregion=helsinki\nsource=openstreetmap\n")


# -- the Python API -----------------------------------------------------------------------

def test_the_python_api_returns_dataclasses_and_raises_typed_errors(server, unique, tmp_path):
    from wogit import client

    with client.Client(server.url, page_size=1) as registry:
        pushed = registry.push(unique, "area", "v1", TEST_MAP, TEST_CONFIG, {"k": "v"})
        assert (pushed.tag_created, pushed.map_digest, pushed.metadata_set) == (True, MAP_DIGEST, ["k"])
        registry.push(unique, "area", "v2", TEST_MAP, TEST_CONFIG)
        tags = list(registry.tags(unique, "area"))
        assert [(t.repository, t.map, t.tag, t.map_digest, t.config_digest) for t in tags] == [
            (unique, "area", "v1", MAP_DIGEST, CONFIG_DIGEST), (unique, "area", "v2", MAP_DIGEST, CONFIG_DIGEST)]
        assert list(registry.maps(unique)) == ["area"]
        assert registry.metadata(unique, "area").values == {"k": "v"}
        assert registry.has(client.MAP, MAP_DIGEST) and registry.has(client.CONFIG, CONFIG_DIGEST)
        assert not registry.has(client.MAP, sha256(b"never uploaded"))
        pulled = registry.pull(unique, "area", "v2", tmp_path / "out")
        assert (pulled.map_size, pulled.resumed_bytes, pulled.retries) == (len(MAP_BYTES), 0, 0)
        with pytest.raises(client.NotFound) as missing:
            registry.tag_digests(unique, "area", "v3")
        assert (missing.value.status, missing.value.msg, missing.value.exit_code) == (
            404, f"tag {unique}/area/v3 does not exist", 3)
    assert client.file_digest(TEST_MAP) == MAP_DIGEST
    assert client.parse_metadata("a=1\nb=x=y\n") == {"a": "1", "b": "x=y"}


class _Hostile(threading.Thread):
    """A registry that misbehaves: an endless error body, or pages whose Link comes back."""

    def __init__(self, mode: str):
        super().__init__(daemon=True)
        import http.server

        hostile = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hostile.requests += 1
                if mode == "endless-error":
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    try:
                        self.wfile.write(b'{"msg": "')
                        for _ in range(4096):  # 256 MiB, never read whole
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        pass
                    return
                body = b'{"tags": []}' if mode == "loop" else b'{"tags": [1, null, "x"]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if mode == "loop":
                    self.send_header("Link", '</osm/area/_tags?n=1&last=a>; rel="next"')
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.requests = 0

    def run(self):
        self.server.serve_forever()


@pytest.mark.parametrize("mode, code, message", [
    ("endless-error", 3, "404 Not Found"),
    ("loop", 1, "the registry's pages loop: {url}/osm/area/_tags?n=1&last=a comes again"),
    ("wrong-shape", 1, "the registry's answer is not the JSON the API documents"),
])
def test_a_hostile_registry_gets_a_clean_error_and_bounded_memory(home, mode, code, message):
    hostile = _Hostile(mode)
    hostile.start()
    try:
        result = wogit(home, "tags", "osm/area", "--registry", hostile.url)
    finally:
        hostile.server.shutdown()
    assert (result.returncode, result.stdout, result.stderr) == (code, "", f"wogit: {message.format(url=hostile.url)}\n")
    assert hostile.requests <= 3


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:0"])
def test_a_registry_url_that_cannot_be_is_a_usage_error(home, url):
    result = wogit(home, "ls", "--registry", url)
    assert (result.returncode, result.stderr) == (
        2, f"wogit: the registry URL must be http:// or https:// with a host (and a port from 1 to 65535), not {url!r}\n")
