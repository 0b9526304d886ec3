"""The registry's own writers of small objects and refs (wogit.objects.write_object, wogit.refs),
checked against the real git: the same object ids, readable objects, refs git agrees with
(loose or packed), and exact compare-and-swap."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import fsck, git, refs

from wogit import objects
from wogit import refs as wogit_refs


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def git_stdin(repo, data: bytes, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], input=data, capture_output=True,
                          check=True, env={**os.environ, "GIT_AUTHOR_NAME": "wogit",
                                           "GIT_AUTHOR_EMAIL": "wogit@localhost",
                                           "GIT_AUTHOR_DATE": "1700000000 +0000",
                                           "GIT_COMMITTER_NAME": "wogit", "GIT_COMMITTER_EMAIL": "wogit@localhost",
                                           "GIT_COMMITTER_DATE": "1700000001 +0000"}).stdout.decode().strip()


def test_objects_have_gits_ids_and_read_back(repo):
    objects_dir = str(repo / "objects")
    value = "välue\n".encode()
    blob = objects.write_object(objects_dir, "blob", value)
    assert blob == git_stdin(repo, value, "hash-object", "--stdin")
    assert git(repo, "cat-file", "-t", blob).stdout == "blob\n"
    assert subprocess.run(["git", "--git-dir", str(repo), "cat-file", "blob", blob], capture_output=True,
                          check=True).stdout == value
    empty = objects.write_object(objects_dir, "tree", b"")
    assert empty == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    # git's order: a tree sorts as if its name ended in "/" ("a-b" < "a/" < "a0"), blobs by bytes.
    entries = {"a0": (0o100644, blob), "a": (objects.TREE_MODE, empty), "a-b": (0o100644, blob),
               "Z": (0o100644, blob), "é": (0o100644, blob)}
    tree = objects.write_object(objects_dir, "tree", objects.tree_bytes(entries))
    listing = "".join(f"{'040000 tree' if mode == objects.TREE_MODE else '100644 blob'} {oid}\t{name}\n"
                      for name, (mode, oid) in entries.items())
    assert tree == git_stdin(repo, listing.encode(), "mktree", "--missing")
    assert git(repo, "ls-tree", tree).stdout.splitlines() == [
        f"100644 blob {blob}\tZ", f"100644 blob {blob}\ta-b", f"040000 tree {empty}\ta",
        f"100644 blob {blob}\ta0", f"100644 blob {blob}\t\"\\303\\251\""]
    message = "set k\n\nk=välue\n"
    first = objects.write_object(objects_dir, "commit", objects.commit_bytes(
        tree, [], ("wogit", "wogit@localhost", 1700000000), ("wogit", "wogit@localhost", 1700000001), message))
    assert first == git_stdin(repo, message.encode(), "commit-tree", tree)
    second = objects.write_object(objects_dir, "commit", objects.commit_bytes(
        empty, [first], ("a%20user", "user@wogit", 1700000000), ("wogit", "wogit@localhost", 1700000001), "delete k\n"))
    assert git(repo, "cat-file", "commit", second).stdout == (
        f"tree {empty}\nparent {first}\nauthor a%20user <user@wogit> 1700000000 +0000\n"
        "committer wogit <wogit@localhost> 1700000001 +0000\n\ndelete k\n")
    assert objects.write_object(objects_dir, "commit", objects.commit_bytes(
        empty, [first], ("a%20user", "user@wogit", 1700000000), ("wogit", "wogit@localhost", 1700000001),
        "delete k\n")) == second  # written once: the loose file is there
    git(repo, "update-ref", "refs/wo/_metadata/r/m", second)
    fsck(repo)
    assert not [name for name in os.listdir(objects_dir) if name.startswith("tmp_")]


def test_ref_create_and_compare_and_swap(repo):
    objects_dir = str(repo / "objects")
    one = objects.write_object(objects_dir, "tree", b"")
    two = objects.write_object(objects_dir, "blob", b"two")
    name = "refs/wo/_metadata/r/m"
    wogit_refs.Refs(str(repo)).update(name, one, wogit_refs.ZERO)
    assert refs(repo) == {name: one}
    with pytest.raises(wogit_refs.Moved):  # create: it exists
        wogit_refs.Refs(str(repo)).update(name, two, wogit_refs.ZERO)
    with pytest.raises(wogit_refs.Moved):  # compare-and-swap from a value it does not have
        wogit_refs.Refs(str(repo)).update(name, two, two)
    assert refs(repo) == {name: one}
    wogit_refs.Refs(str(repo)).update(name, two, one)
    assert refs(repo) == {name: two}
    assert (repo / name).read_text() == two + "\n"
    assert not os.path.exists(repo / (name + ".lock"))


def test_ref_lock_held_by_another_writer(repo):
    one = objects.write_object(str(repo / "objects"), "tree", b"")
    name = "refs/wo/r/m/v1"
    os.makedirs(repo / "refs/wo/r/m")
    (repo / (name + ".lock")).write_text("")
    with pytest.raises(wogit_refs.Locked):
        wogit_refs.Refs(str(repo)).update(name, one, wogit_refs.ZERO)
    assert refs(repo) == {}
    assert (repo / (name + ".lock")).read_text() == ""  # the other writer's lock is left alone


def test_packed_refs_are_seen_and_moved(repo):
    objects_dir = str(repo / "objects")
    one = objects.write_object(objects_dir, "tree", b"")
    two = objects.write_object(objects_dir, "blob", b"two")
    name = "refs/wo/_metadata/r/m"
    git(repo, "update-ref", name, one)
    git(repo, "pack-refs", "--all", "--prune")
    assert not (repo / name).exists() and name in (repo / "packed-refs").read_text()
    with pytest.raises(wogit_refs.Moved):
        wogit_refs.Refs(str(repo)).update(name, two, wogit_refs.ZERO)
    wogit_refs.Refs(str(repo)).update(name, two, one)
    assert refs(repo) == {name: two}
    git(repo, "pack-refs", "--all", "--prune")
    assert refs(repo) == {name: two}


def test_metadata_writers_of_one_map_each_get_their_commit(fresh_server):
    """Concurrent changes of one map are committed in turns, several per turn: each its own
    commit in one linear history, and a change that fails (a key deleted meanwhile) fails alone."""
    import threading

    import requests
    from test_concurrency import assert_linear

    server = fresh_server()
    server.push("group/m/v1")
    assert requests.put(f"{server.url}/group/m/metadata", data="gone=1").status_code == 200
    writers, deleters = 24, 8
    barrier = threading.Barrier(writers + deleters)
    replies: dict[str, requests.Response] = {}

    def send(i: int) -> None:
        barrier.wait(timeout=30)
        if i < writers:
            replies[f"k{i}"] = requests.put(f"{server.url}/group/m/metadata", data=f"k{i}=v{i}")
        else:
            replies[f"d{i}"] = requests.delete(f"{server.url}/group/m/metadata/gone")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(writers + deleters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(writers):
        assert (replies[f"k{i}"].status_code, replies[f"k{i}"].json()) == (200, {"set": [f"k{i}"], "ignored": []})
    deleted = [r for key, r in replies.items() if key.startswith("d") and r.status_code == 200]
    refused = [r for key, r in replies.items() if key.startswith("d") and r.status_code != 200]
    assert len(deleted) == 1 and deleted[0].json() == {"deleted": "gone"}
    assert [(r.status_code, r.json()["msg"]) for r in refused] == [
        (404, "map group/m has no metadata key 'gone'")] * (deleters - 1)
    ref = "refs/wo/_metadata/group/m"
    assert_linear(server.data, ref, 1 + writers + 1)
    messages = git(server.data, "log", "--format=%B%x00", ref).stdout.split("\0")[:-1]
    assert sorted(m.strip("\n") for m in messages) == sorted(
        ["set gone\n\ngone=1", "delete gone"] + [f"set k{i}\n\nk{i}=v{i}" for i in range(writers)])
    listing = git(server.data, "ls-tree", ref).stdout
    assert sorted(line.split("\t")[1] for line in listing.splitlines()) == sorted(f"k{i}" for i in range(writers))
    assert requests.get(f"{server.url}/group/m/metadata").text == "".join(
        f"k{i}=v{i}\n" for i in sorted(range(writers), key=lambda i: f"k{i}"))
    fsck(server.data)
    assert not [name for name in os.listdir(server.data / "objects") if name.startswith("tmp_")]
