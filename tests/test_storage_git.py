"""The registry as git sees it: exact refs and objects, fsck, restarts, crashes, mirrors, gc.

Every test runs a real `wogit serve` on a data directory of its own and inspects that bare
repository with the real `git` command line.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import TEST_CONFIG, TEST_MAP, fsck, git, git_blob_id, index_tree_id, refs, sha256

from wogit import names
from wogit import refs as refs_module

# -- helpers ------------------------------------------------------------------


def hash_object(data: bytes) -> str:
    """What `git hash-object` says the blob id of ``data`` is."""
    return subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True,
                          check=True).stdout.decode().strip()


def cat_blob(data_dir, oid: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(data_dir), "cat-file", "blob", oid],
                          capture_output=True, check=True).stdout


def ls_tree(data_dir, treeish: str) -> list[tuple[str, str, str, str]]:
    """(mode, type, oid, name) of each entry, in git's order."""
    out = git(data_dir, "ls-tree", treeish).stdout
    rows = []
    for line in out.splitlines():
        meta, name = line.split("\t", 1)
        mode, kind, oid = meta.split(" ")
        rows.append((mode, kind, oid, name))
    return rows


def rev_list_parents(data_dir, ref: str) -> list[list[str]]:
    """`git rev-list --parents REF`: [commit, parent...] per commit, newest first."""
    return [line.split() for line in git(data_dir, "rev-list", "--parents", ref).stdout.splitlines()]


def members(tarball: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, bytes) of each member of a tar.gz, in order; all must be regular files."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        found = tar.getmembers()
        assert all(m.isreg() for m in found), [(m.name, m.type) for m in found]
        return [(m.name, m.mode, tar.extractfile(m).read()) for m in found]


def put_metadata(url: str, path: str, body: str, timeout: float = 30) -> requests.Response:
    return requests.put(f"{url}/{path}/metadata", data=body.encode("utf-8"),
                        headers={"Content-Type": "text/plain"}, timeout=timeout)


def mirror(data: Path, target: Path) -> Path:
    """`git clone --mirror file://DATA TARGET`: a real transport, no hardlinks."""
    subprocess.run(["git", "clone", "--quiet", "--mirror", f"file://{data}", str(target)],
                   check=True, capture_output=True)
    return target


ANSWER_HEADERS = ("Content-Type", "Content-Disposition", "ETag", "Last-Modified",
                  "Wo-Map-Digest", "Wo-Config-Digest")


def answers(url: str, tags: list[str], maps: list[str], keys: list[str]) -> dict:
    """Everything a client can read about these tags and maps, as comparable values."""
    seen = {}
    for path in tags:
        got = requests.get(f"{url}/{path}")
        seen[("GET", path)] = (got.status_code, {h: got.headers.get(h) for h in ANSWER_HEADERS}, got.content)
        head = requests.head(f"{url}/{path}")
        seen[("HEAD", path)] = (head.status_code, {h: head.headers.get(h) for h in ANSWER_HEADERS}, head.content)
        cached = requests.get(f"{url}/{path}", headers={"If-None-Match": got.headers.get("ETag", "")})
        seen[("304", path)] = (cached.status_code, cached.headers.get("ETag"), cached.content)
    for path in maps:
        whole = requests.get(f"{url}/{path}/metadata")
        seen[("META", path)] = (whole.status_code, whole.headers.get("Content-Type"), whole.content)
        for key in keys:
            got = requests.get(f"{url}/{path}/metadata/{key}")
            body = got.content if got.status_code == 200 else got.json()["msg"]
            seen[("KEY", path, key)] = (got.status_code, got.headers.get("Content-Type"), body)
    return seen


def assert_reuploads_conflict(url: str, uploads: list[tuple[str, bytes]]) -> None:
    for kind, data in uploads:
        path, header = ("/blobs/upload", "Wo-Map-Digest") if kind == "map" else ("/configs/upload", "Wo-Config-Digest")
        reply = requests.put(url + path, data=data)
        assert (reply.status_code, reply.headers.get(header)) == (409, sha256(data)), (kind, reply.text)
        assert reply.headers["Content-Type"] == "application/json"
        assert set(reply.json()) == {"msg"}


def lock_files(data_dir) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files if f.endswith(".lock")]


# -- the layout -----------------------------------------------------------------


def test_exact_refs_and_tag_commit_after_push_and_metadata(fresh_server):
    srv = fresh_server()
    map_bytes, config_bytes = TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes()
    m, c = srv.push("osm/test-area/v1", map_bytes, config_bytes)
    assert (m, c) == (sha256(map_bytes), sha256(config_bytes))
    assert put_metadata(srv.url, "osm/test-area", "license=ODbL-1.0 source=geofabrik").status_code == 200

    map_oid, config_oid = hash_object(map_bytes), hash_object(config_bytes)
    found = refs(srv.data)
    tag_commit = found["refs/wo/osm/test-area/v1"]
    meta_commit = found["refs/wo/_metadata/osm/test-area"]
    assert found == {
        "refs/wo/_maps/sha256/" + m.removeprefix("sha256:"): index_tree_id("map", map_bytes),
        "refs/wo/_configs/sha256/" + c.removeprefix("sha256:"): index_tree_id("config", config_bytes),
        "refs/wo/osm/test-area/v1": tag_commit,
        "refs/wo/_metadata/osm/test-area": meta_commit,
    }
    for ref in found:
        assert names.parse_ref(ref) is not None, ref

    # the index refs point at one-entry trees holding blobs of exactly the uploaded bytes
    assert ls_tree(srv.data, found["refs/wo/_maps/sha256/" + m[7:]]) == [("100644", "blob", map_oid, "map")]
    assert ls_tree(srv.data, found["refs/wo/_configs/sha256/" + c[7:]]) == [("100644", "blob", config_oid, "config")]
    assert git(srv.data, "cat-file", "-t", map_oid).stdout == "blob\n"
    assert git(srv.data, "cat-file", "-t", config_oid).stdout == "blob\n"
    assert cat_blob(srv.data, map_oid) == map_bytes
    assert cat_blob(srv.data, config_oid) == config_bytes

    # the tag: a commit without parent, tree exactly {config, map}, message with both digests
    assert git(srv.data, "cat-file", "-t", tag_commit).stdout == "commit\n"
    assert rev_list_parents(srv.data, tag_commit) == [[tag_commit]]
    assert ls_tree(srv.data, tag_commit) == [
        ("100644", "blob", config_oid, "config"),
        ("100644", "blob", map_oid, "map"),
    ]
    message = git(srv.data, "log", "-1", "--format=%B", tag_commit).stdout
    assert f"map_digest: {m}" in message.splitlines()
    assert f"config_digest: {c}" in message.splitlines()
    assert git(srv.data, "log", "-1", "--format=%an <%ae>|%cn <%ce>", tag_commit).stdout == \
        "wogit <wogit@localhost>|wogit <wogit@localhost>\n"

    # the metadata: one commit (the first change), tree = keys, blobs = values
    assert rev_list_parents(srv.data, meta_commit) == [[meta_commit]]
    license_oid, source_oid = hash_object(b"ODbL-1.0"), hash_object(b"geofabrik")
    assert ls_tree(srv.data, meta_commit) == [
        ("100644", "blob", license_oid, "license"),
        ("100644", "blob", source_oid, "source"),
    ]

    # the archive holds exactly these blobs
    tarball = requests.get(f"{srv.url}/osm/test-area/v1")
    assert tarball.status_code == 200
    assert members(tarball.content) == [
        ("map", 0o644, map_bytes),
        ("metadata", 0o644, b"license=ODbL-1.0\nsource=geofabrik\n"),
        ("config", 0o644, config_bytes),
    ]
    fsck(srv.data)


def test_metadata_commit_chain_one_commit_per_change(fresh_server):
    srv = fresh_server()
    srv.push("r/m/v1")
    ref = "refs/wo/_metadata/r/m"
    steps = [
        ("PUT", "a=1 b=2", {"a": "1", "b": "2"}, ["a=1", "b=2"]),
        ("PUT", "c=x=y", {"a": "1", "b": "2", "c": "x=y"}, ["c=x=y"]),
        ("PUT", "a=4\r\nn.e.sted=1", {"a": "4", "b": "2", "c": "x=y"}, ["a=4"]),
        ("DELETE", "b", {"a": "4", "c": "x=y"}, ["b"]),
        ("PUT", "b=back\tz=\u00e9t\u00e9", {"a": "4", "b": "back", "c": "x=y", "z": "\u00e9t\u00e9"}, ["b=back"]),
    ]
    heads = []
    for method, body, expected, described in steps:
        if method == "PUT":
            reply = put_metadata(srv.url, "r/m", body)
        else:
            reply = requests.delete(f"{srv.url}/r/m/metadata/{body}")
        assert reply.status_code == 200, reply.text
        head = refs(srv.data)[ref]
        assert head not in heads
        heads.append(head)
        # tree entries = keys (all 100644 blobs), blob contents = values
        tree = ls_tree(srv.data, head)
        assert [name for _, _, _, name in tree] == sorted(expected)
        for mode, kind, oid, name in tree:
            assert (mode, kind) == ("100644", "blob")
            assert cat_blob(srv.data, oid) == expected[name].encode("utf-8")
            assert oid == hash_object(expected[name].encode("utf-8"))
        # the message says what changed
        message = git(srv.data, "log", "-1", "--format=%B", head).stdout
        for text in described:
            assert text in message, (text, message)
        # and the API answers the same
        for key, value in expected.items():
            got = requests.get(f"{srv.url}/r/m/metadata/{key}")
            assert (got.status_code, got.content) == (200, value.encode("utf-8"))

    # linear: each commit's only parent is the previous head
    chain = rev_list_parents(srv.data, ref)
    assert chain == [[heads[4], heads[3]], [heads[3], heads[2]], [heads[2], heads[1]],
                     [heads[1], heads[0]], [heads[0]]]
    assert git(srv.data, "log", "--format=%H", ref).stdout.split() == heads[::-1]
    assert requests.get(f"{srv.url}/r/m/metadata/n.e.sted").status_code == 404
    fsck(srv.data)


def test_fsck_strict_clean_after_mixed_sequence(fresh_server):
    srv = fresh_server()
    url = srv.url
    m1, c1 = srv.push("osm/area/v1", b"map one", b"a: 1\n")
    m2 = srv.upload("map", b"map two")
    assert requests.put(url + "/blobs/upload", data=b"map one").status_code == 409
    assert requests.put(url + "/configs/upload", data=b"map one").status_code == 201  # same bytes, other kind
    assert requests.put(url + "/blobs/upload", data=b"mismatch",
                        headers={"Wo-Map-Digest": sha256(b"other")}).status_code == 400
    assert requests.put(url + "/configs/upload", data=b"\xff\xfe").status_code == 400
    assert requests.put(url + "/blobs/upload", data=b"").status_code == 400
    assert srv.tag("osm/area/v2", m2, c1).status_code == 201
    assert srv.tag("osm/area/v1", m2, c1).status_code == 409
    assert srv.tag("osm/area/v3", sha256(b"never uploaded"), c1).status_code == 404
    assert srv.tag("osm/area/v3", c1, c1).status_code == 404
    assert srv.tag("osm/area/v1.lock", m1, c1).status_code == 400
    assert srv.tag("osm/other/v1", m1, c1).status_code == 201
    assert put_metadata(url, "osm/area", "a=1 b=2 x.y=3").status_code == 200
    assert put_metadata(url, "osm/area", "bad\x01=1").status_code == 400
    assert put_metadata(url, "osm/area", "c=\x01").status_code == 400
    assert put_metadata(url, "osm/missing", "a=1").status_code == 404
    assert requests.delete(f"{url}/osm/area/metadata/a").status_code == 200
    assert requests.delete(f"{url}/osm/area/metadata/a").status_code == 404
    assert put_metadata(url, "osm/other", "k=v").status_code == 200
    assert requests.get(f"{url}/osm/area/v2").status_code == 200

    fsck(srv.data)
    found = refs(srv.data)
    assert sorted(found) == sorted([
        "refs/wo/_maps/sha256/" + m1[7:], "refs/wo/_maps/sha256/" + m2[7:],
        "refs/wo/_configs/sha256/" + c1[7:], "refs/wo/_configs/sha256/" + sha256(b"map one")[7:],
        "refs/wo/osm/area/v1", "refs/wo/osm/area/v2", "refs/wo/osm/other/v1",
        "refs/wo/_metadata/osm/area", "refs/wo/_metadata/osm/other",
    ])
    # one blob for the same bytes uploaded as both kinds, each in its kind's index tree
    assert git(srv.data, "rev-parse", "refs/wo/_maps/sha256/" + m1[7:] + ":map").stdout == \
        git(srv.data, "rev-parse", "refs/wo/_configs/sha256/" + sha256(b"map one")[7:] + ":config").stdout == \
        git_blob_id(b"map one") + "\n"
    assert lock_files(srv.data) == []


# -- restarts and crashes -------------------------------------------------------


def _populate(srv) -> tuple[list[str], list[tuple[str, bytes]]]:
    uploads = [("map", b"first map \x00\x01"), ("map", TEST_MAP.read_bytes()), ("map", b"third map"),
               ("config", b"a: 1\n"), ("config", TEST_CONFIG.read_bytes())]
    digests = {data: srv.upload(kind, data) for kind, data in uploads}
    tags = ["osm/area/v1", "osm/area/v2", "osm/other/2024-01"]
    assert srv.tag(tags[0], digests[uploads[0][1]], digests[uploads[3][1]]).status_code == 201
    assert srv.tag(tags[1], digests[uploads[1][1]], digests[uploads[4][1]]).status_code == 201
    assert srv.tag(tags[2], digests[uploads[1][1]], digests[uploads[3][1]]).status_code == 201
    assert put_metadata(srv.url, "osm/area", "license=ODbL-1.0 tok=YWJj== dup=1 dup=2").status_code == 200
    assert put_metadata(srv.url, "osm/area", "gone=soon").status_code == 200
    assert requests.delete(f"{srv.url}/osm/area/metadata/gone").status_code == 200
    return tags, uploads  # third map: uploaded, never tagged


MAPS = ["osm/area", "osm/other"]
KEYS = ["license", "tok", "dup", "gone", "nope", "a.b"]


def test_restart_after_sigterm_keeps_everything(fresh_server, tmp_path):
    data = tmp_path / "registry.git"
    first = fresh_server(data)
    tags, uploads = _populate(first)
    before = answers(first.url, tags, MAPS, KEYS)
    before_refs = refs(data)
    assert first.stop() == 0

    second = fresh_server(data)
    assert second.url
    after = answers(second.url, tags, MAPS, KEYS)
    assert after == before
    assert before[("GET", "osm/area/v2")][0] == 200
    assert before[("KEY", "osm/area", "dup")] == (200, "text/plain; charset=utf-8", b"2")
    assert refs(data) == before_refs
    assert_reuploads_conflict(second.url, uploads)
    for path in tags:
        assert second.tag(path, sha256(b"first map \x00\x01"), sha256(b"a: 1\n")).status_code == 409
    fsck(data)


def test_kill_9_mid_operation_then_restart(fresh_server, tmp_path):
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    map_bytes, config_bytes = TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes()
    m, c = srv.push("osm/area/v1", map_bytes, config_bytes)
    assert put_metadata(srv.url, "osm/area", "base=1").status_code == 200

    # an upload cut off by the crash: 8 MiB announced, 3 MiB sent
    big = os.urandom(8 << 20)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(big))
    sock.sendall(big[: 3 << 20])

    # metadata writers running when the crash comes
    acknowledged: dict[str, int] = {}
    stop = threading.Event()

    def writer(i: int) -> None:
        j = 0
        while not stop.is_set():
            j += 1
            try:
                reply = put_metadata(srv.url, "osm/area", f"w{i}={j}")
            except requests.RequestException:
                return
            if reply.status_code != 200:
                acknowledged[f"w{i}-error"] = reply.status_code
                return
            acknowledged[f"w{i}"] = j

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.6)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(30)
    sock.close()
    assert srv.proc.returncode == -signal.SIGKILL
    assert not any(k.endswith("-error") for k in acknowledged), acknowledged
    assert len(acknowledged) == 4, acknowledged

    again = fresh_server(data)
    try:
        _check_after_crash(again, data, acknowledged, big, map_bytes, config_bytes, c)
    except requests.ReadTimeout:
        pytest.fail(f"a write after the restart got no answer within 30 s; lock files: {lock_files(data)}")
    finally:
        again.kill()  # a write stuck on a stale lock must not hold up the teardown


def _check_after_crash(again, data, acknowledged, big, map_bytes, config_bytes, c):
    # everything acknowledged before the crash is there
    tarball = requests.get(f"{again.url}/osm/area/v1")
    assert tarball.status_code == 200
    got = members(tarball.content)
    assert [(n, mode) for n, mode, _ in got] == [("map", 0o644), ("metadata", 0o644), ("config", 0o644)]
    assert got[0][2] == map_bytes and got[2][2] == config_bytes
    assert requests.get(f"{again.url}/osm/area/metadata/base").content == b"1"
    for key, j in acknowledged.items():
        value = requests.get(f"{again.url}/osm/area/metadata/{key}")
        assert value.status_code == 200
        # the last acknowledged value, or the one in flight when the server died
        assert value.content in (str(j).encode(), str(j + 1).encode()), (key, j, value.content)
    chain = rev_list_parents(data, "refs/wo/_metadata/osm/area")
    assert [len(row) for row in chain] == [2] * (len(chain) - 1) + [1]
    assert all(chain[i][1] == chain[i + 1][0] for i in range(len(chain) - 1))

    # the cut-off upload left nothing: uploading it whole now is a first upload
    assert "refs/wo/_maps/sha256/" + sha256(big)[7:] not in refs(data)
    reply = requests.put(again.url + "/blobs/upload", data=big)
    assert (reply.status_code, reply.headers["Wo-Map-Digest"]) == (201, sha256(big))
    # and every write works again (a crash inside a ref update must not lock the ref for good)
    assert put_metadata(again.url, "osm/area", "after=crash", timeout=30).status_code == 200, lock_files(data)
    assert again.tag("osm/area/v2", sha256(big), c).status_code == 201
    assert requests.delete(f"{again.url}/osm/area/metadata/base", timeout=30).status_code == 200
    assert_reuploads_conflict(again.url, [("map", map_bytes), ("config", config_bytes)])
    fsck(data)


STALE_LOCKS = {
    "metadata": "refs/wo/_metadata/osm/area.lock",
    "tag-deletion": "refs/wo/_metadata/osm/area.lock",  # the deletion's record goes to the history
    "tag": "refs/wo/osm/area/v2.lock",
    "map-index": "refs/wo/_maps/sha256/" + sha256(b"map after the crash")[7:] + ".lock",
    # a git update-ref or pack-refs killed while rewriting packed-refs (reliability/crash.py)
    "packed-tag-deletion": "packed-refs.lock",
}


@pytest.mark.parametrize("what", sorted(STALE_LOCKS))
def test_stale_ref_lock_left_by_kill_9_does_not_block_writes(fresh_server, tmp_path, what):
    """The state kill -9 leaves when it lands between git's ref lock and its rename.

    test_kill_9_mid_operation_then_restart hits this window now and then (observed:
    refs/wo/_metadata/<r>/<m>.lock left behind); here it is made exactly, with a lock
    ten minutes old, which no live writer holds (a ref update holds it for microseconds).
    """
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    m, c = srv.push("osm/area/v1")
    assert put_metadata(srv.url, "osm/area", "base=1").status_code == 200
    head = refs(data)["refs/wo/_metadata/osm/area"]
    assert srv.stop() == 0
    if what == "packed-tag-deletion":  # deleting a packed tag rewrites packed-refs, under its lock
        git(data, "pack-refs", "--all")
        assert not (data / "refs/wo/osm/area/v1").exists()

    lock = data / STALE_LOCKS[what]
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(head + "\n")
    old = time.time() - 600
    os.utime(lock, (old, old))

    again = fresh_server(data)
    try:
        _write_past_stale_lock(again, data, what, head, m, c)
    except requests.ReadTimeout:
        pytest.fail(f"no answer within 5 s with a 10-minute-old {STALE_LOCKS[what]} in place "
                    f"(the write is retried against the dead lock)")
    finally:
        again.kill()
    assert lock_files(data) == []
    fsck(data)


def _write_past_stale_lock(again, data, what, head, m, c):
    if what == "metadata":
        reply = put_metadata(again.url, "osm/area", "after=crash", timeout=5)
        assert reply.status_code == 200, reply.text
        assert rev_list_parents(data, "refs/wo/_metadata/osm/area")[0][1:] == [head]
        assert requests.get(f"{again.url}/osm/area/metadata/after").content == b"crash"
    elif what in ("tag-deletion", "packed-tag-deletion"):
        reply = requests.delete(f"{again.url}/osm/area/v1", timeout=5)
        assert reply.status_code == 200, reply.text
        assert "refs/wo/osm/area/v1" not in refs(data)
        assert rev_list_parents(data, "refs/wo/_metadata/osm/area")[0][1:] == [head]
    elif what == "tag":
        reply = requests.put(f"{again.url}/osm/area/v2", json={"map_digest": m, "config_digest": c}, timeout=5)
        assert reply.status_code == 201, reply.text
        assert requests.get(f"{again.url}/osm/area/v2").status_code == 200
    else:
        reply = requests.put(again.url + "/blobs/upload", data=b"map after the crash", timeout=5)
        assert (reply.status_code, reply.headers.get("Wo-Map-Digest")) == (201, sha256(b"map after the crash"))


# A writer paused inside Refs.update, after taking the ref's lock (in its fsync, where a kill -9
# most often lands): a real process, killed for real or left running.
PAUSED_WRITER = """
import os, sys, time
from wogit import refs
def pause(fd):
    print("locked", flush=True)
    time.sleep(3600)
os.fsync = pause
refs.Refs(sys.argv[1]).update(sys.argv[2], sys.argv[3], sys.argv[4])
"""


def paused_writer(data: Path, ref: str, new: str, old: str) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(data), ref, new, old],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert writer.stdout.readline() == "locked\n"
    return writer


def test_lock_of_a_writer_killed_holding_it_is_broken_at_once(fresh_server, tmp_path):
    """reliability/crash.py: a kill -9 inside a metadata write left its fresh ref lock, and the
    next write on that map waited 9.1 s for the lock to grow 10 s old.  A wogit writer holds an
    flock on its lock: once the kernel has released it (the writer died), the lock goes at once."""
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    srv.push("osm/area/v1")
    assert put_metadata(srv.url, "osm/area", "base=1").status_code == 200
    ref = "refs/wo/_metadata/osm/area"
    head = refs(data)[ref]
    writer = paused_writer(data, ref, refs(data)["refs/wo/osm/area/v1"], head)
    lock = data / (ref + ".lock")
    try:
        assert lock.stat().st_mode & stat.S_ISVTX  # marked: its writer holds an flock on it
    finally:
        writer.kill()
    assert writer.wait() == -signal.SIGKILL
    assert lock.exists()

    reply = put_metadata(srv.url, "osm/area", "after=crash", timeout=5)  # was 10 s (the lock's age)
    assert (reply.status_code, reply.json()) == (200, {"set": ["after"], "ignored": []})
    assert rev_list_parents(data, ref)[0][1:] == [head]
    assert requests.get(f"{srv.url}/osm/area/metadata").content == b"after=crash\nbase=1\n"
    assert lock_files(data) == []
    assert not (data / ref).stat().st_mode & stat.S_ISVTX  # the ref file as git writes it
    assert f"removed the stale lock {lock} (its writer died)" in srv.log_text()
    fsck(data)


def test_lock_of_a_live_writer_is_kept_however_old(tmp_path):
    """Only a dead writer's lock is broken: a live one's stays, even an hour old; once its
    writer is killed it goes."""
    data = tmp_path / "registry.git"
    git(tmp_path, "init", "--bare", "-q", str(data))
    commit = git(data, "-c", "user.name=t", "-c", "user.email=t@t", "commit-tree", "-m", "x",
                 "4b825dc642cb6eb9a060e54bf8d69288fbee4904").stdout.strip()
    ref = "refs/wo/_metadata/osm/area"
    writer = paused_writer(data, ref, commit, "0" * 40)
    lock = data / (ref + ".lock")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    inode = lock.stat().st_ino
    try:
        assert refs_module.Refs(str(data)).break_stale_lock(ref) is False
        assert lock.stat().st_ino == inode
    finally:
        writer.kill()
        writer.wait()
    assert refs_module.Refs(str(data)).break_stale_lock(ref) is True
    assert lock_files(data) == []
    assert refs(data) == {}


def test_tag_deletion_handed_to_git_completes_when_the_service_is_killed(fresh_server, tmp_path):
    """reliability/crash.py: a kill -9 of the server's process group (as a service manager
    kills) during a tag deletion killed its `git update-ref` between taking the refs' locks
    and renaming them; the locks stayed and the next write on the map waited 9.4 s for them
    to age.  git runs in a session of its own now: the transaction it was handed completes
    (all of it) and git removes its locks.  A reference-transaction hook holds git in the
    middle, locks taken, while the server's group is killed."""
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    srv.push("osm/area/v1")
    srv.stop()
    prepared = tmp_path / "prepared"
    hook = data / "hooks" / "reference-transaction"
    hook.write_text(f'#!/bin/sh\ncat >/dev/null\nif [ "$1" = prepared ]; then touch {prepared}; sleep 2; fi\n')
    hook.chmod(0o755)
    with open(tmp_path / "service.log", "w") as log:
        service = subprocess.Popen([sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                                   cwd=Path(__file__).parent.parent)
    try:
        url = service.stdout.readline().split(" on ")[1].split()[0]
        deleting = threading.Thread(target=lambda: _ignore_errors(requests.delete, f"{url}/osm/area/v1", timeout=30))
        deleting.start()
        deadline = time.monotonic() + 20
        while not prepared.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prepared.exists()
        assert sorted(lock_files(data)) == [str(data / "packed-refs.lock"),  # a deletion takes it too
                                            str(data / "refs/wo/_metadata/osm/area.lock"),
                                            str(data / "refs/wo/osm/area/v1.lock")]
    finally:
        os.killpg(service.pid, signal.SIGKILL)
        service.wait()
        service.stdout.close()
    deleting.join(30)
    while lock_files(data) and time.monotonic() < deadline + 10:  # git finishes by itself
        time.sleep(0.05)
    assert lock_files(data) == []
    hook.unlink()
    again = fresh_server(data)
    assert requests.get(f"{again.url}/osm/area/v1").status_code == 404
    history = requests.get(f"{again.url}/osm/area/_history").json()["history"]
    assert [(c["action"], c["tag"]) for c in history] == [("delete-tag", "v1"), ("create-tag", "v1")]
    fsck(data)


@pytest.mark.skipif(shutil.which("strace") is None, reason="reads the system calls with strace")
def test_tag_deletion_syncs_the_directories_git_changed(fresh_server, tmp_path):
    """reliability/crash.py (its durability check): the `git update-ref` of a tag deletion
    syncs the files it writes (core.fsync=all) but not their directories, so the 200 came
    before the history ref's rename, packed-refs' and the tag ref's removal were durable.
    The store syncs those directories after git, before answering."""
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    srv.push("osm/area/v1")
    srv.stop()
    trace = tmp_path / "trace"
    service = subprocess.Popen(["strace", "-f", "-y", "-qq", "-s", "12", "-o", str(trace), "-e", "trace=fsync,sendto",
                                sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=Path(__file__).parent.parent)
    try:
        url = service.stdout.readline().split(" on ")[1].split()[0]
        assert requests.delete(f"{url}/osm/area/v1", timeout=30).status_code == 200
    finally:
        server = int(Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()[0])
        os.kill(server, signal.SIGTERM)
        service.wait(30)
        service.stdout.close()
    lines = trace.read_text().splitlines()
    answer = next(i for i, line in enumerate(lines) if '"HTTP/1.1 200' in line)
    synced = {line.split("<", 1)[1].split(">", 1)[0] for line in lines[:answer] if " fsync(" in line}
    # the history ref's directory; the tag's (refs/wo/osm/area and refs/wo/osm, emptied and
    # removed by git): their parent; packed-refs'
    assert {str(data / "refs/wo/_metadata/osm"), str(data / "refs/wo"), str(data)} <= synced, synced
    assert not (data / "refs/wo/osm").exists()


def _ignore_errors(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except requests.RequestException:
        pass


# -- mirrors and gc ---------------------------------------------------------------


def test_mirror_round_trip_answers_identically(fresh_server, tmp_path):
    data = tmp_path / "registry.git"
    original = fresh_server(data)
    tags, uploads = _populate(original)
    before = answers(original.url, tags, MAPS, KEYS)
    assert before[("GET", "osm/area/v1")][0] == 200
    assert before[("304", "osm/area/v1")][0] == 304

    copy = mirror(data, tmp_path / "mirror.git")
    assert refs(copy) == refs(data)
    # a real transport: the mirror has its own packed objects, not links to ours
    assert git(copy, "count-objects", "-v").stdout.splitlines()[0] == "count: 0"
    fsck(copy)

    replica = fresh_server(copy)
    after = answers(replica.url, tags, MAPS, KEYS)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    assert_reuploads_conflict(replica.url, uploads)
    for path in tags:
        reply = replica.tag(path, sha256(b"first map \x00\x01"), sha256(b"a: 1\n"))
        assert reply.status_code == 409
        assert set(reply.json()) == {"msg"}
    # the untagged upload is in the mirror too and can be tagged there
    assert replica.tag("osm/area/v9", sha256(b"third map"), sha256(b"a: 1\n")).status_code == 201
    got = members(requests.get(f"{replica.url}/osm/area/v9").content)
    assert got[0] == ("map", 0o644, b"third map")


def test_reading_after_git_gc_packed_objects(fresh_server, tmp_path):
    data = tmp_path / "registry.git"
    srv = fresh_server(data)
    tags, uploads = _populate(srv)
    before = answers(srv.url, tags, MAPS, KEYS)
    head_before = refs(data)["refs/wo/_metadata/osm/area"]

    git(data, "gc", "--prune=now", "--quiet")
    counts = dict(line.split(": ") for line in git(data, "count-objects", "-v").stdout.splitlines())
    assert counts["count"] == "0"  # every object is in a pack now
    assert int(counts["in-pack"]) > 0
    assert [p for p in (data / "refs").rglob("*") if p.is_file()] == []  # refs packed too

    # the same running server, then a restarted one: byte-identical answers
    assert answers(srv.url, tags, MAPS, KEYS) == before
    assert srv.stop() == 0
    again = fresh_server(data)
    assert answers(again.url, tags, MAPS, KEYS) == before
    assert_reuploads_conflict(again.url, uploads)

    # writes on packed refs keep the chain linear
    assert put_metadata(again.url, "osm/area", "after=gc").status_code == 200
    chain = rev_list_parents(data, "refs/wo/_metadata/osm/area")
    assert chain[0][1:] == [head_before]
    assert again.tag("osm/area/v3", sha256(b"third map"), sha256(b"a: 1\n")).status_code == 201
    fsck(data)


def test_fc006_untagged_upload_survives_gc_and_mirror(fresh_server, tmp_path):
    """FC-006-untagged-upload-survives: upload, gc --prune=now, clone --mirror over file://, tag."""
    data = tmp_path / "registry.git"
    original = fresh_server(data)
    map_bytes, config_bytes = b"untagged map \x00\xff" * 1000, b"untagged: config\n"
    reply = requests.put(original.url + "/blobs/upload", data=map_bytes)
    assert (reply.status_code, reply.headers["Wo-Map-Digest"]) == (201, sha256(map_bytes))
    M = reply.headers["Wo-Map-Digest"]
    reply = requests.put(original.url + "/configs/upload", data=config_bytes)
    assert (reply.status_code, reply.headers["Wo-Config-Digest"]) == (201, sha256(config_bytes))
    C = reply.headers["Wo-Config-Digest"]

    git(data, "gc", "--prune=now", "--quiet")
    copy = mirror(data, tmp_path / "m")

    reply = original.tag("r/m/t", M, C)
    assert reply.status_code == 201, reply.text
    got = members(requests.get(f"{original.url}/r/m/t").content)
    assert got[0] == ("map", 0o644, map_bytes) and got[2] == ("config", 0o644, config_bytes)

    replica = fresh_server(copy)
    reply = requests.put(replica.url + "/blobs/upload", data=map_bytes)
    assert (reply.status_code, reply.headers.get("Wo-Map-Digest")) == (409, M)
    reply = requests.put(replica.url + "/configs/upload", data=config_bytes)
    assert (reply.status_code, reply.headers.get("Wo-Config-Digest")) == (409, C)
    # the mirror has the objects themselves, so a tag there is whole
    assert replica.tag("r/m/t", M, C).status_code == 201
    got = members(requests.get(f"{replica.url}/r/m/t").content)
    assert got[0] == ("map", 0o644, map_bytes) and got[2] == ("config", 0o644, config_bytes)
    fsck(copy)
    fsck(data)
