"""Server hooks: the registry's rules for pushes made with plain git, and the operator's validators.

A registry is filled through its HTTP API; a client clones it with git, makes objects with git's
own plumbing (hash-object, mktree, commit-tree) and pushes them back to the data directory.
Every push that would break the layout is refused whole, with a message naming the ref, and
leaves the repository exactly as it was; valid pushes are served by the HTTP API at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, TEST_CONFIG, TEST_MAP, Server, fsck, git, refs, sha256

MAP_DATA = b"the city map \x00\x01\x02"
INDEX_TREE = "a map's digest index ref must point at a tree holding exactly the file 'map' (a blob, mode 100644)"
CONFIG = b"style: city\n"
EXAMPLES = ROOT / "examples" / "hooks"
AUTHOR = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
          "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_AUTHOR_DATE": "1700000000 +0000",
          "GIT_COMMITTER_DATE": "1700000000 +0000"}


class Client:
    """A git repository that makes objects and pushes them to the registry at ``target``."""

    def __init__(self, path: Path, target: Path):
        self.path, self.target = path, target
        subprocess.run(["git", "clone", "-q", "--mirror", str(target), str(path)], check=True)

    def run(self, *args: str, data: bytes | None = None) -> str:
        result = subprocess.run(["git", "--git-dir", str(self.path), *args], input=data, capture_output=True,
                                check=True, env={**os.environ, **AUTHOR})
        return result.stdout.decode().strip()

    def blob(self, data: bytes) -> str:
        return self.run("hash-object", "-w", "--stdin", data=data)

    def tree(self, *entries: tuple[str, str, str]) -> str:
        """Entries of (mode, name, oid)."""
        kinds = {"100644": "blob", "100755": "blob", "040000": "tree"}
        lines = "".join(f"{mode} {kinds[mode]} {oid}\t{name}\n" for mode, name, oid in entries)
        return self.run("mktree", data=lines.encode())

    def index(self, kind: str, blob: str) -> str:
        """The digest index tree of a map or config: {kind: blob}."""
        return self.tree(("100644", kind, blob))

    def commit(self, tree: str, message: str, *parents: str) -> str:
        return self.run("commit-tree", tree, *sum((["-p", p] for p in parents), []), "-m", message)

    def tag_commit(self, map_oid: str, config_oid: str, map_digest: str, config_digest: str,
                   name: str = "osm/city/v9", *parents: str) -> str:
        tree = self.tree(("100644", "config", config_oid), ("100644", "map", map_oid))
        return self.commit(tree, f"tag {name}\n\nmap_digest: {map_digest}\nconfig_digest: {config_digest}",
                           *parents)

    def push(self, *specs: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--git-dir", str(self.path), "push", "--porcelain", str(self.target),
                               *specs], capture_output=True, text=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("hooks")
    srv = Server(base / "registry.git").start()
    srv.push("osm/city/v1", MAP_DATA, CONFIG)
    assert requests.put(srv.url + "/osm/city/metadata", data=b"license=ODbL-1.0").status_code == 200
    yield srv
    srv.stop()


@pytest.fixture
def client(registry, tmp_path) -> Client:
    return Client(tmp_path / "client.git", registry.data)


# -- installation ------------------------------------------------------------------------------------

def wogit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wogit", *args], capture_output=True, text=True, cwd=ROOT)


def test_hooks_are_installed_on_creation_and_by_init_idempotently(tmp_path):
    data = tmp_path / "new.git"
    result = wogit("init", "--data", str(data))
    assert (result.returncode, result.stdout) == (0, f"created the registry repository {data}; its hooks are installed\n")
    hook = data / "hooks" / "pre-receive"
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\n# wogit-managed-hook") and text.endswith(
        f"exec {sys.executable} -m wogit hook pre-receive\n")
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    before = hook.stat().st_mtime_ns
    again = wogit("init", "--data", str(data))
    assert (again.returncode, again.stdout) == (0, f"checked the registry repository {data}; its hooks are installed\n")
    assert hook.stat().st_mtime_ns == before and hook.read_text() == text

    # An existing repository (a plain mirror) with an operator's own pre-receive hook: kept and chained.
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(data), str(mirror)], check=True)
    own = mirror / "hooks" / "pre-receive"
    own.write_text("#!/bin/sh\necho operator-hook-ran >&2\nexit 0\n")
    own.chmod(0o755)
    result = wogit("init", "--data", str(mirror))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "set wogit.uploadSecret", "set core.fsync=all", "set receive.fsckObjects=true",
        "set core.logAllRefUpdates=false", f"kept the existing pre-receive hook as {mirror}/hooks/pre-receive.d/00-original",
        f"installed {mirror}/hooks/pre-receive",
        f"checked the registry repository {mirror}; its hooks are installed"]
    assert (mirror / "hooks" / "pre-receive.d" / "00-original").read_text().startswith("#!/bin/sh\necho operator")
    assert wogit("init", "--data", str(mirror)).stdout.splitlines() == [
        f"checked the registry repository {mirror}; its hooks are installed"]
    # The chained hook runs after the rules, on a valid push (an empty registry: a new map).
    client = Client(tmp_path / "c.git", mirror)
    m, c = client.blob(b"m"), client.blob(b"c\n")
    md, cd = sha256(b"m"), sha256(b"c\n")
    pushed = client.push(f"{client.index('map', m)}:refs/wo/_maps/sha256/{md[7:]}",
                         f"{client.index('config', c)}:refs/wo/_configs/sha256/{cd[7:]}",
                         f"{client.tag_commit(m, c, md, cd, 'a/b/c')}:refs/wo/a/b/c")
    assert pushed.returncode == 0, pushed.stderr
    assert "operator-hook-ran" in pushed.stderr
    # ... and its refusal refuses the push.
    own = mirror / "hooks" / "pre-receive.d" / "00-original"
    own.write_text("#!/bin/sh\necho no-thanks >&2\nexit 3\n")
    refused = client.push(f"{client.tag_commit(m, c, md, cd, 'a/b/d')}:refs/wo/a/b/d")
    assert refused.returncode != 0
    assert "no-thanks" in refused.stderr and "refused by pre-receive.d/00-original (exit status 3)" in refused.stderr
    assert "refs/wo/a/b/d" not in refs(mirror)


def test_serve_installs_hooks_into_a_plain_mirror(tmp_path, fresh_server):
    source = fresh_server()
    source.push("osm/city/v1", MAP_DATA, CONFIG)
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(source.data), str(mirror)], check=True)
    assert not (mirror / "hooks" / "pre-receive").exists()
    fresh_server(mirror)
    assert "wogit-managed-hook" in (mirror / "hooks" / "pre-receive").read_text()


# -- malformed pushes: each refused with its message, the repository unchanged ------------------------

def _cases(client: Client, registry: Server) -> list[tuple[str, list[str], str]]:
    """(what, push refspecs, the message the refusal must carry)."""
    current = refs(registry.data)
    tag_v1 = current["refs/wo/osm/city/v1"]
    map_oid, config_oid = client.blob(MAP_DATA), client.blob(CONFIG)
    md, cd = sha256(MAP_DATA), sha256(CONFIG)
    good_tag = client.tag_commit(map_oid, config_oid, md, cd)
    other = client.blob(b"another map")
    meta_head = current["refs/wo/_metadata/osm/city"]

    def meta(entries, *parents):
        return client.commit(client.tree(*entries), "set", *parents)

    value = client.blob(b"v")
    bad_key_meta = meta([("100644", "bad key!", value)], meta_head)
    control_meta = meta([("100644", "k", client.blob(b"a\x07b"))], meta_head)
    latin1_meta = meta([("100644", "k", client.blob(b"caf\xe9"))], meta_head)
    space_meta = meta([("100644", "desc", client.blob(b"harmless injected=evil"))], meta_head)
    many_meta = meta([("100644", f"k{i}", value) for i in range(1001)], meta_head)
    big_meta = meta([("100644", "big", client.blob(b"x" * (1 << 20)))], meta_head)
    hidden_meta = meta([("100644", "k", value)], meta([("100644", "bad key!", value)], meta_head))
    dir_meta = meta([("040000", "sub", client.tree(("100644", "k", value)))], meta_head)
    unrelated_meta = meta([("100644", "k", value)])
    outside = "outside the registry's namespaces"
    return [
        ("a branch", [f"{good_tag}:refs/heads/main"], outside),
        ("a git tag", [f"{good_tag}:refs/tags/v1"], outside),
        ("a ref two levels deep", [f"{good_tag}:refs/wo/osm/city"], outside),
        ("an invalid repository name", [f"{good_tag}:refs/wo/Bad_Repo/city/v2"], outside),
        ("the reserved tag name", [f"{good_tag}:refs/wo/osm/city/metadata"], outside),
        ("an index ref that is not 64 hex", [f"{map_oid}:refs/wo/_maps/sha256/abc"], outside),
        ("a tag at a blob", [f"{map_oid}:refs/wo/osm/city/v2"], "a tag must be a commit"),
        ("a tag with an extra file", [f"{client.commit(client.tree(('100644', 'config', config_oid), ('100644', 'map', map_oid), ('100644', 'x', value)), f'map_digest: {md}' + chr(10) + f'config_digest: {cd}')}:refs/wo/osm/city/v2"],
         "exactly the files 'map' and 'config'"),
        ("a tag without config", [f"{client.commit(client.tree(('100644', 'map', map_oid)), 'no config')}:refs/wo/osm/city/v2"],
         "exactly the files 'map' and 'config'"),
        ("a tag whose map is a directory", [f"{client.commit(client.tree(('040000', 'map', client.tree(('100644', 'm', map_oid))), ('100644', 'config', config_oid)), 'dir')}:refs/wo/osm/city/v2"],
         "exactly the files 'map' and 'config'"),
        ("an executable map", [f"{client.commit(client.tree(('100755', 'map', map_oid), ('100644', 'config', config_oid)), 'exec')}:refs/wo/osm/city/v2"],
         "exactly the files 'map' and 'config'"),
        ("a tag with a parent", [f"{client.tag_commit(map_oid, config_oid, md, cd, 'osm/city/v2', tag_v1)}:refs/wo/osm/city/v2"],
         "a tag is a commit without parents"),
        ("a tag naming no digests", [f"{client.commit(client.tree(('100644', 'config', config_oid), ('100644', 'map', map_oid)), 'just a tag')}:refs/wo/osm/city/v2"],
         "must name 'map_digest: sha256:<hex>'"),
        ("a tag whose map was never uploaded", [f"{client.tag_commit(other, config_oid, sha256(b'another map'), cd)}:refs/wo/osm/city/v2"],
         f"map_digest {sha256(b'another map')} names no uploaded map"),
        ("a tag whose tree disagrees with its digests", [f"{client.tag_commit(other, config_oid, md, cd)}:refs/wo/osm/city/v2"],
         f"the tree's 'map' is {other}, but {md} is {map_oid}"),
        ("a tag naming a config's digest as its map", [f"{client.tag_commit(config_oid, config_oid, cd, cd)}:refs/wo/osm/city/v2"],
         f"map_digest {cd} names no uploaded map"),
        ("moving a tag", [f"+{good_tag}:refs/wo/osm/city/v1"], "tags are immutable: an existing tag cannot be moved"),
        ("deleting a tag", [":refs/wo/osm/city/v1"], "tags are immutable: an existing tag cannot be deleted"),
        ("an index ref with the wrong digest", [f"{client.index('map', other)}:refs/wo/_maps/sha256/{'0' * 64}"],
         f"the blob's digest is {sha256(b'another map')}, not the ref's sha256:{'0' * 64}"),
        ("an index ref at a commit", [f"{good_tag}:refs/wo/_maps/sha256/{'1' * 64}"], INDEX_TREE),
        ("an index ref at a blob", [f"{other}:refs/wo/_maps/sha256/{sha256(b'another map')[7:]}"], INDEX_TREE),
        ("an index tree naming the other kind", [f"{client.index('config', other)}:refs/wo/_maps/sha256/{sha256(b'another map')[7:]}"],
         INDEX_TREE),
        ("an index tree with two files", [f"{client.tree(('100644', 'map', other), ('100644', 'x', other))}:refs/wo/_maps/sha256/{sha256(b'another map')[7:]}"],
         INDEX_TREE),
        ("a config that is not UTF-8", [f"{client.index('config', client.blob(b'caf' + bytes([0xE9])))}:refs/wo/_configs/sha256/{hashlib.sha256(b'caf' + bytes([0xE9])).hexdigest()}"],
         "a config must be UTF-8 text"),
        ("moving an index ref", [f"+{client.index('map', other)}:refs/wo/_maps/sha256/{md[7:]}"],
         "a map's digest index ref cannot be moved"),
        ("deleting an index ref a tag uses", [f":refs/wo/_configs/sha256/{cd[7:]}"],
         f"the config {cd} is used by the tag refs/wo/osm/city/v1: its index ref stays"),
        ("an invalid metadata key", [f"{bad_key_meta}:refs/wo/_metadata/osm/city"],
         "invalid metadata key 'bad key!'"),
        ("a control character in a value", [f"{control_meta}:refs/wo/_metadata/osm/city"],
         "contains the control or line-separator character U+0007"),
        ("a value that is not UTF-8", [f"{latin1_meta}:refs/wo/_metadata/osm/city"], "the value of 'k' is not UTF-8"),
        ("a space in a value (it would not read back)", [f"{space_meta}:refs/wo/_metadata/osm/city"],
         "value of 'desc' contains a space (U+0020), which separates pairs"),
        ("more than 1000 keys", [f"{many_meta}:refs/wo/_metadata/osm/city"],
         "a map may have at most 1000 metadata keys, not 1001"),
        ("more than 1 MiB of metadata", [f"{big_meta}:refs/wo/_metadata/osm/city"],
         f"a map's metadata may be at most {1 << 20} bytes in all (as GET .../metadata writes it), not "),
        ("a bad commit hidden under a good one", [f"{hidden_meta}:refs/wo/_metadata/osm/city"],
         "invalid metadata key 'bad key!'"),
        ("a directory in metadata", [f"{dir_meta}:refs/wo/_metadata/osm/city"], "metadata entry 'sub' is not a file"),
        ("metadata that loses history", [f"+{unrelated_meta}:refs/wo/_metadata/osm/city"], "not a fast-forward"),
        ("metadata for a map with no tag", [f"{unrelated_meta}:refs/wo/_metadata/osm/nowhere"],
         "map osm/nowhere has no tag: a metadata history starts on a tagged map"),
        ("deleting metadata", [":refs/wo/_metadata/osm/city"], "a map's metadata history cannot be deleted"),
        ("a valid tag beside an invalid ref", [f"{good_tag}:refs/wo/osm/city/v9", f"{good_tag}:refs/heads/x"], outside),
    ]


def test_malformed_pushes_are_refused_whole_with_a_message_per_ref(registry, client):
    before = refs(registry.data)
    cases = _cases(client, registry)
    assert len(cases) >= 15
    for what, specs, message in cases:
        result = client.push(*specs)
        assert result.returncode != 0, f"{what}: accepted\n{result.stderr}"
        assert message in result.stderr, f"{what}: {message!r} not in\n{result.stderr}"
        refused_ref = specs[-1].split(":")[-1]
        assert f"wogit: refusing {refused_ref}: " in result.stderr, what
        assert "pre-receive hook declined" in result.stdout + result.stderr, what
        assert refs(registry.data) == before, what
    fsck(registry.data)
    # The HTTP API still serves what it served.
    assert requests.get(registry.url + "/osm/city/metadata/license").text == "ODbL-1.0"
    assert requests.get(registry.url + "/osm/city/v9").status_code == 404


def test_a_valid_push_is_accepted_and_served_at_once(registry, client):
    map_data, config = TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes()
    md, cd = sha256(map_data), sha256(config)
    m, c = client.blob(map_data), client.blob(config)
    tag = client.tag_commit(m, c, md, cd, "osm/test-area/v1")
    head = refs(registry.data)["refs/wo/_metadata/osm/city"]
    metadata = client.commit(client.tree(("100644", "license", client.blob(b"ODbL-1.0")),
                                         ("100644", "source", client.blob(b"git-push"))), "set source", head)
    new_map_meta = client.commit(client.tree(("100644", "area", client.blob(b"test"))), "set area")
    result = client.push(f"{client.index('map', m)}:refs/wo/_maps/sha256/{md[7:]}",
                         f"{client.index('config', c)}:refs/wo/_configs/sha256/{cd[7:]}",
                         f"{tag}:refs/wo/osm/test-area/v1", f"{metadata}:refs/wo/_metadata/osm/city",
                         f"{new_map_meta}:refs/wo/_metadata/osm/test-area")
    assert result.returncode == 0, result.stderr
    reply = requests.get(registry.url + "/osm/test-area/v1")
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/gzip"
    import io
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(reply.content)) as archive:
        assert archive.extractfile("map").read() == map_data
        assert archive.extractfile("config").read() == config
        assert archive.extractfile("metadata").read() == b"area=test\n"
    assert requests.get(registry.url + "/osm/city/metadata/source").text == "git-push"
    # The HTTP API goes on from what was pushed: metadata merges onto the pushed commit.
    assert requests.put(registry.url + "/osm/city/metadata", data=b"more=1").status_code == 200
    assert requests.get(registry.url + "/osm/city/metadata").text == "license=ODbL-1.0\nmore=1\nsource=git-push\n"
    # Uploading the pushed map over HTTP finds it there.
    assert requests.put(registry.url + "/blobs/upload", data=map_data).status_code == 409
    fsck(registry.data)


def test_a_mirror_pushes_its_new_tags_into_a_registry(fresh_server, tmp_path):
    primary, other = fresh_server(), fresh_server()
    primary.push("osm/city/v1", MAP_DATA, CONFIG)
    # The same tag made elsewhere from another config: a different commit. (The same map and
    # config tagged in the same second would be the very same commit: tags are reproducible.)
    other.push("osm/city/v1", MAP_DATA, b"style: other\n")
    other.push("game/level/v1", b"level one", b"name: one\n")
    assert requests.put(other.url + "/game/level/metadata", data=b"author=me").status_code == 200
    before = refs(primary.data)
    # Forcing everything is refused whole: the two osm/city/v1 differ and tags are immutable.
    everything = subprocess.run(["git", "--git-dir", str(other.data), "push", str(primary.data),
                                 "+refs/wo/*:refs/wo/*"], capture_output=True, text=True)
    assert everything.returncode != 0
    assert "wogit: refusing refs/wo/osm/city/v1: tags are immutable: an existing tag cannot be moved" in everything.stderr
    assert refs(primary.data) == before
    # The safe way (docs/git.md): push the refs the registry lacks.
    theirs = refs(other.data)
    ours = refs(primary.data)
    missing = [f"{ref}:{ref}" for ref in theirs if ref not in ours]
    pushed = subprocess.run(["git", "--git-dir", str(other.data), "push", str(primary.data), *missing],
                            capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    assert requests.get(primary.url + "/game/level/metadata/author").text == "me"
    assert requests.get(primary.url + "/game/level/v1").status_code == 200
    fsck(primary.data)


# -- the operator's validators -------------------------------------------------------------------------

def install_validator(data: Path, name: str, script: str) -> None:
    path = data / "hooks" / name
    path.write_text(script)
    path.chmod(0o755)


def install_example(data: Path, name: str) -> None:
    """An example hook from examples/hooks, run by this Python (which has PyYAML)."""
    text = (EXAMPLES / name).read_text().replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1)
    install_validator(data, name, text)


def test_example_validators_accept_osm_pbf_and_yaml_over_http(fresh_server):
    srv = fresh_server()
    install_example(srv.data, "wo-validate-map")
    install_example(srv.data, "wo-validate-config")
    before = refs(srv.data)
    reply = requests.put(srv.url + "/blobs/upload", data=b"just some bytes, not a PBF")
    assert reply.status_code == 422
    assert reply.json() == {"msg": "not an OSM PBF file: first BlobHeader is " + str(int.from_bytes(b"just", "big")) + " bytes (at most 64 KiB)"}
    reply = requests.put(srv.url + "/configs/upload", data=b"a: [1,\n")
    assert reply.status_code == 422 and reply.json()["msg"].startswith("not valid YAML: while parsing a flow node")
    assert refs(srv.data) == before
    assert not [p for p in (srv.data / "objects").iterdir() if p.name.startswith("tmp_")]
    m = requests.put(srv.url + "/blobs/upload", data=TEST_MAP.read_bytes())
    c = requests.put(srv.url + "/configs/upload", data=TEST_CONFIG.read_bytes())
    assert (m.status_code, c.status_code) == (201, 201)
    assert m.headers["Wo-Map-Digest"] == sha256(TEST_MAP.read_bytes())
    assert srv.tag("osm/test-area/v1", m.headers["Wo-Map-Digest"], c.headers["Wo-Config-Digest"]).status_code == 201
    # Chunked uploads go through the validator too.
    chunked = requests.put(srv.url + "/blobs/upload", data=iter([b"not ", b"a pbf"]))
    assert chunked.status_code == 422 and chunked.json()["msg"].startswith("not an OSM PBF file")
    fsck(srv.data)


CONTEXT_HOOK = """#!/bin/sh
echo "$WO_REPOSITORY|$WO_MAP|$WO_TAG|$WO_MAP_DIGEST|$WO_CONFIG_DIGEST|$WO_USER|$WO_DIGEST" >> "$GIT_DIR_LOG"
case "$WO_TAG" in rc*) echo "release candidates are not published here" >&2; echo second line >&2; exit 1;; esac
exit 0
"""


def test_tag_validator_gets_its_context_and_refuses_over_http(fresh_server, tmp_path):
    log = tmp_path / "context.log"
    srv = fresh_server(None, env={"GIT_DIR_LOG": str(log)})
    install_validator(srv.data, "wo-validate-tag", CONTEXT_HOOK)
    m, c = srv.upload("map", MAP_DATA), srv.upload("config", CONFIG)
    assert srv.tag("osm/city/v1", m, c).status_code == 201
    refused = srv.tag("osm/city/rc1", m, c)
    assert refused.status_code == 422
    assert refused.json() == {"msg": "release candidates are not published here\nsecond line"}
    assert "refs/wo/osm/city/rc1" not in refs(srv.data)
    assert log.read_text().splitlines() == [f"osm|city|v1|{m}|{c}||", f"osm|city|rc1|{m}|{c}||"]


def test_validators_refuse_pushed_maps_and_tags(registry, client, tmp_path):
    install_example(registry.data, "wo-validate-map")
    install_validator(registry.data, "wo-validate-tag", CONTEXT_HOOK.replace('"$GIT_DIR_LOG"', "/dev/null"))
    try:
        data = b"not a pbf at all"
        oid = client.blob(data)
        result = client.push(f"{client.index('map', oid)}:refs/wo/_maps/sha256/{hashlib.sha256(data).hexdigest()}")
        assert result.returncode != 0
        assert "not an OSM PBF file: first BlobHeader" in result.stderr
        m, c = client.blob(MAP_DATA), client.blob(CONFIG)
        rc = client.tag_commit(m, c, sha256(MAP_DATA), sha256(CONFIG), "osm/city/rc2")
        result = client.push(f"{rc}:refs/wo/osm/city/rc2")
        assert result.returncode != 0
        assert "wogit: refusing refs/wo/osm/city/rc2: release candidates are not published here" in result.stderr
        pbf = TEST_MAP.read_bytes()
        ok = client.push(f"{client.index('map', client.blob(pbf))}:refs/wo/_maps/sha256/{hashlib.sha256(pbf).hexdigest()}")
        assert ok.returncode == 0, ok.stderr
    finally:
        for name in ("wo-validate-map", "wo-validate-tag"):
            (registry.data / "hooks" / name).unlink()


def test_a_hanging_validator_is_killed_with_its_children(fresh_server, tmp_path):
    srv = fresh_server(None, "--hook-timeout", "1")
    marker = tmp_path / "child-survived"
    install_validator(srv.data, "wo-validate-map",
                      f"#!/bin/sh\n(sleep 3; touch {marker}) &\nsleep 30\n")
    started = time.monotonic()
    reply = requests.put(srv.url + "/blobs/upload", data=b"slow", timeout=20)
    took = time.monotonic() - started
    assert reply.status_code == 422
    assert reply.json() == {"msg": "wo-validate-map did not finish within 1 s and was stopped"}
    assert took < 10
    assert "refs/wo/_maps" not in "".join(refs(srv.data))
    # A pushed map meets the same timeout (read from the repository's config by the hook).
    client = Client(tmp_path / "c.git", srv.data)
    oid = client.blob(b"slow too")
    result = client.push(f"{client.index('map', oid)}:refs/wo/_maps/sha256/{hashlib.sha256(b'slow too').hexdigest()}")
    assert result.returncode != 0 and "wo-validate-map did not finish within 1 s" in result.stderr
    time.sleep(3.5)
    assert not marker.exists()  # the hook's background child was killed with its group


def test_a_validator_that_is_not_executable_is_no_check(fresh_server):
    srv = fresh_server()
    path = srv.data / "hooks" / "wo-validate-map"
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o644)
    assert requests.put(srv.url + "/blobs/upload", data=b"anything").status_code == 201
    path.chmod(0o755)
    reply = requests.put(srv.url + "/blobs/upload", data=b"anything else")
    assert reply.status_code == 422 and reply.json() == {"msg": "wo-validate-map refused it (exit status 1)"}


def test_init_gives_an_existing_repository_the_registry_settings(fresh_server, tmp_path):
    """A plain mirror (a restored backup) made a registry by `wogit init`: objects pushed into it are
    checked like the original's, refs and objects synced."""
    source = fresh_server()
    source.push("osm/city/v1", MAP_DATA, CONFIG)
    mirror = tmp_path / "restored.git"
    subprocess.run(["git", "clone", "-q", "--mirror", f"file://{source.data}", str(mirror)], check=True)
    assert git(mirror, "config", "--get", "receive.fsckObjects", check=False).stdout == ""
    assert wogit("init", "--data", str(mirror)).returncode == 0
    for key, value in (("core.fsync", "all"), ("receive.fsckObjects", "true"), ("core.logAllRefUpdates", "false")):
        assert git(mirror, "config", "--get", key).stdout == value + "\n", key
    # A tag commit without an author line: git's own object check refuses it.
    client = Client(tmp_path / "client.git", mirror)
    m, c = client.blob(MAP_DATA), client.blob(CONFIG)
    tree = client.tree(("100644", "config", c), ("100644", "map", m))
    raw = (f"tree {tree}\ncommitter t <t@example.com> 1700000000 +0000\n\n"
           f"tag osm/city/v2\n\nmap_digest: {sha256(MAP_DATA)}\nconfig_digest: {sha256(CONFIG)}\n").encode()
    bad = client.run("hash-object", "-t", "commit", "-w", "--literally", "--stdin", data=raw)
    before = refs(mirror)
    result = client.push(f"{bad}:refs/wo/osm/city/v2")
    assert result.returncode != 0
    assert "missingAuthor" in result.stderr
    assert refs(mirror) == before
    fsck(mirror)
