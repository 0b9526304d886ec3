"""Git over HTTP on the registry's own port: `git clone http://HOST:PORT/_git`, fetch and push.

Real git clients against real servers: an open registry, and one with the README's permission
model (read on every repository to clone, admin to push). Pushes go through the same pre-receive
rules as pushes into the data directory.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from conftest import TEST_CONFIG, TEST_MAP, Server, fsck, refs, sha256
from test_access_control import make_users
from test_hooks import AUTHOR, install_validator

MAP_DATA, CONFIG = b"map over http \x00\xff", b"over: http\n"
NO_PROMPT = {**os.environ, **AUTHOR, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}


def run_git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, env=NO_PROMPT, cwd=cwd, input=data, timeout=120)


def with_user(url: str, user: str | None, password: str | None = None) -> str:
    return url if user is None else url.replace("http://", f"http://{user}:{password}@")


def tag_through_git(clone: Path, path: str, map_data: bytes, config: bytes) -> list[str]:
    """Refspecs that push a map, a config and a tag made with git's plumbing."""
    def git(*args, data=None):
        return run_git("--git-dir", str(clone), *args, data=data).stdout.decode().strip()

    m = git("hash-object", "-w", "--stdin", data=map_data)
    c = git("hash-object", "-w", "--stdin", data=config)
    index_m = git("mktree", data=f"100644 blob {m}\tmap\n".encode())
    index_c = git("mktree", data=f"100644 blob {c}\tconfig\n".encode())
    tree = git("mktree", data=f"100644 blob {c}\tconfig\n100644 blob {m}\tmap\n".encode())
    md, cd = sha256(map_data), sha256(config)
    commit = git("commit-tree", tree, "-m", f"tag {path}\n\nmap_digest: {md}\nconfig_digest: {cd}")
    return [f"{index_m}:refs/wo/_maps/sha256/{md[7:]}", f"{index_c}:refs/wo/_configs/sha256/{cd[7:]}",
            f"{commit}:refs/wo/{path}"]


# -- an open registry --------------------------------------------------------------------------------

def test_clone_fetch_and_push_over_http(fresh_server, tmp_path):
    srv = fresh_server()
    srv.push("osm/city/v1", MAP_DATA, CONFIG)
    assert requests.put(srv.url + "/osm/city/metadata", data=b"license=ODbL-1.0").status_code == 200
    clone = tmp_path / "clone.git"
    cloned = run_git("clone", "--mirror", srv.url + "/_git", str(clone))
    assert cloned.returncode == 0, cloned.stderr
    assert refs(clone) == refs(srv.data)
    fsck(clone)
    assert run_git("--git-dir", str(clone), "cat-file", "blob", "refs/wo/osm/city/v1:map").stdout == MAP_DATA

    # fetch brings what was added since
    srv.push("osm/city/v2", TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes())
    fetched = run_git("--git-dir", str(clone), "fetch", "--prune", srv.url + "/_git", "+refs/wo/*:refs/wo/*")
    assert fetched.returncode == 0, fetched.stderr
    assert refs(clone) == refs(srv.data)

    # push a new tag made with git: accepted, served by the API at once
    specs = tag_through_git(clone, "game/level/v1", b"level bytes", b"level: 1\n")
    pushed = run_git("--git-dir", str(clone), "push", srv.url + "/_git", *specs)
    assert pushed.returncode == 0, pushed.stderr
    reply = requests.get(srv.url + "/game/level/v1")
    assert reply.status_code == 200 and reply.headers["Wo-Map-Digest"] == sha256(b"level bytes")
    with tarfile.open(fileobj=io.BytesIO(reply.content)) as archive:
        assert archive.extractfile("map").read() == b"level bytes"
    assert refs(srv.data) == {**refs(clone), **dict(reversed(spec.split(":")) for spec in specs)}

    # a push that breaks the rules is refused with git's own answer, the registry unchanged
    before = refs(srv.data)
    bad = run_git("--git-dir", str(clone), "push", srv.url + "/_git", "refs/wo/osm/city/v1:refs/heads/main")
    assert bad.returncode == 1
    assert b"remote: wogit: refusing refs/heads/main: outside the registry's namespaces" in bad.stderr
    assert b"[remote rejected] refs/wo/osm/city/v1 -> main (pre-receive hook declined)" in bad.stderr
    moved = run_git("--git-dir", str(clone), "push", "--force", srv.url + "/_git",
                    "refs/wo/osm/city/v2:refs/wo/osm/city/v1")
    assert moved.returncode == 1
    assert b"tags are immutable: an existing tag cannot be moved" in moved.stderr
    assert refs(srv.data) == before
    fsck(srv.data)


def test_only_the_smart_endpoints_are_served(fresh_server):
    srv = fresh_server()
    for path in ("/_git/info/refs", "/_git/info/refs?service=git-upload-archive"):
        reply = requests.get(srv.url + path)
        assert (reply.status_code, reply.headers["Content-Type"]) == (404, "application/json"), path
        assert reply.json() == {"msg": "'info/refs' is not a git smart-HTTP endpoint "
                                       "(info/refs?service=..., git-upload-pack, git-receive-pack)"}, path
    for path in ("/_git/HEAD", "/_git/objects/info/packs", "/_git/config", "/_git/hooks/pre-receive"):
        reply = requests.get(srv.url + path)
        assert (reply.status_code, reply.headers["Content-Type"]) == (404, "application/json"), path
        assert reply.json() == {"msg": f"no such resource: GET {path}"}, path
    advert = requests.get(srv.url + "/_git/info/refs?service=git-upload-pack")
    assert advert.status_code == 200
    assert advert.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
    assert advert.content.startswith(b"001e# service=git-upload-pack\n0000")


# Found by reliability/fuzz.py: one route served all of /_git with GET and POST, so Allow said
# "GET,POST" everywhere, and git http-backend's own 405, 403 and 415 (HTML, text) reached clients.
@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/_git/git-upload-pack", "POST"), ("GET", "/_git/git-upload-pack", "POST"),
    ("GET", "/_git/git-receive-pack", "POST"), ("OPTIONS", "/_git/git-receive-pack", "POST"),
    ("POST", "/_git/info/refs?service=git-upload-pack", "GET"), ("OPTIONS", "/_git/info/refs", "GET"),
    ("DELETE", "/_git/info/refs?service=git-receive-pack", "GET")])
def test_each_git_endpoint_has_its_one_method(server, method, path, allow):
    reply = requests.request(method, server.url + path, data=b"0000" if method in ("PUT", "POST") else None)
    assert (reply.status_code, reply.headers["Allow"], reply.headers["Content-Type"]) == (405, allow, "application/json")
    assert reply.json() == {"msg": f"{method} is not allowed on {path.split('?')[0]}; allowed: {allow}"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-git-receive-pack-request",
                                          "application/x-git-upload-pack-request; charset=utf-8"])
def test_a_git_request_of_another_content_type_is_415_json(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    reply = requests.post(server.url + "/_git/git-upload-pack", data=b"0000", headers=headers)
    assert (reply.status_code, reply.headers["Content-Type"]) == (415, "application/json")
    assert reply.json() == {"msg": "a git-upload-pack request has Content-Type application/x-git-upload-pack-request, "
                                   f"not {content_type or 'none'}"}


def test_git_sees_the_service_the_registry_chose(server):
    """With the service named twice, the gate and git answer the first one (git read the last: 403)."""
    reply = requests.get(server.url + "/_git/info/refs?service=git-upload-pack&service=git-receive-pack")
    assert (reply.status_code, reply.headers["Content-Type"]) == (200, "application/x-git-upload-pack-advertisement")
    assert reply.content.startswith(b"001e# service=git-upload-pack\n0000")


def test_the_git_path_is_never_a_repository(fresh_server):
    srv = fresh_server()
    m, c = srv.upload("map", MAP_DATA), srv.upload("config", CONFIG)
    reply = srv.tag("_git/info/refs", m, c)  # git's path: a PUT is not allowed there
    assert (reply.status_code, reply.headers["Allow"]) == (405, "GET")
    assert reply.json() == {"msg": "PUT is not allowed on /_git/info/refs; allowed: GET"}
    reply = srv.tag("_git/x/y", m, c)  # nothing is there
    assert (reply.status_code, reply.json()) == (404, {"msg": "no such resource: PUT /_git/x/y"})
    assert not [ref for ref in refs(srv.data) if "_git" in ref]


# -- with users and permissions -----------------------------------------------------------------------

ACCESS = """
[auth]
htpasswd = "users.htpasswd"

[access]
alice = { "*" = "admin" }
bob   = { "maps-*" = "write", "*" = "read" }
carol = { "*" = "read" }
dave  = { "maps-*" = "admin" }
"*"   = { "public-*" = "read" }
"""
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    base = tmp_path_factory.mktemp("git-http-auth")
    make_users(base / "users.htpasswd", PASSWORDS)
    (base / "wogit.toml").write_text(ACCESS)
    srv = Server(base / "registry.git", "--config", str(base / "wogit.toml"),
                 env={"HOOK_ENV_LOG": str(base / "hook-env.log")}).start()
    admin = ("alice", PASSWORDS["alice"])
    m = requests.put(srv.url + "/blobs/upload", data=MAP_DATA, auth=admin).headers["Wo-Map-Digest"]
    c = requests.put(srv.url + "/configs/upload", data=CONFIG, auth=admin).headers["Wo-Config-Digest"]
    assert requests.put(srv.url + "/maps-a/city/v1", json={"map_digest": m, "config_digest": c},
                        auth=admin).status_code == 201
    yield srv
    srv.stop()


@pytest.mark.parametrize("user, password, status", [
    (None, None, 401), ("alice", "wrong", 401), ("nobody", "x", 401),
    ("dave", "dave-pw", 403),  # admin on maps-*, but a clone holds every repository
    ("carol", "carol-pw", 200), ("bob", "bob-pw", 200), ("alice", "alice-pw", 200),
])
def test_clone_needs_read_on_every_repository(guarded, tmp_path, user, password, status):
    auth = (user, password) if user else None
    reply = requests.get(guarded.url + "/_git/info/refs?service=git-upload-pack", auth=auth)
    assert reply.status_code == status
    if status != 200:
        assert reply.headers["Content-Type"] == "application/json"
        assert set(reply.json()) == {"msg"}
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="wogit", charset="UTF-8"'
    if status == 403:
        assert reply.json() == {"msg": "user 'dave' may not read on every repository"}
    cloned = run_git("clone", "--mirror", with_user(guarded.url, user, password) + "/_git", str(tmp_path / "c.git"))
    assert (cloned.returncode == 0) == (status == 200), cloned.stderr
    if status == 200:
        assert refs(tmp_path / "c.git") == refs(guarded.data)
    elif status == 401:
        assert b"Authentication failed" in cloned.stderr or b"could not read Username" in cloned.stderr
    else:
        assert b"The requested URL returned error: 403" in cloned.stderr


@pytest.mark.parametrize("user, status", [(None, 401), ("carol", 403), ("bob", 403), ("dave", 403), ("alice", 200)])
def test_push_needs_admin_on_every_repository(guarded, tmp_path, user, status):
    password = PASSWORDS.get(user)
    auth = (user, password) if user else None
    reply = requests.get(guarded.url + "/_git/info/refs?service=git-receive-pack", auth=auth)
    assert reply.status_code == status
    if status == 403:
        assert reply.json() == {"msg": f"user {user!r} may not admin on every repository"}
    reply = requests.post(guarded.url + "/_git/git-receive-pack", data=b"0000", auth=auth,
                          headers={"Content-Type": "application/x-git-receive-pack-request"})
    assert reply.status_code == status
    clone = tmp_path / "c.git"
    assert run_git("clone", "--mirror", with_user(guarded.url, "alice", "alice-pw") + "/_git", str(clone)).returncode == 0
    before = refs(guarded.data)
    tag = f"maps-a/city/by-{user or 'anonymous'}"
    pushed = run_git("--git-dir", str(clone), "push", with_user(guarded.url, user, password) + "/_git",
                     *tag_through_git(clone, tag, MAP_DATA, CONFIG))
    assert (pushed.returncode == 0) == (status == 200), pushed.stderr
    after = refs(guarded.data)
    if status == 200:
        assert after == {**before, f"refs/wo/{tag}": after[f"refs/wo/{tag}"]}
    else:
        assert after == before


def test_pushes_name_the_user_to_hooks_and_never_pass_credentials(guarded, tmp_path):
    log = Path(os.path.dirname(guarded.data)) / "hook-env.log"
    install_validator(guarded.data, "wo-validate-tag", '#!/bin/sh\nenv >> "$HOOK_ENV_LOG"\n'
                                                       'echo "---" >> "$HOOK_ENV_LOG"\nexit 0\n')
    try:
        clone = tmp_path / "c.git"
        assert run_git("clone", "--mirror", with_user(guarded.url, "alice", "alice-pw") + "/_git",
                       str(clone)).returncode == 0
        pushed = run_git("--git-dir", str(clone), "push", with_user(guarded.url, "alice", "alice-pw") + "/_git",
                         *tag_through_git(clone, "maps-a/city/hooked", MAP_DATA, CONFIG))
        assert pushed.returncode == 0, pushed.stderr
    finally:
        (guarded.data / "hooks" / "wo-validate-tag").unlink()
    env = dict(line.split("=", 1) for line in log.read_text().split("---")[0].splitlines() if "=" in line)
    assert env["WO_USER"] == "alice"
    assert env["WO_TAG"] == "hooked" and env["WO_REPOSITORY"] == "maps-a" and env["WO_MAP"] == "city"
    assert env["WO_MAP_DIGEST"] == sha256(MAP_DATA)
    text = log.read_text()
    assert "alice-pw" not in text and "Basic " not in text and "AUTHORIZATION" not in text.upper().replace(
        "REMOTE_USER", "")


def test_a_push_body_cut_short_is_a_client_error_and_changes_nothing(fresh_server):
    from conftest import json_body_of, raw_request, status_of

    srv = fresh_server()
    srv.push("osm/city/v1", MAP_DATA, CONFIG)
    before = refs(srv.data)
    answer = raw_request(srv.url, b"POST /_git/git-receive-pack HTTP/1.1\r\nHost: t\r\n"
                                  b"Content-Type: application/x-git-receive-pack-request\r\n"
                                  b"Content-Length: 1000\r\n\r\n0123456789", shutdown_write=True)
    assert status_of(answer) == 400
    assert json_body_of(answer) == {"msg": "the git request ended after 10 of 1000 bytes"}
    assert refs(srv.data) == before
    assert "Traceback" not in srv.log_text()
