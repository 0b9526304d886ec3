"""Read replicas and push mirrors: real servers replicating with real git over HTTP.

A replica fetches from its primary's /_git and serves every read; it refuses writes naming the
primary. A push mirror gets every change pushed, catches up after its remote was unreachable,
and never slows or fails a write. Waits poll with a deadline; no timing is asserted beyond
"within the documented bound".
"""

from __future__ import annotations

import json
import os
import socket
import sys
import subprocess
import time
from pathlib import Path

import requests
from conftest import TEST_CONFIG, TEST_MAP, fsck, git_blob_id, index_tree_id, refs
from test_access_control import make_users
from test_git_http import run_git, tag_through_git

MAP_DATA, CONFIG = b"replicated map \x00\x01", b"replicated: yes\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def served(url: str, path: str):
    return lambda: (reply := requests.get(f"{url}/{path}")).status_code == 200 and reply


def test_a_replica_serves_new_tags_and_refuses_writes(fresh_server):
    primary = fresh_server()
    primary.push("osm/city/v1", MAP_DATA, CONFIG)
    replica = fresh_server(None, "--replica-of", primary.url, "--replica-interval", "0.5")
    # What the primary had at the replica's start is served at once (the first fetch comes first).
    assert requests.get(replica.url + "/osm/city/v1").content == requests.get(primary.url + "/osm/city/v1").content

    m, c = primary.push("osm/city/v2", TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes())
    assert requests.put(primary.url + "/osm/city/metadata", data=b"license=ODbL-1.0").status_code == 200
    started = time.monotonic()
    reply = wait_for(served(replica.url, "osm/city/metadata/license"), 10, "metadata on the replica")
    assert reply.text == "ODbL-1.0"
    assert time.monotonic() - started < 10
    assert requests.get(replica.url + "/osm/city/v2").content == requests.get(primary.url + "/osm/city/v2").content
    assert refs(replica.data) == refs(primary.data)

    # writes: 403, naming the primary; nothing changes
    read_only = {"msg": f"this registry is a read-only replica of {primary.url}; send writes to the primary"}
    before = refs(replica.data)
    for method, path, body in [("PUT", "/blobs/upload", b"new map"), ("PUT", "/configs/upload", b"a: 1\n"),
                               ("PUT", "/osm/city/v3", f'{{"map_digest": "{m}", "config_digest": "{c}"}}'.encode()),
                               ("PUT", "/osm/city/metadata", b"a=1"), ("DELETE", "/osm/city/metadata/license", None),
                               ("GET", "/_git/info/refs?service=git-receive-pack", None)]:
        reply = requests.request(method, replica.url + path, data=body)
        assert (reply.status_code, reply.json()) == (403, read_only), (method, path)
    assert refs(replica.data) == before

    # its status: the role, the primary, the lag
    v1 = requests.get(replica.url + "/v1").json()["replication"]
    assert v1["role"] == "replica" and v1["primary"] == primary.url
    assert 0 <= v1["lag_seconds"] < 5
    status = requests.get(replica.url + "/_status").json()
    assert status["role"] == "replica" and status["push_mirrors"] == [] and status["notify"] == []
    assert status["replica"]["primary"] == primary.url and status["replica"]["last_error"] is None
    assert status["replica"]["fetches"] >= 2 and status["replica"]["interval_seconds"] == 0.5
    assert requests.get(primary.url + "/v1").json()["replication"] == {"role": "primary"}
    fsck(replica.data)

    # a replica can be cloned like its primary
    assert run_git("clone", "--mirror", replica.url + "/_git", str(replica.data.parent / "c.git")).returncode == 0
    assert refs(replica.data.parent / "c.git") == refs(primary.data)


def test_a_notified_replica_fetches_at_once(fresh_server):
    port = free_port()
    replica_url = f"http://127.0.0.1:{port}"
    primary = fresh_server(None, "--notify", replica_url)
    replica = fresh_server(None, "--port", str(port), "--replica-of", primary.url, "--replica-interval", "3600")
    assert replica.url == replica_url
    primary.push("osm/city/v1", MAP_DATA, CONFIG)
    # The replica polls once an hour: only the primary's notification can bring the tag this soon.
    wait_for(served(replica.url, "osm/city/v1"), 10, "the tag on a notified replica")
    assert requests.post(primary.url + "/_replica/refresh").status_code == 404  # a primary is no replica
    assert requests.post(replica.url + "/_replica/refresh").json() == {"refresh": "scheduled"}


def test_a_replica_of_a_guarded_primary_uses_its_credentials(fresh_server, tmp_path):
    make_users(tmp_path / "users.htpasswd", {"admin": "admin-pw", "mirror": "mirror-pw"})
    (tmp_path / "primary.toml").write_text('[auth]\nhtpasswd = "users.htpasswd"\n'
                                           '[access]\nadmin = { "*" = "admin" }\nmirror = { "*" = "read" }\n')
    primary = fresh_server(None, "--config", str(tmp_path / "primary.toml"))
    admin = ("admin", "admin-pw")
    m = requests.put(primary.url + "/blobs/upload", data=MAP_DATA, auth=admin).headers["Wo-Map-Digest"]
    c = requests.put(primary.url + "/configs/upload", data=CONFIG, auth=admin).headers["Wo-Config-Digest"]
    assert requests.put(primary.url + "/osm/city/v1", json={"map_digest": m, "config_digest": c},
                        auth=admin).status_code == 201

    (tmp_path / "password").write_text("mirror-pw\n")
    (tmp_path / "replica.toml").write_text(f'[server]\nreplica_of = "{primary.url}"\nreplica_user = "mirror"\n'
                                           'replica_password_file = "password"\nreplica_interval = 0.5\n')
    replica = fresh_server(None, "--config", str(tmp_path / "replica.toml"))
    assert requests.get(replica.url + "/osm/city/v1").headers["Wo-Map-Digest"] == m
    assert "mirror-pw" not in replica.log_text() and "bWlycm9y" not in replica.log_text()

    # Without credentials the fetch fails, and the status says why.
    lost = fresh_server(None, "--replica-of", primary.url, "--replica-interval", "0.5")
    assert requests.get(lost.url + "/osm/city/v1").status_code == 404
    status = requests.get(lost.url + "/_status").json()["replica"]
    assert status["fetches"] == 0 and status["failures"] >= 1 and status["lag_seconds"] is None
    assert "Authentication failed" in status["last_error"] or "could not read Username" in status["last_error"]
    assert requests.get(lost.url + "/v1").json()["replication"]["lag_seconds"] is None


def mirrors_all(primary, field: str):
    """A check: the primary's status once every push mirror's ``field`` is truthy."""
    def check():
        status = requests.get(primary.url + "/_status").json()
        return status if all(mirror[field] for mirror in status["push_mirrors"]) else None
    return check


def test_a_push_mirror_catches_up_after_its_remote_was_unavailable(fresh_server, tmp_path):
    port = free_port()
    target_url = f"http://127.0.0.1:{port}"
    backup = tmp_path / "backup.git"  # a plain bare repository, made later
    primary = fresh_server(None, "--push-mirror", target_url + "/_git", "--push-mirror", str(backup))
    primary.push("osm/city/v1", MAP_DATA, CONFIG)  # writes go on while no mirror answers
    assert requests.put(primary.url + "/osm/city/metadata", data=b"a=1").status_code == 200
    status = wait_for(mirrors_all(primary, "failures"), 10, "both mirrors failing")
    for mirror in status["push_mirrors"]:
        assert mirror["in_sync"] is False and mirror["last_push"] is None and mirror["last_error"]
        assert mirror["retry_in_seconds"] is not None
    assert [m["url"] for m in status["push_mirrors"]] == [target_url + "/_git", str(backup)]

    # The remotes come up: another registry on the mirror's port, and the backup repository.
    target = fresh_server(None, "--port", str(port))
    subprocess.run(["git", "init", "-q", "--bare", str(backup)], check=True)
    primary.push("osm/city/v2", TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes())
    wait_for(served(target.url, "osm/city/v2"), 20, "the mirror registry serving the new tag")
    wait_for(lambda: refs(backup) == refs(primary.data), 20, "the backup repository catching up")
    wait_for(lambda: refs(target.data) == refs(primary.data), 20, "the mirror registry catching up")
    assert requests.get(target.url + "/osm/city/metadata/a").text == "1"
    assert requests.get(target.url + "/osm/city/v1").content == requests.get(primary.url + "/osm/city/v1").content
    status = wait_for(mirrors_all(primary, "in_sync"), 10, "both mirrors in sync")
    for mirror in status["push_mirrors"]:
        assert mirror["last_error"] is None and mirror["pushes"] >= 1 and mirror["retry_in_seconds"] is None
    fsck(target.data)
    fsck(backup)

    # Changes pushed into the primary with git reach the mirrors too.
    clone = tmp_path / "clone.git"
    assert run_git("clone", "--mirror", primary.url + "/_git", str(clone)).returncode == 0
    pushed = run_git("--git-dir", str(clone), "push", primary.url + "/_git",
                     *tag_through_git(clone, "game/level/v1", b"level", b"level: 1\n"))
    assert pushed.returncode == 0, pushed.stderr
    wait_for(served(target.url, "game/level/v1"), 20, "a git-pushed tag on the mirror")
    assert "Traceback" not in primary.log_text()


def test_replication_settings_are_checked_at_start(tmp_path):
    def start(*args):
        return subprocess.run([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path / "r.git"), "--port", "0", *args],
                              capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent)

    result = start("--replica-of", "primary:8080")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("wogit: --replica-of needs the primary's http(s):// base URL, not 'primary:8080'")
    result = start("--replica-of", "http://127.0.0.1:9", "--push-mirror", "/tmp/x.git")
    assert result.stderr.strip().endswith("wogit: a replica takes no writes: it has no push mirrors and notifies no replicas")


def test_a_push_mirror_to_a_guarded_registry_sends_the_urls_credentials(fresh_server, tmp_path):
    make_users(tmp_path / "users.htpasswd", {"pusher": "pusher:pw ü"})
    (tmp_path / "target.toml").write_text('[auth]\nhtpasswd = "users.htpasswd"\n[access]\npusher = { "*" = "admin" }\n')
    target = fresh_server(None, "--config", str(tmp_path / "target.toml"))
    url = target.url.replace("http://", "http://pusher:pusher%3Apw%20%C3%BC@") + "/_git"
    primary = fresh_server(None, "--push-mirror", url)
    primary.push("osm/city/v1", MAP_DATA, CONFIG)
    wait_for(lambda: refs(target.data) == refs(primary.data), 20, "the guarded mirror catching up")
    status = requests.get(primary.url + "/_status").json()["push_mirrors"][0]
    assert status["url"] == target.url.replace("http://", "http://pusher:***@") + "/_git"
    assert "pusher:pw" not in primary.log_text() and "pusher%3Apw" not in primary.log_text()


def test_deletions_and_gc_sweeps_reach_a_mirror_registry_through_its_rules(fresh_server):
    """A tag's deletion travels with its record in the map's history, and a swept index ref only
    when no tag uses it: the mirror registry's pre-receive rules accept both."""
    target = fresh_server()
    primary = fresh_server(None, "--push-mirror", target.url + "/_git", "--mirror-interval", "0.2")
    m, c = primary.push("osm/city/v1", b"map one", CONFIG)
    primary.push("osm/city/v2", b"map two", CONFIG)
    wait_for(lambda: refs(target.data) == refs(primary.data), 20, "the mirror catching up")
    assert requests.delete(primary.url + "/osm/city/v1").status_code == 200
    wait_for(lambda: refs(target.data) == refs(primary.data), 20, "the deletion on the mirror")
    assert requests.get(target.url + "/osm/city/v1").status_code == 404
    history = requests.get(target.url + "/osm/city/_history").json()["history"]
    assert [(h["action"], h["tag"]) for h in history][:1] == [("delete-tag", "v1")]
    for oid in (git_blob_id(b"map one"), index_tree_id("map", b"map one")):
        path = primary.data / "objects" / oid[:2] / oid[2:]
        os.utime(path, (time.time() - 7200,) * 2)
    swept = subprocess.run([sys.executable, "-m", "wogit", "gc", "--data", str(primary.data), "--json"],
                           capture_output=True, text=True, check=True)
    assert [s["digest"] for s in json.loads(swept.stdout)["swept"]] == [m]
    primary.push("osm/city/v3", b"map three", CONFIG)  # the mirror is pushed after the next write
    wait_for(lambda: refs(target.data) == refs(primary.data), 20, "the sweep on the mirror")
    assert f"refs/wo/_maps/sha256/{m[7:]}" not in refs(target.data)
    status = requests.get(primary.url + "/_status").json()["push_mirrors"][0]
    assert status["last_error"] is None
    fsck(target.data)
