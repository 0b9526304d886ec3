"""Races: concurrent writers in one server and in two `wogit serve` processes on one data directory.

Every race starts its threads together on a threading.Barrier, sends real HTTP requests, and then
checks the answers and the refs with real git.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import requests
from conftest import fsck, git, git_blob_id, index_tree_id, refs, sha256

THREADS_FC001 = 20
THREADS_FC002 = 8


def race(n: int, send) -> list[requests.Response]:
    """Run ``send(i)`` in ``n`` threads released together; return the replies in order of i."""
    barrier = threading.Barrier(n)
    replies: list = [None] * n

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            replies[i] = send(i)
        except Exception as exc:  # reported below as a failed reply, never swallowed
            replies[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    for i, reply in enumerate(replies):
        assert isinstance(reply, requests.Response), (i, reply)
    return replies


def rev_list_parents(data_dir, ref: str) -> list[list[str]]:
    return [line.split() for line in git(data_dir, "rev-list", "--parents", ref).stdout.splitlines()]


def assert_linear(data_dir, ref: str, commits: int) -> None:
    """`git rev-list --parents`: ``commits`` commits, each one's only parent the one before it."""
    chain = rev_list_parents(data_dir, ref)
    assert len(chain) == commits, chain
    for newer, older in zip(chain, chain[1:]):
        assert newer[1:] == [older[0]], (newer, older)
    assert len(chain[-1]) == 1, chain[-1]  # the first change has no parent


def assert_json_error(reply: requests.Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"msg"} and isinstance(body["msg"], str) and body["msg"]


# -- FC-001 --------------------------------------------------------------------


def _metadata_race(urls: list[str], data_dir, repository: str) -> None:
    path = f"{repository}/m"
    replies = race(THREADS_FC001, lambda i: requests.put(
        f"{urls[i % len(urls)]}/{path}/metadata", data=f"k{i}=v{i}".encode(),
        headers={"Content-Type": "text/plain"}, timeout=60))
    assert [r.status_code for r in replies] == [200] * THREADS_FC001, [(r.status_code, r.text) for r in replies]
    for url in urls:
        for i in range(THREADS_FC001):
            got = requests.get(f"{url}/{path}/metadata/k{i}")
            assert (got.status_code, got.content) == (200, f"v{i}".encode())
    ref = f"refs/wo/_metadata/{repository}/m"
    assert_linear(data_dir, ref, THREADS_FC001)
    tree = git(data_dir, "ls-tree", "--name-only", ref).stdout.split()
    assert sorted(tree) == sorted(f"k{i}" for i in range(THREADS_FC001))
    fsck(data_dir)


def test_fc001_metadata_lost_update_threads(fresh_server, unique):
    """FC-001-metadata-lost-update: 20 concurrent PUT /R/M/metadata on one server."""
    srv = fresh_server()
    srv.push(f"{unique}/m/v1")
    _metadata_race([srv.url], srv.data, unique)


def test_fc001_metadata_lost_update_two_processes(fresh_server, tmp_path, unique):
    """FC-001-metadata-lost-update: the same 20 PUTs split between two servers on ONE data directory."""
    data = tmp_path / "shared.git"
    first = fresh_server(data)
    second = fresh_server(data)
    assert first.proc.pid != second.proc.pid and first.url != second.url
    first.push(f"{unique}/m/v1")
    _metadata_race([first.url, second.url], data, unique)


# -- FC-002 --------------------------------------------------------------------


def _tag_race(urls: list[str], data_dir, path: str, maps: list[bytes], config: str) -> None:
    digests = [sha256(data) for data in maps]
    replies = race(len(maps), lambda i: requests.put(
        f"{urls[i % len(urls)]}/{path}", json={"map_digest": digests[i], "config_digest": config}, timeout=60))
    statuses = [r.status_code for r in replies]
    assert sorted(statuses) == [201] + [409] * (len(maps) - 1), [(r.status_code, r.text) for r in replies]
    winner = statuses.index(201)
    for i, reply in enumerate(replies):
        if i != winner:
            assert_json_error(reply, 409)
    assert replies[winner].json()["map_digest"] == digests[winner]

    # the tag points at the winner's map, through the API and in git
    for url in urls:
        got = requests.get(f"{url}/{path}")
        assert got.status_code == 200
        assert got.headers["Wo-Map-Digest"] == digests[winner]
        assert got.headers["Wo-Config-Digest"] == config
    commit = refs(data_dir)[f"refs/wo/{path}"]
    map_oid = git(data_dir, "rev-parse", f"{commit}:map").stdout.strip()
    assert map_oid == git(data_dir, "rev-parse", "refs/wo/_maps/sha256/" + digests[winner][7:] + ":map").stdout.strip()
    assert f"map_digest: {digests[winner]}" in git(data_dir, "log", "-1", "--format=%B", commit).stdout
    assert subprocess.run(["git", "--git-dir", str(data_dir), "cat-file", "blob", map_oid],
                          capture_output=True, check=True).stdout == maps[winner]


def test_fc002_tag_create_race(server, unique):
    """FC-002-tag-create-race: 8 concurrent PUT /R/M/T, different maps, one config: one 201, seven 409."""
    maps = [f"{unique} map {i}".encode() for i in range(THREADS_FC002)]
    for data in maps:
        server.upload("map", data)
    config = server.upload("config", f"{unique}: config\n".encode())
    _tag_race([server.url], server.data, f"{unique}/m/t", maps, config)
    assert sorted(r for r in refs(server.data) if r.startswith(f"refs/wo/{unique}/")) == [f"refs/wo/{unique}/m/t"]


def test_fc002_tag_create_race_two_processes(fresh_server, tmp_path, unique):
    """FC-002-tag-create-race across two `wogit serve` processes on one data directory, five rounds."""
    data = tmp_path / "shared.git"
    first = fresh_server(data)
    second = fresh_server(data)
    maps = [f"{unique} map {i}".encode() for i in range(THREADS_FC002)]
    for i, content in enumerate(maps):
        (first if i % 2 else second).upload("map", content)
    config = first.upload("config", b"shared: config\n")
    for round_ in range(5):
        _tag_race([first.url, second.url], data, f"{unique}/m/t{round_}", maps, config)
    assert sorted(r for r in refs(data) if r.startswith(f"refs/wo/{unique}/")) == \
        [f"refs/wo/{unique}/m/t{n}" for n in range(5)]
    fsck(data)


# -- identical uploads ----------------------------------------------------------


def _upload_race(urls: list[str], data_dir, kind: str, content: bytes) -> None:
    path, header, prefix = {
        "map": ("/blobs/upload", "Wo-Map-Digest", "refs/wo/_maps/sha256/"),
        "config": ("/configs/upload", "Wo-Config-Digest", "refs/wo/_configs/sha256/"),
    }[kind]
    replies = race(8, lambda i: requests.put(urls[i % len(urls)] + path, data=content, timeout=60))
    statuses = [r.status_code for r in replies]
    assert sorted(statuses) == [201] + [409] * 7, [(r.status_code, r.text) for r in replies]
    assert [r.headers.get(header) for r in replies] == [sha256(content)] * 8
    for reply in replies:
        if reply.status_code == 409:
            assert_json_error(reply, 409)
    matching = {name: oid for name, oid in refs(data_dir).items() if name.endswith(sha256(content)[7:])}
    assert matching == {prefix + sha256(content)[7:]: index_tree_id(kind, content)}


def test_identical_map_uploads_race(server, unique):
    """8 concurrent PUT /blobs/upload of the same bytes: exactly one 201, seven 409, one ref."""
    _upload_race([server.url], server.data, "map", f"{unique} identical map \x00".encode() * 5000)


def test_identical_config_uploads_race(server, unique):
    """8 concurrent PUT /configs/upload of the same text: exactly one 201, seven 409, one ref."""
    _upload_race([server.url], server.data, "config", f"{unique}: identical\n".encode())


def test_identical_uploads_race_two_processes(fresh_server, tmp_path, unique):
    """The same upload race split between two processes on one data directory."""
    data = tmp_path / "shared.git"
    urls = [fresh_server(data).url, fresh_server(data).url]
    _upload_race(urls, data, "map", f"{unique} two-process map".encode() * 1000)
    _upload_race(urls, data, "config", f"{unique}: two-process\n".encode())
    fsck(data)


# -- FC-005 --------------------------------------------------------------------


def test_fc005_directory_file_ref_conflict(server, unique):
    """FC-005-directory-file-ref-conflict: tags and metadata of one map never collide in the ref store."""
    url = server.url
    m = server.upload("map", f"{unique} fc005 map".encode())
    c = server.upload("config", f"{unique}: fc005\n".encode())

    def tag(path):
        return requests.put(f"{url}/{path}", json={"map_digest": m, "config_digest": c}).status_code

    def meta(path, body):
        return requests.put(f"{url}/{path}/metadata", data=body.encode(),
                            headers={"Content-Type": "text/plain"}).status_code

    first = f"{unique}/m"
    assert [tag(f"{first}/T1"), meta(first, "a=1"), tag(f"{first}/T2")] == [201, 200, 201]

    # on another map metadata cannot come first (404), so: tag, metadata, tag, delete key, tag
    other = f"{unique}/m2"
    assert meta(other, "a=1") == 404
    assert [
        tag(f"{other}/T1"),
        meta(other, "a=1"),
        tag(f"{other}/T2"),
        requests.delete(f"{url}/{other}/metadata/a").status_code,
        tag(f"{other}/T3"),
    ] == [201, 200, 201, 200, 201]

    for path in (f"{first}/T1", f"{first}/T2", f"{other}/T1", f"{other}/T2", f"{other}/T3"):
        got = requests.get(f"{url}/{path}")
        assert (got.status_code, got.headers["Wo-Map-Digest"]) == (200, m)
    got = requests.get(f"{url}/{first}/metadata/a")
    assert (got.status_code, got.content) == (200, b"1")
    assert requests.get(f"{url}/{other}/metadata/a").status_code == 404
    ours = sorted(r for r in refs(server.data) if f"/{unique}/" in r)
    assert ours == sorted([
        f"refs/wo/_metadata/{first}", f"refs/wo/_metadata/{other}",
        f"refs/wo/{first}/T1", f"refs/wo/{first}/T2",
        f"refs/wo/{other}/T1", f"refs/wo/{other}/T2", f"refs/wo/{other}/T3",
    ])


# -- many clients at once ------------------------------------------------------------


def test_simultaneous_connections_are_all_answered(fresh_server, unique):
    """64 clients connecting at the same instant (as the races above do) are all served.

    Every race in this file opens its connections together; a listen backlog smaller than
    that makes the kernel drop or reset some of them before the server sees a request.
    """
    srv = fresh_server(None, "--max-uploads", "64")  # (by default, uploads beyond 28 at once are 503)
    for round_ in range(3):
        contents = [f"{unique} round {round_} client {i}".encode() for i in range(64)]
        replies = race(64, lambda i: requests.put(srv.url + "/configs/upload", data=contents[i], timeout=30))
        assert [(r.status_code, r.headers["Wo-Config-Digest"]) for r in replies] == \
            [(201, sha256(content)) for content in contents]


# -- a ref lock held by another writer ----------------------------------------------


HELD_LOCKS = {
    "metadata": "refs/wo/_metadata/{r}/m.lock",
    "tag": "refs/wo/{r}/m/t2.lock",
    "map-index": "refs/wo/_maps/sha256/{hex}.lock",
}


@pytest.mark.parametrize("what", sorted(HELD_LOCKS))
def test_write_waits_for_a_ref_lock_held_by_another_writer(fresh_server, unique, what):
    """Lock contention, made exact: another process (a second `wogit serve`, `git update-ref`)
    holds the ref's .lock for 0.5 s while the request arrives. The write must wait and
    succeed (FC-001 / FC-002: "no 500 from lock contention"), not fail."""
    srv = fresh_server()
    m, c = srv.push(f"{unique}/m/v1")
    assert requests.put(f"{srv.url}/{unique}/m/metadata", data=b"base=1").status_code == 200
    new_map = f"{unique} map behind a lock".encode()
    lock = srv.data / HELD_LOCKS[what].format(r=unique, hex=sha256(new_map)[7:])
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")
    release = threading.Timer(0.5, lock.unlink)
    release.start()
    try:
        if what == "metadata":
            reply = requests.put(f"{srv.url}/{unique}/m/metadata", data=b"after=lock", timeout=20)
            assert reply.status_code == 200, reply.text
            got = requests.get(f"{srv.url}/{unique}/m/metadata/after")
            assert (got.status_code, got.content) == (200, b"lock")
            assert_linear(srv.data, f"refs/wo/_metadata/{unique}/m", 2)
        elif what == "tag":
            reply = requests.put(f"{srv.url}/{unique}/m/t2", json={"map_digest": m, "config_digest": c}, timeout=20)
            assert reply.status_code == 201, reply.text
        else:
            reply = requests.put(srv.url + "/blobs/upload", data=new_map, timeout=20)
            assert (reply.status_code, reply.headers.get("Wo-Map-Digest")) == (201, sha256(new_map)), reply.text
    finally:
        release.join()
    fsck(srv.data)


class LockFlapper:
    """A competing writer: takes and releases a ref's .lock as fast as it can (O_EXCL, as git does).

    It never holds a lock someone else holds and never moves the ref, so every write of the
    server must go through (retried), and the ref history must be the server's alone.
    """

    def __init__(self, lock_path):
        self.lock = str(lock_path)
        self.stop = threading.Event()
        self.taken = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            self.taken += 1
            os.unlink(self.lock)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("what", sorted(HELD_LOCKS))
def test_writes_go_through_a_competing_lock_holder(fresh_server, unique, what):
    """FC-001-metadata-lost-update / FC-002-tag-create-race: "no 500 from lock contention".

    While another writer keeps taking and releasing the ref's lock, every write retries and
    lands: 20 metadata PUTs all 200 with a linear chain, a tag 201, an upload 201.
    """
    srv = fresh_server()
    m, c = srv.push(f"{unique}/m/v1")
    assert requests.put(f"{srv.url}/{unique}/m/metadata", data=b"base=1").status_code == 200
    new_map = f"{unique} map behind a busy lock".encode()
    lock = srv.data / HELD_LOCKS[what].format(r=unique, hex=sha256(new_map)[7:])
    with LockFlapper(lock) as flapper:
        if what == "metadata":
            replies = [requests.put(f"{srv.url}/{unique}/m/metadata", data=f"k{i}=v{i}".encode(), timeout=60)
                       for i in range(20)]
            replies.append(requests.delete(f"{srv.url}/{unique}/m/metadata/base", timeout=60))
            assert [(r.status_code, r.text) for r in replies if r.status_code != 200] == []
        elif what == "tag":
            reply = requests.put(f"{srv.url}/{unique}/m/t2", json={"map_digest": m, "config_digest": c}, timeout=60)
            assert reply.status_code == 201, reply.text
        else:
            reply = requests.put(srv.url + "/blobs/upload", data=new_map, timeout=60)
            assert (reply.status_code, reply.headers.get("Wo-Map-Digest")) == (201, sha256(new_map)), reply.text
    assert flapper.taken > 0
    if what == "metadata":
        assert_linear(srv.data, f"refs/wo/_metadata/{unique}/m", 22)
        for i in range(20):
            got = requests.get(f"{srv.url}/{unique}/m/metadata/k{i}")
            assert (got.status_code, got.content) == (200, f"v{i}".encode())
        assert requests.get(f"{srv.url}/{unique}/m/metadata/base").status_code == 404
    elif what == "tag":
        assert requests.get(f"{srv.url}/{unique}/m/t2").headers["Wo-Map-Digest"] == m
    else:
        assert refs(srv.data)["refs/wo/_maps/sha256/" + sha256(new_map)[7:]] == index_tree_id("map", new_map)
    assert not os.path.exists(lock)
    fsck(srv.data)
