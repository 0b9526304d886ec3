"""``wogit gc`` and ``wogit fsck`` against a real registry, beside its running server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import requests

from conftest import ROOT, fsck, git, git_blob_id, index_tree_id, refs, sha256

from wogit import maintenance, objects
from wogit.store import Store, Upload

HOUR = 3600


def wogit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wogit", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def loose(data: Path, oid: str) -> Path:
    return data / "objects" / oid[:2] / oid[2:]


def age(data: Path, kind: str, content: bytes, seconds: float) -> list[Path]:
    """Make an upload's loose objects (its blob and its index tree) look ``seconds`` old."""
    files = [loose(data, git_blob_id(content)), loose(data, index_tree_id(kind, content))]
    then = time.time() - seconds
    for path in files:
        os.utime(path, (then, then))
    return files


def test_gc_sweeps_what_no_tag_uses_after_the_grace_period(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1", b"used map", b"used: 1\n")
    contents = {"old": (b"old unused map", "map"), "young": (b"young unused map", "map"),
                "oldc": (b"old: 1\n", "config"), "gone": (b"map of a deleted tag", "map")}
    digests = {name: srv.upload(kind, data) for name, (data, kind) in contents.items() if name != "gone"}
    digests["gone"], _ = srv.push("osm/area/gone", contents["gone"][0], b"used: 1\n")
    deleted = requests.delete(srv.url + "/osm/area/gone")
    assert deleted.status_code == 200
    # git prune keeps what a recent object reaches: the deleted tag's commit and tree must age too.
    history = requests.get(srv.url + "/osm/area/_history").json()["history"]
    (tag_commit,) = [h["commit"] for h in history if h["action"] == "create-tag" and h["tag"] == "gone"]
    tag_tree = git(srv.data, "rev-parse", tag_commit + "^{tree}").stdout.strip()
    age(srv.data, "map", b"used map", 2 * HOUR)  # old, but in use: kept
    swept_files = []
    for name in ("old", "oldc", "gone"):
        swept_files += age(srv.data, contents[name][1], contents[name][0], 2 * HOUR)
    for oid in (tag_commit, tag_tree):
        swept_files.append(loose(srv.data, oid))
        os.utime(swept_files[-1], (time.time() - 2 * HOUR,) * 2)
    freed = sum(path.stat().st_size for path in swept_files)
    before = refs(srv.data)

    expected_swept = sorted(
        [{"kind": contents[n][1], "digest": digests[n], "size": len(contents[n][0])} for n in ("old", "oldc", "gone")],
        key=lambda s: (s["kind"] == "map", s["digest"]))  # in ref order: refs/wo/_configs/ before refs/wo/_maps/
    dry = wogit("gc", "--data", str(srv.data), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"swept": expected_swept, "kept_in_grace": 1, "kept_in_use": 2,
                                      "pruned_objects": 0, "freed_bytes": 0, "problems": []}
    assert refs(srv.data) == before and all(path.exists() for path in swept_files)

    run = wogit("gc", "--data", str(srv.data), "--json")  # the server is running
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"swept": expected_swept, "kept_in_grace": 1, "kept_in_use": 2,
                                      "pruned_objects": 8, "freed_bytes": freed, "problems": []}
    after = refs(srv.data)
    assert set(before) - set(after) == {f"refs/wo/_{contents[n][1]}s/sha256/{digests[n][7:]}"
                                        for n in ("old", "oldc", "gone")}
    assert not any(path.exists() for path in swept_files)
    for name in ("old", "gone"):
        reply = requests.get(f"{srv.url}/blobs/{digests[name]}")
        assert reply.status_code == 404
    assert requests.get(f"{srv.url}/blobs/{digests['young']}").content == b"young unused map"
    tarball = requests.get(srv.url + "/osm/area/v1")
    assert (tarball.status_code, tarball.headers["Wo-Map-Digest"]) == (200, m)
    reply = srv.tag("osm/area/v2", digests["old"], c)
    assert (reply.status_code, reply.json()) == (404, {"msg": f"map_digest {digests['old']} names no uploaded map"})
    fsck(srv.data)
    assert wogit("fsck", "--data", str(srv.data)).returncode == 0
    again = wogit("gc", "--data", str(srv.data))
    assert again.stdout == ("swept 0 unused uploads; kept 2 in use and 1 within the grace period; "
                            "pruned 0 objects, freed 0 bytes\n")


def test_tagging_an_old_upload_freshens_it_so_gc_keeps_it(fresh_server):
    srv = fresh_server()
    data = b"uploaded long ago, tagged now"
    m = srv.upload("map", data)
    c = srv.upload("config", b"k: v\n")
    files = age(srv.data, "map", data, 2 * HOUR) + age(srv.data, "config", b"k: v\n", 2 * HOUR)
    started = time.time() - 1
    assert srv.tag("osm/late/v1", m, c).status_code == 201
    assert loose(srv.data, git_blob_id(data)).stat().st_mtime >= started  # touched before the tag existed
    assert requests.delete(srv.url + "/osm/late/v1").status_code == 200
    report = json.loads(wogit("gc", "--data", str(srv.data), "--json").stdout)
    assert (report["swept"], report["kept_in_grace"]) == ([], 2)  # within the hour since it was tagged
    assert files[0].exists()
    report = json.loads(wogit("gc", "--data", str(srv.data), "--json", "--grace", "0").stdout)
    assert (report["swept"], report["kept_in_grace"]) == ([], 2)  # the least grace is a minute
    assert files[0].exists() and files[2].exists()


PAUSED_HOOK = """#!/bin/sh
# runs after wogit's own checks: tell the test the push is between its checks and its ref update,
# and wait until the test says go on
touch "$GIT_DIR/push-paused"
while [ ! -e "$GIT_DIR/push-go-on" ]; do sleep 0.05; done
"""


def test_a_pushed_tag_of_old_uploads_survives_a_gc_during_the_push(fresh_server, tmp_path):
    """races.py, gc rounds: a pushed tag naming uploads that are old and unused (so not sent by the
    push) raced `wogit gc`, which swept their index refs and pruned their blobs while the push's
    pre-receive ran; the push was accepted and the tag pointed at missing objects. The hook now
    touches the blobs a pushed tag names before checking it, as the API's tag creation does."""
    srv = fresh_server()
    map_data, config = b"an old map, tagged by a push", b"old: yes\n"
    m, c = srv.upload("map", map_data), srv.upload("config", config)
    files = age(srv.data, "map", map_data, 2 * HOUR) + age(srv.data, "config", config, 2 * HOUR)
    client = tmp_path / "client.git"
    subprocess.run(["git", "init", "-q", "--bare", str(client)], check=True)
    (client / "objects" / "info" / "alternates").write_text(f"{srv.data / 'objects'}\n")  # has them, sends none
    env = {**os.environ, "GIT_AUTHOR_NAME": "p", "GIT_AUTHOR_EMAIL": "p@example.com",
           "GIT_COMMITTER_NAME": "p", "GIT_COMMITTER_EMAIL": "p@example.com"}
    tree = subprocess.run(["git", "--git-dir", str(client), "mktree"], check=True, capture_output=True, text=True,
                          input=f"100644 blob {git_blob_id(config)}\tconfig\n100644 blob {git_blob_id(map_data)}\tmap\n"
                          ).stdout.strip()
    commit = subprocess.run(["git", "--git-dir", str(client), "commit-tree", tree, "-m", "tag osm/pushed/v1", "-m",
                             f"map_digest: {m}\nconfig_digest: {c}"], check=True, capture_output=True, text=True,
                            env=env).stdout.strip()
    hook = srv.data / "hooks" / "pre-receive.d" / "50-paused"
    hook.write_text(PAUSED_HOOK)
    hook.chmod(0o755)
    push = subprocess.Popen(["git", "--git-dir", str(client), "push", "--porcelain", str(srv.data),
                             f"{commit}:refs/wo/osm/pushed/v1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not (srv.data / "push-paused").exists():
            assert push.poll() is None and time.monotonic() < deadline, push.communicate()
            time.sleep(0.05)
        report = json.loads(wogit("gc", "--data", str(srv.data), "--json").stdout)
    finally:
        (srv.data / "push-go-on").touch()
        out, err = push.communicate(timeout=60)
    assert (report["swept"], report["kept_in_grace"], report["pruned_objects"]) == ([], 2, 0)
    assert push.returncode == 0, out + err
    assert f"*\t{commit}:refs/wo/osm/pushed/v1\t[new reference]" in out.splitlines()
    assert all(path.exists() for path in files)
    assert refs(srv.data) == {"refs/wo/osm/pushed/v1": commit,
                    "refs/wo/_maps/sha256/" + m[7:]: index_tree_id("map", map_data),
                    "refs/wo/_configs/sha256/" + c[7:]: index_tree_id("config", config)}
    got = requests.get(srv.url + "/osm/pushed/v1")
    assert (got.status_code, got.headers["Wo-Map-Digest"], got.headers["Wo-Config-Digest"]) == (200, m, c)
    fsck(srv.data)
    assert wogit("fsck", "--data", str(srv.data)).returncode == 0


def test_a_tag_whose_upload_gc_unindexes_during_its_creation_is_created(tmp_path, monkeypatch):
    """races.py, gc rounds: a gc that had found an upload old (before a tag's creation freshened
    it) removed its digest index ref while the tag was being made, and the rules' check of the tag
    then answered 500 RULE_BROKEN ("names no uploaded config"). The index ref is now put back (gc
    would too: the blob was touched) and the tag is created. The removal is made to happen at that
    moment: right after the tag's objects are written, as `wogit gc` does it (git update-ref -d)."""
    store = Store(str(tmp_path / "registry.git"))
    map_data, config = b"a map tagged while gc sweeps", b"swept: almost\n"
    m = store.put("map", io.BytesIO(map_data), len(map_data)).digest
    c = store.put("config", io.BytesIO(config), len(config)).digest
    index = "refs/wo/_configs/sha256/" + c[7:]
    install, swept = objects.install, []

    def install_then_sweep(*args, **kwargs):
        install(*args, **kwargs)
        if not swept:
            swept.append(git(store.path, "update-ref", "-d", index, index_tree_id("config", config)).returncode)

    monkeypatch.setattr(objects, "install", install_then_sweep)
    tag = store.create_tag("osm", "swept", "v1", m, c)
    assert swept == [0]
    assert (tag.map_digest, tag.config_digest, tag.map_oid, tag.config_oid) == \
        (m, c, git_blob_id(map_data), git_blob_id(config))
    assert refs(store.path) == {"refs/wo/osm/swept/v1": tag.commit,
                                "refs/wo/_maps/sha256/" + m[7:]: index_tree_id("map", map_data),
                                index: index_tree_id("config", config)}
    fsck(store.path)


@pytest.mark.parametrize("announced", [False, True], ids=["body", "digest-announced"])
def test_an_upload_answered_409_while_gc_sweeps_it_stays_stored(tmp_path, monkeypatch, announced):
    """races.py, gc rounds: an old upload uploaded again is answered 409 (stored already); a gc that
    had found it old just before then removed its index ref, and the bytes the 409 said were stored
    were swept. gc now indexes again what was touched after it looked, and an upload answered
    before its body is read (the digest announced) touches the blob too. The upload is made to
    happen at that moment: right before gc's compare-and-swap removal of the index ref."""
    store = Store(str(tmp_path / "registry.git"))
    data = b"an old upload, uploaded again"
    d = store.put("map", io.BytesIO(data), len(data)).digest
    files = age(Path(store.path), "map", data, 2 * HOUR)
    run_git, answers = store._git, []

    def upload_first(*args, **kwargs):
        if args[:2] == ("update-ref", "-d") and not answers:
            answers.append(store.put("map", io.BytesIO(data), len(data), expected=d if announced else None))
        return run_git(*args, **kwargs)

    monkeypatch.setattr(store, "_git", upload_first)
    report = maintenance.gc(store, HOUR)
    assert answers == [Upload(d, False)]  # the API's 409
    assert (report.swept, report.kept_in_grace, report.kept_in_use, report.pruned_objects) == ([], 0, 0, 0)
    assert refs(store.path) == {"refs/wo/_maps/sha256/" + d[7:]: index_tree_id("map", data)}
    assert all(path.exists() for path in files)
    assert store.get_blob("map", d).oid == git_blob_id(data)
    fsck(store.path)


def test_gc_and_fsck_refuse_what_is_not_a_registry(tmp_path):
    for command in ("gc", "fsck"):
        result = wogit(command, "--data", str(tmp_path / "nothing"))
        assert (result.returncode, result.stdout) == (2, f"wogit {command}: {tmp_path / 'nothing'} is not a registry repository\n")
    assert wogit("gc", "--grace", "soon").returncode == 2


def test_fsck_finds_a_corrupted_map_and_a_foreign_ref(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1", b"the original map bytes", b"k: 1\n")
    clean = wogit("fsck", "--data", str(srv.data))
    assert (clean.returncode, clean.stdout) == (0, "checked 1 maps, 1 configs, 1 tags and 0 metadata histories: no problems\n")
    # Same size, other bytes: a disk that flipped them.
    path = loose(srv.data, git_blob_id(b"the original map bytes"))
    path.chmod(0o644)
    path.write_bytes(zlib.compress(b"blob 22\0the corrupted map bytes"[:30]))
    bad = sha256(b"the corrupted map bytes"[:22])
    commit = refs(srv.data)["refs/wo/osm/area/v1"]
    git(srv.data, "update-ref", "refs/heads/main", commit)
    result = wogit("fsck", "--data", str(srv.data), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["maps"], report["configs"], report["tags"], report["histories"]) == (1, 1, 1, 0)
    ours = [p for p in report["problems"] if not p.startswith("git fsck: ")]
    assert ours == [
        "refs/heads/main: outside the registry's namespaces: only refs/wo/<repository>/<map>/<tag>, "
        "refs/wo/_maps/sha256/<hex>, refs/wo/_configs/sha256/<hex> and refs/wo/_metadata/<repository>/<map> "
        "are registry refs (docs/layout.md)",
        f"refs/wo/_maps/sha256/{m[7:]}: the blob's digest is {bad}, not the ref's {m}",
    ]
    theirs = [p for p in report["problems"] if p.startswith("git fsck: ")]
    blob = git_blob_id(b"the original map bytes")
    assert any("hash-path mismatch" in p and p.endswith(f"/objects/{blob[:2]}/{blob[2:]}") for p in theirs), theirs
    assert f"git fsck: missing blob {git_blob_id(b'the original map bytes')}" in theirs
    text = wogit("fsck", "--data", str(srv.data))
    assert text.returncode == 1
    assert text.stdout.endswith(f"checked 1 maps, 1 configs, 1 tags and 0 metadata histories: "
                                f"{len(report['problems'])} problems\n")
