"""Access control end to end: real `wogit serve` processes, user files made by real `htpasswd -B`
and by `wogit user`, the issue's example config, HTTPS with a certificate made here by openssl.

One registry (module scope) serves the permission matrix: every endpoint x {anonymous, wrong
password, carol (read), bob (write on maps-*), alice (admin)} x {maps-x, public-x, other}.
Other tests start registries of their own.  bcrypt cost 4 everywhere, for speed.
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import ROOT, Server, json_body_of, raw_request, sha256, status_of
from htpasswd_tool import htpasswd, htpasswd_verifies

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
needs_openssl = pytest.mark.skipif(not os.path.exists(OPENSSL),
                                   reason="openssl missing: cannot make a self-signed certificate")

CHALLENGE = 'Basic realm="wogit", charset="UTF-8"'

# Distinctive passwords, so that finding one in a log means it leaked.
PASSWORDS = {"alice": "Alice-pw-7f3a9c", "bob": "Bob-pw-51d2e8", "carol": "Carol-pw-0b6c44"}
WRONG = "Wrong-guess-9e1f27"

EXAMPLE_CONFIG = """\
[server]
data = "/srv/wogit/registry.git"
host = "0.0.0.0"
port = 8080
max_login_failures = 100000    # the matrix sends many wrong passwords on purpose

[auth]
htpasswd = "users.htpasswd"   # relative paths are relative to this file

[access]
alice = { "*" = "admin" }
bob   = { "maps-*" = "write", "*" = "read" }
carol = { "*" = "read" }
"*"   = { "public-*" = "read" }          # anonymous clients
"""


# -- helpers ----------------------------------------------------------------------------------

def make_users(path: Path, users: dict[str, str]) -> None:
    """A user file made by `htpasswd -B` (cost 4; see htpasswd_tool)."""
    for index, (name, password) in enumerate(users.items()):
        htpasswd(*(["-c"] if index == 0 else []), "-B", "-C", "4", "-b", str(path), name, password)


def wogit(*args: str, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wogit", *args], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=timeout)


def user_add(auth_file: Path, name: str, password: str) -> subprocess.CompletedProcess:
    result = wogit("user", "add", name, "--auth-file", str(auth_file), "--password-stdin", "--cost", "4",
                   stdin=password.encode("utf-8") + b"\n")
    assert result.returncode == 0, result.stderr.decode()
    return result


def token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


def basic(user: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token(user, password)}"}


def assert_401(reply: requests.Response, what: str = "") -> None:
    assert reply.status_code == 401, f"{what}: expected 401, got {reply.status_code} {reply.text!r}"
    assert reply.headers.get("WWW-Authenticate") == CHALLENGE, f"{what}: {dict(reply.headers)}"
    assert reply.headers.get("Content-Type") == "application/json", f"{what}: {dict(reply.headers)}"
    if reply.request.method != "HEAD":
        body = reply.json()
        assert list(body) == ["msg"] and isinstance(body["msg"], str) and body["msg"], f"{what}: {body}"


def assert_403(reply: requests.Response, what: str = "") -> None:
    assert reply.status_code == 403, f"{what}: expected 403, got {reply.status_code} {reply.text!r}"
    assert reply.headers.get("Content-Type") == "application/json", f"{what}: {dict(reply.headers)}"
    if reply.request.method != "HEAD":
        body = reply.json()
        assert list(body) == ["msg"] and isinstance(body["msg"], str) and body["msg"], f"{what}: {body}"


def assert_no_secrets(log: str, passwords, user_file: Path | None = None) -> None:
    """No password, no credentials (raw or base64), no Authorization header, no hash in the log."""
    assert "Traceback" not in log, log
    assert "authorization" not in log.lower(), log
    assert "$2y$" not in log and "$2b$" not in log and "$2a$" not in log, log
    for password in passwords:
        assert password not in log, f"password {password!r} in the server log"
    for match in re.finditer(r"[A-Za-z0-9+/]{12,}={0,2}", log):
        text = match.group(0).rstrip("=")
        try:
            decoded = base64.b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            continue
        for password in passwords:
            assert password.encode() not in decoded, f"base64 credentials in the log: {match.group(0)}"
    if user_file is not None and user_file.exists():
        for line in user_file.read_text().splitlines():
            if ":" in line:
                stored = line.split(":", 1)[1]
                assert stored[7:] not in log, "a password hash is in the server log"


def wait_for(condition, timeout: float = 3.0, interval: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


class _SourceAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


_addresses = itertools.count()


def from_elsewhere(method: str, url: str, **kw) -> requests.Response:
    """A request from a loopback address of its own (127.0.x.y, x >= 1).

    The failed-login limit counts per client address; tests that are not about it send their
    wrong passwords this way so that the limit never turns an expected 401 into a 429.
    """
    n = next(_addresses)
    address = f"127.0.{1 + n // 250}.{1 + n % 250}"
    with requests.Session() as session:
        session.mount("http://", _SourceAdapter(address))
        session.mount("https://", _SourceAdapter(address))
        return session.request(method, url, **kw)


class AnyServer(Server):
    """conftest's Server, accepting an https:// ready line too."""

    def start(self) -> AnyServer:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.data.parent / f"{self.data.name}.{len(list(self.data.parent.glob(self.data.name + '.*.log')))}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wogit", "serve", "--data", str(self.data), "--port", "0", *self.args],
                stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=ROOT)
        self.ready_line = self.proc.stdout.readline()
        match = re.search(r"on (https?://[\d.]+:\d+)", self.ready_line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {self.ready_line}{self.log.read_text()}")
        self.url = match.group(1)
        return self


def push(url: str, headers: dict, path: str, map_data: bytes, config: bytes, **kw) -> tuple[str, str]:
    """Upload a map and a config with credentials and tag them as ``path``."""
    for kind, data in (("blobs", map_data), ("configs", config)):
        reply = requests.put(f"{url}/{kind}/upload", data=data, headers=headers, **kw)
        assert reply.status_code in (201, 409), reply.text
    m, c = sha256(map_data), sha256(config)
    reply = requests.put(f"{url}/{path}", json={"map_digest": m, "config_digest": c}, headers=headers, **kw)
    assert reply.status_code == 201, reply.text
    return m, c


# -- the registry of the example config ----------------------------------------------

REPOS = ("maps-x", "public-x", "other")
WHO = ("anonymous", "wrong-password", "carol", "bob", "alice")
ANY = "<any>"  # uploads: write needed on at least one repository
# The level each identity has, by the permission model (0 none, 1 read, 2 write, 4 admin).
LEVELS = {
    "anonymous": {"maps-x": 0, "public-x": 1, "other": 0, ANY: 1},
    "carol": {"maps-x": 1, "public-x": 1, "other": 1, ANY: 1},
    "bob": {"maps-x": 2, "public-x": 1, "other": 1, ANY: 2},
    "alice": {"maps-x": 4, "public-x": 4, "other": 4, ANY: 4},
}
READ, WRITE = 1, 2


def credentials(who: str) -> dict[str, str]:
    if who == "anonymous":
        return {}
    if who == "wrong-password":
        return basic("alice", WRONG)  # an admin's name with a wrong password
    return basic(who, PASSWORDS[who])


def call(method: str, url: str, who: str, **kw) -> requests.Response:
    """``who``'s request; wrong passwords come from addresses of their own (see from_elsewhere)."""
    send = from_elsewhere if who == "wrong-password" else requests.request
    return send(method, url, headers=credentials(who), **kw)


def expected(need: int, success: int, who: str, repo: str) -> int:
    if who == "wrong-password":
        return 401
    if LEVELS[who][repo] >= need:
        return success
    return 401 if who == "anonymous" else 403


class Registry:
    def __init__(self, srv: Server, user_file: Path):
        self.srv = srv
        self.url = srv.url
        self.user_file = user_file
        self.map_data = b"the map bytes " + uuid.uuid4().bytes
        self.config = b"style: test\n"
        self.map_digest = sha256(self.map_data)
        self.config_digest = sha256(self.config)
        self.tarballs: dict[str, requests.Response] = {}

    def as_alice(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.url + path, headers=credentials("alice"), **kw)


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Registry:
    base = tmp_path_factory.mktemp("acl")
    user_file = base / "users.htpasswd"
    make_users(user_file, PASSWORDS)
    assert user_file.read_text().startswith("alice:$2y$04$")
    config = base / "wogit.toml"
    config.write_text(EXAMPLE_CONFIG)
    # The file says port 8080, host 0.0.0.0 and /srv/...: the flags override all three.
    srv = Server(base / "registry.git", "--config", str(config), "--host", "127.0.0.1").start()
    try:
        assert srv.port != 8080
        r = Registry(srv, user_file)
        for kind, data in (("blobs", r.map_data), ("configs", r.config)):
            assert r.as_alice("PUT", f"/{kind}/upload", data=data).status_code == 201
        for repo in REPOS:
            for map_name in ("r", "w"):
                reply = r.as_alice("PUT", f"/{repo}/{map_name}/t0",
                                   json={"map_digest": r.map_digest, "config_digest": r.config_digest})
                assert reply.status_code == 201, reply.text
            reply = r.as_alice("PUT", f"/{repo}/r/metadata", data=b"license=ODbL-1.0 k=v")
            assert reply.status_code == 200, reply.text
            keys = " ".join(f"del-{who}=x" for who in WHO)
            assert r.as_alice("PUT", f"/{repo}/w/metadata", data=keys.encode()).status_code == 200
            r.tarballs[repo] = r.as_alice("GET", f"/{repo}/r/t0")
            assert r.tarballs[repo].status_code == 200
        yield r
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()


def test_example_config_serves_with_flags_overriding_the_file(reg):
    assert not Path("/srv/wogit/registry.git").exists()
    assert (reg.srv.data / "HEAD").exists()  # --data won over the file's data
    assert reg.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("who", WHO)
def test_matrix_get_v1(reg, who):
    reply = call("GET", reg.url + "/v1", who)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["authentication"] == "required"
    assert body["anonymous"] == {"public-*": "read"}
    assert body["api"] == "v1" and body["name"] == "wogit"


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("kind", ["blobs", "configs"])
def test_matrix_upload(reg, kind, who):
    data = f"{kind} uploaded by {who} {uuid.uuid4()}\n".encode()
    header = "Wo-Map-Digest" if kind == "blobs" else "Wo-Config-Digest"
    want = expected(WRITE, 201, who, ANY)
    reply = call("PUT", f"{reg.url}/{kind}/upload", who, data=data)
    what = f"PUT /{kind}/upload as {who}"
    if want == 201:
        assert reply.status_code == 201, f"{what}: {reply.status_code} {reply.text}"
        assert reply.json() == {"digest": sha256(data)}
        assert reply.headers[header] == sha256(data)
        assert reg.as_alice("PUT", f"/{kind}/upload", data=data).status_code == 409
    else:
        (assert_401 if want == 401 else assert_403)(reply, what)
        # Nothing was stored: the same bytes are new to alice.
        assert reg.as_alice("PUT", f"/{kind}/upload", data=data).status_code == 201


ENDPOINTS = ["PUT tag", "GET tag", "HEAD tag", "PUT metadata", "GET metadata", "GET metadata/key",
             "DELETE metadata/key"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("repo", REPOS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_matrix(reg, endpoint, repo, who):
    if endpoint == "PUT tag":
        path, need, success = f"/{repo}/w/t-{who}", WRITE, 201
        reply = call("PUT", reg.url + path, who, json={"map_digest": reg.map_digest, "config_digest": reg.config_digest})
    elif endpoint in ("GET tag", "HEAD tag"):
        path, need, success = f"/{repo}/r/t0", READ, 200
        reply = call(endpoint.split()[0], reg.url + path, who)
    elif endpoint == "PUT metadata":
        path, need, success = f"/{repo}/w/metadata", WRITE, 200
        reply = call("PUT", reg.url + path, who, data=f"put-{who}=yes".encode())
    elif endpoint == "GET metadata":
        path, need, success = f"/{repo}/r/metadata", READ, 200
        reply = call("GET", reg.url + path, who)
    elif endpoint == "GET metadata/key":
        path, need, success = f"/{repo}/r/metadata/k", READ, 200
        reply = call("GET", reg.url + path, who)
    else:
        path, need, success = f"/{repo}/w/metadata/del-{who}", WRITE, 200
        reply = call("DELETE", reg.url + path, who)
    what = f"{reply.request.method} {path} as {who}"
    want = expected(need, success, who, repo)
    assert reply.status_code == want, f"{what}: expected {want}, got {reply.status_code} {reply.text!r}"
    if want == 401:
        assert_401(reply, what)
    elif want == 403:
        assert_403(reply, what)

    granted = want == success
    if endpoint == "PUT tag":
        if granted:
            body = reply.json()
            created = body.pop("created")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
            assert body == {"repository": repo, "map": "w", "tag": f"t-{who}",
                            "map_digest": reg.map_digest, "config_digest": reg.config_digest}
            assert reply.headers["Location"] == path
        after = reg.as_alice("GET", path)
        assert after.status_code == (200 if granted else 404), f"after {what}: {after.status_code}"
    elif endpoint == "GET tag" and granted:
        assert reply.headers["Content-Type"] == "application/gzip"
        assert reply.headers["Wo-Map-Digest"] == reg.map_digest
        assert reply.content == reg.tarballs[repo].content
    elif endpoint == "HEAD tag" and granted:
        assert reply.headers["ETag"] == reg.tarballs[repo].headers["ETag"]
        assert reply.headers["Wo-Config-Digest"] == reg.config_digest
        assert reply.content == b""
    elif endpoint == "PUT metadata":
        if granted:
            assert reply.json() == {"set": [f"put-{who}"], "ignored": []}
        after = reg.as_alice("GET", f"/{repo}/w/metadata/put-{who}")
        assert after.status_code == (200 if granted else 404), f"after {what}: {after.status_code}"
    elif endpoint == "GET metadata" and granted:
        assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert reply.content == b"k=v\nlicense=ODbL-1.0\n"
    elif endpoint == "GET metadata/key" and granted:
        assert reply.content == b"v"
    elif endpoint == "DELETE metadata/key":
        if granted:
            assert reply.json() == {"deleted": f"del-{who}"}
        after = reg.as_alice("GET", path)
        assert (after.status_code, after.content if after.status_code == 200 else None) == \
               ((404, None) if granted else (200, b"x")), f"after {what}: {after.status_code}"


@pytest.mark.parametrize("who, method, path, want", [
    ("carol", "PUT", "/no-such-repo/m/t1", 403),
    ("anonymous", "GET", "/no-such-repo/m/t1", 401),
    ("anonymous", "GET", "/other/no-such-map/metadata", 401),
    ("bob", "DELETE", "/public-x/no-such-map/metadata/k", 403),
    ("bob", "GET", "/other/no-such-map/t1", 404),  # allowed: the question of existence comes after
    ("anonymous", "GET", "/public-x/no-such-map/t1", 404),
])
def test_permission_is_checked_before_existence(reg, who, method, path, want):
    body = b'{"map_digest": "x", "config_digest": "y"}' if method == "PUT" else None
    reply = call(method, reg.url + path, who, data=body)
    assert reply.status_code == want, reply.text
    assert list(reply.json()) == ["msg"]


# -- malformed Authorization headers (on the example registry) --------------------------------

MALFORMED = {
    "bad base64": "Basic !!!not-base64!!!",
    "base64 with a stray character": "Basic " + token("alice", PASSWORDS["alice"]) + "*",
    "no colon": "Basic " + base64.b64encode(b"alice").decode(),
    "other scheme": "Bearer " + token("alice", PASSWORDS["alice"]),
    "digest scheme": 'Digest username="alice", realm="wogit"',
    "empty Basic": "Basic",
    "Basic and spaces": "Basic    ",
    "not UTF-8 inside the base64": "Basic " + base64.b64encode(b"alice:\xff\xfe\xfd").decode(),
    "latin-1 credentials": "Basic " + base64.b64encode("alice:pässword".encode("latin-1")).decode(),
    "only a colon": "Basic " + base64.b64encode(b":").decode(),
}


@pytest.mark.parametrize("repo", ["maps-x", "public-x"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_authorization_is_401_json(reg, name, repo):
    reply = requests.get(f"{reg.url}/{repo}/r/t0", headers={"Authorization": MALFORMED[name]})
    assert_401(reply, f"GET /{repo}/r/t0 with {name} {MALFORMED[name]!r}")


@pytest.mark.parametrize("value", [b"Basic \xff\xfe\xfd\xfc", b"\xc3\x28 \xa0\xa1", b"Basic YWxpY2U6\xe2\x9c\x93"])
def test_non_utf8_authorization_bytes_are_401_json(reg, value):
    raw = raw_request(reg.url, b"GET /public-x/r/t0 HTTP/1.1\r\nHost: t\r\nAuthorization: " + value
                      + b"\r\nConnection: close\r\n\r\n", read_timeout=5)
    assert raw, "no answer"
    assert status_of(raw) == 401, raw[:500]
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    fields = [line.split(":", 1) for line in head.split("\r\n")[1:]]
    challenges = [value.strip() for name, value in fields if name.lower() == "www-authenticate"]
    assert challenges == [CHALLENGE], head
    assert list(json_body_of(raw)) == ["msg"]


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "bAsIc"])
def test_scheme_is_case_insensitive(reg, scheme):
    reply = requests.get(f"{reg.url}/maps-x/r/t0", headers=basic("carol", PASSWORDS["carol"], scheme))
    assert reply.status_code == 200, reply.text


def test_unknown_user_is_401(reg):
    assert_401(from_elsewhere("GET", f"{reg.url}/public-x/r/t0", headers=basic("mallory", WRONG)), "unknown user")
    # a valid user's password under another name does not work
    assert_401(from_elsewhere("GET", f"{reg.url}/maps-x/r/t0", headers=basic("carol", PASSWORDS["alice"])),
               "carol with alice's password")


# -- refusing before the body: the connection closes --------------------------------------------

@pytest.mark.parametrize("who, status", [("anonymous", 401), ("wrong-password", 401), ("carol", 403)])
def test_refusal_before_a_large_upload_closes_the_connection(reg, who, status):
    auth = "".join(f"{k}: {v}\r\n" for k, v in credentials(who).items()).encode()
    request = (b"PUT /blobs/upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % (100 << 20)) + auth + b"\r\n"
    start = time.monotonic()
    raw = raw_request(reg.url, request, read_timeout=5)  # no body byte is ever sent
    elapsed = time.monotonic() - start
    assert raw, "no answer within 5 s"
    assert status_of(raw) == status, raw[:500]
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close\r\n" in head + b"\r\n", head
    assert list(json_body_of(raw)) == ["msg"]
    assert elapsed < 3, f"answer and close took {elapsed:.1f} s"


def test_refusal_before_a_chunked_upload_closes_the_connection(reg):
    start = time.monotonic()
    raw = raw_request(reg.url, b"PUT /maps-x/m/t9 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"10\r\n0123456789", read_timeout=5)
    assert status_of(raw) == 401, raw[:500]
    assert b"\r\nconnection: close" in raw.partition(b"\r\n\r\n")[0].lower()
    assert time.monotonic() - start < 3


# -- no secrets in the log of the example registry (after everything above) ------------------

def test_example_log_has_no_secrets_and_names_users(reg):
    # Make sure the log has seen good and bad credentials even when run alone.
    for who in WHO:
        call("GET", f"{reg.url}/maps-x/r/metadata", who)
    requests.put(f"{reg.url}/blobs/upload", data=b"log check " + uuid.uuid4().bytes, headers=credentials("alice"))
    requests.get(f"{reg.url}/maps-x/r/t0", headers={"Authorization": MALFORMED["no colon"]})
    time.sleep(0.1)
    log = reg.srv.log_text()
    assert_no_secrets(log, [*PASSWORDS.values(), WRONG], reg.user_file)
    assert re.search(r"^.*127\.0\.0\.1 alice PUT /blobs/upload 201 \d+ [\d.]+ms [0-9a-f]{32}$", log, re.M), log
    assert re.search(r"^.*127\.0\.0\.1 bob GET /maps-x/r/metadata 200 \d+ [\d.]+ms [0-9a-f]{32}$", log, re.M), log
    assert re.search(r"^.*127\.0\.0\.1 carol GET /maps-x/r/metadata 200 \d+ [\d.]+ms [0-9a-f]{32}$", log, re.M), log
    assert re.search(r"^.*127\.0\.0\.1 - GET /maps-x/r/metadata 401 \d+ [\d.]+ms [0-9a-f]{32}$", log, re.M), log


# -- --auth-file alone, and no auth at all ----------------------------------------------------

def every_endpoint(url: str, headers: dict, fresh: str, send=requests.request) -> dict[str, int]:
    """Every endpoint once (fresh names from ``fresh``), on the map repo/m (tag t0) made by setup."""
    m, c = f"map {fresh}".encode(), f"config {fresh}\n".encode()
    calls = {
        "GET /v1": ("GET", "/v1", {}),
        "PUT /blobs/upload": ("PUT", "/blobs/upload", {"data": m}),
        "PUT /configs/upload": ("PUT", "/configs/upload", {"data": c}),
        "PUT tag": ("PUT", f"/repo/m/{fresh}", {"json": {"map_digest": sha256(m), "config_digest": sha256(c)}}),
        "GET tag": ("GET", "/repo/m/t0", {}),
        "HEAD tag": ("HEAD", "/repo/m/t0", {}),
        "PUT metadata": ("PUT", "/repo/m/metadata", {"data": f"{fresh}=1".encode()}),
        "GET metadata": ("GET", "/repo/m/metadata", {}),
        "GET metadata/key": ("GET", "/repo/m/metadata/k", {}),
        "DELETE metadata/key": ("DELETE", f"/repo/m/metadata/del-{fresh}", {}),
    }
    return {name: send(method, url + path, headers=headers, **kw).status_code
            for name, (method, path, kw) in calls.items()}


SUCCESS = {"GET /v1": 200, "PUT /blobs/upload": 201, "PUT /configs/upload": 201, "PUT tag": 201, "GET tag": 200,
           "HEAD tag": 200, "PUT metadata": 200, "GET metadata": 200, "GET metadata/key": 200,
           "DELETE metadata/key": 200}


def test_auth_file_alone_every_user_is_admin_and_anonymous_gets_nothing(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    make_users(users, {"dave": "Dave-pw-19ab", "erin": "Erin-pw-77cd"})
    srv = fresh_server(None, "--auth-file", str(users))
    v1 = requests.get(srv.url + "/v1").json()
    assert v1["authentication"] == "required" and v1["anonymous"] == {}, v1
    dave, erin = basic("dave", "Dave-pw-19ab"), basic("erin", "Erin-pw-77cd")
    push(srv.url, dave, "repo/m/t0", b"the map", b"a: 1\n")
    keys = " ".join(f"del-{f}=x" for f in ("dave1", "erin1", "anon1", "wrong1"))
    assert requests.put(srv.url + "/repo/m/metadata", data=f"k=v {keys}".encode(), headers=dave).status_code == 200

    assert every_endpoint(srv.url, dave, "dave1") == SUCCESS
    assert every_endpoint(srv.url, erin, "erin1") == SUCCESS
    refused = {name: (200 if name == "GET /v1" else 401) for name in SUCCESS}
    assert every_endpoint(srv.url, {}, "anon1") == refused
    assert every_endpoint(srv.url, basic("dave", "Erin-pw-77cd"), "wrong1", from_elsewhere) == refused
    assert_401(requests.get(srv.url + "/repo/m/t0"), "anonymous GET")
    assert "OPEN" not in srv.log_text()
    assert_no_secrets(srv.log_text(), ["Dave-pw-19ab", "Erin-pw-77cd"], users)


def test_without_auth_the_registry_says_it_is_open(fresh_server):
    srv = fresh_server()
    reply = requests.get(srv.url + "/v1")
    assert reply.status_code == 200
    body = reply.json()
    assert body["authentication"] == "open", body
    assert body["anonymous"] == {"*": "admin"}, body
    srv.push("anyone/m/t0")  # anonymous writes work
    log = srv.log_text()
    assert re.search(r"WARNING.*registry is OPEN", log), log


def test_auth_file_from_the_environment(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    user_add(users, "frank", "Frank-pw-3e")
    srv = fresh_server(None, env={"WOGIT_AUTH_FILE": str(users)})
    assert requests.get(srv.url + "/v1").json()["authentication"] == "required"
    assert_401(requests.get(srv.url + "/repo/m/metadata"), "anonymous")
    assert requests.get(srv.url + "/repo/m/metadata", headers=basic("frank", "Frank-pw-3e")).status_code == 404


# -- passwords with ':' and UTF-8; long passwords ----------------------------------------------

def test_colons_and_utf8_in_passwords(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    by_htpasswd = {"zoë": "a:b:c ü ✓", "colon": ":leading:colon", "hbob": "pa:ss wörd ✓"}
    make_users(users, by_htpasswd)
    by_wogit = {"jürgen": "pa:ss wörd ✓", "wuser": "x:y:z 日本語 €", "long": "é" * 60 + ":" + "z" * 30}
    for name, password in by_wogit.items():
        user_add(users, name, password)
    srv = fresh_server(None, "--auth-file", str(users))
    admin = basic("jürgen", by_wogit["jürgen"])
    push(srv.url, admin, "repo/m/t0", b"utf8 map", b"a: 1\n")
    everyone = {**by_htpasswd, **by_wogit}
    assert len(everyone["long"].encode()) > 72
    for name, password in everyone.items():
        reply = requests.get(srv.url + "/repo/m/t0", headers=basic(name, password))
        assert reply.status_code == 200, f"{name}: {reply.status_code} {reply.text}"
        # Near misses: without the part after a colon, a changed first or last character, one more.
        near = [password.split(":")[0], "?" + password[1:], password[:-1] + "?", password + "!"]
        if len(password.encode()) > 72:
            near = near[1:2]  # bcrypt looks at 72 bytes: only a change within them is a wrong password
        for wrong in near:
            if wrong == password:
                continue
            assert_401(from_elsewhere("GET", srv.url + "/repo/m/t0", headers=basic(name, wrong)),
                       f"{name} with {wrong!r}")
    # bcrypt looks at 72 bytes: a longer wrong password is a 401 (no error), the right one 200 again
    assert_401(from_elsewhere("GET", srv.url + "/repo/m/t0", headers=basic("long", "ü" * 200)), "200-char password")
    assert requests.get(srv.url + "/repo/m/t0", headers=basic("long", everyone["long"])).status_code == 200
    assert_no_secrets(srv.log_text(), everyone.values(), users)


# -- changes to the user file take effect without a restart --------------------------------------

def test_user_file_changes_take_effect_without_restart(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    make_users(users, {"alice": "Alice-old-1", "bob": "Bob-old-2"})
    srv = fresh_server(None, "--auth-file", str(users))
    url = srv.url + "/repo/m/metadata"  # 404 MAP_UNKNOWN once authenticated

    def status(user, password):
        return from_elsewhere("GET", url, headers=basic(user, password)).status_code

    assert status("bob", "Bob-old-2") == 404  # verified and cached
    time.sleep(0.6)  # a later write may keep the same mtime granularity: make it clearly later
    ino = users.stat().st_ino
    htpasswd("-B", "-C", "4", "-b", str(users), "bob", "Bob-new-3")
    assert users.stat().st_ino == ino  # htpasswd rewrote in place
    took = wait_for(lambda: status("bob", "Bob-old-2") == 401 and status("bob", "Bob-new-3") == 404)
    assert took is not None and took < 2.0, f"changed password not in effect after {took} s"
    assert_401(from_elsewhere("GET", url, headers=basic("bob", "Bob-old-2")), "bob's old password")

    result = wogit("user", "remove", "bob", "--auth-file", str(users))
    assert result.returncode == 0, result.stderr
    took = wait_for(lambda: status("bob", "Bob-new-3") == 401)
    assert took is not None and took < 2.0, f"removed user still logs in after {took} s"

    user_add(users, "carl", "Carl-new-4")
    took = wait_for(lambda: status("carl", "Carl-new-4") == 404)
    assert took is not None and took < 2.0, f"added user not in effect after {took} s"
    htpasswd("-B", "-C", "4", "-b", str(users), "dora", "Dora-new-5")
    took = wait_for(lambda: status("dora", "Dora-new-5") == 404)
    assert took is not None and took < 2.0, f"user added by htpasswd not in effect after {took} s"
    assert status("alice", "Alice-old-1") == 404  # untouched
    assert_no_secrets(srv.log_text(), ["Alice-old-1", "Bob-old-2", "Bob-new-3", "Carl-new-4", "Dora-new-5"], users)


# -- brute force ------------------------------------------------------------------------------------

def request_from(address: str, port: int, path: str, headers: dict) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{lines}Connection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_brute_force_gets_429_but_verified_credentials_keep_working(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    pws = {"alice": "Alice-bf-1", "bob": "Bob-bf-2"}
    make_users(users, pws)
    window = 3
    config = tmp_path / "wogit.toml"
    config.write_text(f'[server]\nmax_login_failures = 3\nlogin_failure_window = {window}\n\n'
                      f'[auth]\nhtpasswd = "users.htpasswd"\n')
    srv = fresh_server(None, "--config", str(config))
    alice = basic("alice", pws["alice"])
    push(srv.url, alice, "repo/m/t0", b"bf map", b"a: 1\n")  # alice's credentials are verified now
    tag = srv.url + "/repo/m/t0"

    for attempt in range(3):
        assert_401(requests.get(tag, headers=basic("bob", f"guess-{attempt}")), f"wrong password {attempt + 1}")
    locked = time.monotonic()

    replies = {
        "wrong password": requests.get(tag, headers=basic("bob", "guess-4")),
        "right password, never verified": requests.get(tag, headers=basic("bob", pws["bob"])),
        "unknown user": requests.get(tag, headers=basic("mallory", "guess-5")),
        "right password, PUT": requests.put(srv.url + "/repo/m/metadata", data=b"a=1",
                                            headers=basic("bob", pws["bob"])),
    }
    for what, reply in replies.items():
        assert reply.status_code == 429, f"{what}: expected 429, got {reply.status_code} {reply.text}"
        assert re.fullmatch(r"[1-9][0-9]*", reply.headers.get("Retry-After", "")), f"{what}: {dict(reply.headers)}"
        assert 1 <= int(reply.headers["Retry-After"]) <= window
        assert list(reply.json()) == ["msg"]
    # verified credentials keep working, reads and writes
    assert requests.get(tag, headers=alice).status_code == 200
    assert requests.put(srv.url + "/repo/m/metadata", data=b"b=2", headers=alice).status_code == 200
    # another client address is not locked out (wrong password: 401, not 429)
    raw = request_from("127.0.0.2", srv.port, "/repo/m/t0", basic("bob", "guess-6"))
    assert status_of(raw) == 401, raw[:300]

    # after the window, the right password works again (and one wrong guess is a plain 401)
    time.sleep(max(0.0, locked + window + 0.3 - time.monotonic()))
    assert time.monotonic() - locked < window + 1.5
    reply = requests.get(tag, headers=basic("bob", pws["bob"]))
    assert reply.status_code == 200, f"after the window: {reply.status_code} {reply.text}"
    assert_401(requests.get(tag, headers=basic("mallory", "guess-7")), "a wrong guess after the window")
    log = srv.log_text()
    assert_no_secrets(log, [*pws.values(), *(f"guess-{i}" for i in range(8))], users)
    assert " - GET /repo/m/t0 429" in log


def test_brute_force_limit_from_the_environment(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    user_add(users, "gina", "Gina-pw-8")
    srv = fresh_server(None, "--auth-file", str(users),
                       env={"WOGIT_MAX_LOGIN_FAILURES": "2", "WOGIT_LOGIN_FAILURE_WINDOW": "30"})
    url = srv.url + "/repo/m/metadata"
    assert_401(requests.get(url, headers=basic("gina", "x1")), "1st")
    assert_401(requests.get(url, headers=basic("gina", "x2")), "2nd")
    reply = requests.get(url, headers=basic("gina", "Gina-pw-8"))
    assert reply.status_code == 429, reply.text
    assert 1 <= int(reply.headers["Retry-After"]) <= 30


def test_brute_force_default_limit_is_10(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    user_add(users, "hana", "Hana-pw-9")
    srv = fresh_server(None, "--auth-file", str(users))
    url = srv.url + "/repo/m/metadata"
    for attempt in range(10):
        assert_401(requests.get(url, headers=basic("hana", f"x{attempt}")), f"attempt {attempt + 1}")
    reply = requests.get(url, headers=basic("hana", "Hana-pw-9"))
    assert reply.status_code == 429, reply.text
    assert 50 <= int(reply.headers["Retry-After"]) <= 60


def test_brute_force_limit_above_the_default_is_honoured(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    user_add(users, "ivan", "Ivan-pw-10")
    config = tmp_path / "wogit.toml"
    config.write_text('[server]\nmax_login_failures = 20\n\n[auth]\nhtpasswd = "users.htpasswd"\n')
    srv = fresh_server(None, "--config", str(config))
    url = srv.url + "/repo/m/metadata"
    codes = [requests.get(url, headers=basic("ivan", f"x{attempt}")).status_code for attempt in range(19)]
    assert codes == [401] * 19, f"max_login_failures = 20, yet 19 wrong passwords got {codes}"
    assert requests.get(url, headers=basic("ivan", "Ivan-pw-10")).status_code == 404


# -- HTTPS ------------------------------------------------------------------------------------------

def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl in ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@needs_openssl
def test_https_round_trip_with_a_self_signed_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    users = tmp_path / "users.htpasswd"
    make_users(users, {"alice": "Alice-tls-1"})
    srv = AnyServer(tmp_path / "registry.git", "--auth-file", str(users), "--tls-cert", str(cert),
                    "--tls-key", str(key)).start()
    try:
        assert re.search(r" on https://127\.0\.0\.1:\d+$", srv.ready_line.strip()), srv.ready_line
        assert srv.url.startswith("https://")
        alice = basic("alice", "Alice-tls-1")
        v1 = requests.get(srv.url + "/v1", verify=str(cert))
        assert v1.status_code == 200 and v1.json()["authentication"] == "required"
        assert_401(requests.get(srv.url + "/repo/m/t0", verify=str(cert)), "anonymous over TLS")
        assert_401(requests.get(srv.url + "/repo/m/t0", headers=basic("alice", "nope"), verify=str(cert)), "wrong")

        map_data, config = b"\x00TLS map\xff" * 1000, b"tls: true\n"
        m, c = push(srv.url, alice, "repo/m/t0", map_data, config, verify=str(cert))
        reply = requests.get(srv.url + "/repo/m/t0", headers=alice, verify=str(cert))
        assert reply.status_code == 200, reply.text
        assert reply.headers["Wo-Map-Digest"] == m and reply.headers["Wo-Config-Digest"] == c
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(reply.content))) as tar:
            assert tar.getnames() == ["map", "metadata", "config"]
            assert tar.extractfile("map").read() == map_data
            assert tar.extractfile("config").read() == config
            assert tar.extractfile("metadata").read() == b""

        # Without trusting the certificate, the client refuses.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(srv.url + "/v1", timeout=5)
        # Plain HTTP to the HTTPS port: a plain-HTTP JSON 400 saying so.
        plain = requests.get(srv.url.replace("https://", "http://") + "/v1", headers=alice, timeout=5)
        assert plain.status_code == 400
        assert plain.json() == {"msg": "this port speaks HTTPS only: use https://"}
        assert re.fullmatch(r"[0-9a-f]{32}", plain.headers["X-Request-Id"])
        # and the server still serves HTTPS afterwards
        assert requests.get(srv.url + "/repo/m/t0", headers=alice, verify=str(cert)).status_code == 200
        # Connections that never start their handshake do not stop others (cheroot shakes hands in
        # its accept thread: one idle client there held every new connection for the timeout).
        host, port = srv.url.removeprefix("https://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(5)]
        try:
            started = time.monotonic()
            for _ in range(3):
                assert requests.get(srv.url + "/v1", verify=str(cert), timeout=5).status_code == 200
            assert time.monotonic() - started < 5
        finally:
            for sock in idle:
                sock.close()
    finally:
        srv.stop()
    log = srv.log_text()
    assert_no_secrets(log, ["Alice-tls-1"], users)
    assert " alice GET /repo/m/t0 200" in log


# -- configs that cannot be used stop the server at start-up ---------------------------------------

BAD_CONFIGS = {
    "TOML syntax": ("[server]\nport = 8080\n\n[access\nalice = { \"*\" = \"admin\" }\n", 4),
    "unquoted level": ('[auth]\nhtpasswd = "u"\n\n[access]\nalice = { "*" = admin }\n', 5),
    "unknown level inline": ('[server]\nport = 8080\n\n[auth]\nhtpasswd = "u"\n\n[access]\n'
                             'alice = { "*" = "admin" }\nbob   = { "maps-*" = "writer", "*" = "read" }\n', 9),
    "unknown level in a table": ('[auth]\nhtpasswd = "u"\n\n[access.bob]\n"maps-*" = "write"\n"*" = "reed"\n', 6),
    "level of the wrong case": ('[auth]\nhtpasswd = "u"\n[access]\ncarol = { "*" = "READ" }\n', 4),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_stops_the_server_naming_the_file_and_line(tmp_path, name):
    text, line = BAD_CONFIGS[name]
    config = tmp_path / "wogit.toml"
    config.write_text(text)
    start = time.monotonic()
    try:
        result = wogit("serve", "--config", str(config), "--port", "0", "--data", str(tmp_path / "r.git"),
                       timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: the server started with a bad config")
    elapsed = time.monotonic() - start
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert result.stdout == b"", result.stdout  # never said it was serving
    assert str(config) in stderr, stderr
    assert re.search(rf"\bline {line}\b", stderr), f"{name}: expected line {line} in {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert elapsed < 5, elapsed


# -- wogit user add / list / remove ----------------------------------------------------------------

def test_user_commands(tmp_path):
    users = tmp_path / "users.htpasswd"
    passwords = {"alice": "Alice-cli-1", "bob": "Bob-cli-2"}
    outputs = []
    for name, password in passwords.items():
        result = user_add(users, name, password)
        assert result.stdout == f"added user {name}\n".encode()
        outputs.append(result)
        assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    assert re.fullmatch(r"alice:\$2y\$04\$[./A-Za-z0-9]{53}\nbob:\$2y\$04\$[./A-Za-z0-9]{53}\n", text), text

    listing = wogit("user", "list", "--auth-file", str(users))
    assert (listing.returncode, listing.stdout, listing.stderr) == (0, b"alice\nbob\n", b"")
    outputs.append(listing)

    changed = user_add(users, "alice", "Alice-cli-3")
    assert changed.stdout == b"updated password of alice\n"
    assert users.read_text().splitlines()[0].startswith("alice:") and users.read_text() != text
    assert stat.S_IMODE(users.stat().st_mode) == 0o600

    before = users.read_bytes()
    missing = wogit("user", "remove", "nobody", "--auth-file", str(users))
    assert missing.returncode == 1, missing
    assert b"nobody" in missing.stderr
    assert users.read_bytes() == before
    outputs.append(missing)

    removed = wogit("user", "remove", "bob", "--auth-file", str(users))
    assert (removed.returncode, removed.stdout) == (0, b"removed user bob\n"), removed
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    listing = wogit("user", "list", "--auth-file", str(users))
    assert (listing.returncode, listing.stdout) == (0, b"alice\n")
    outputs += [changed, removed, listing]
    for result in outputs:
        for stream in (result.stdout, result.stderr):
            assert b"$2" not in stream, stream
            for password in (*passwords.values(), "Alice-cli-3"):
                assert password.encode() not in stream, stream


def test_user_commands_on_a_file_made_by_htpasswd(tmp_path):
    users = tmp_path / "users.htpasswd"
    make_users(users, {"alice": "Alice-h-1", "bob": "Bob-h-2"})
    os.chmod(users, 0o644)
    listing = wogit("user", "list", "--auth-file", str(users))
    assert (listing.returncode, listing.stdout) == (0, b"alice\nbob\n"), listing
    assert b"$2" not in listing.stdout + listing.stderr
    user_add(users, "carol", "Carol-h-3")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    lines = users.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob", "carol"]
    # htpasswd still reads what wogit wrote, and wogit what htpasswd wrote
    assert htpasswd_verifies(users, "carol", "Carol-h-3")
    assert wogit("user", "remove", "alice", "--auth-file", str(users)).returncode == 0
    assert wogit("user", "list", "--auth-file", str(users)).stdout == b"bob\ncarol\n"


def test_user_remove_without_a_file_exits_1(tmp_path):
    result = wogit("user", "remove", "ghost", "--auth-file", str(tmp_path / "none.htpasswd"))
    assert result.returncode == 1, result
    assert not (tmp_path / "none.htpasswd").exists()
