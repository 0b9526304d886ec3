"""wogit.refs against real git: single refs read from loose files and packed-refs, moved with
git's lock protocol; and the registry's counts and metadata writes on packed refs, through a server.

Every value read is compared with what `git rev-parse` / `git for-each-ref` say of the same
repository.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import traceback
from pathlib import Path

import pytest
import requests
from conftest import fsck, git, refs

from wogit import names
from wogit.refs import ZERO, Locked, Moved, Refs


def bare(tmp_path: Path) -> Path:
    path = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def write_values(repo: Path, n: int) -> list[str]:
    """``n`` distinct blobs written into ``repo``: values refs may point at."""
    paths = []
    for i in range(n):
        path = repo / f"value-{i}"
        path.write_text(f"value {i}\n")
        paths.append(str(path))
    out = subprocess.run(["git", "--git-dir", str(repo), "hash-object", "-w", *paths], capture_output=True,
                         text=True, check=True).stdout.split()
    for path in paths:
        Path(path).unlink()
    return out


def update_ref(repo: Path, name: str, oid: str) -> None:
    git(repo, "update-ref", name, oid)


def rev_parse(repo: Path, name: str) -> str | None:
    result = git(repo, "rev-parse", "--verify", "--quiet", name, check=False)
    return result.stdout.strip() or None


# Names chosen so that sorted neighbours share prefixes ("a/b/c" < "a/b/c-d" < "a/b/c.d" < "a/b/c/..."
# is impossible in git, "a/b-c" < "a/b/..." < "a/b0" is not).
NAMES = sorted({f"refs/wo/{r}/{m}/{t}" for r in ("a", "a-b", "a.b", "a0", "z") for m in ("b", "b-c", "b0")
                for t in ("c", "c-d", "c.d", "c0", "v1", "v10", "v2")}
               | {f"refs/wo/_maps/sha256/{i:064x}" for i in range(0, 40, 3)}
               | {f"refs/wo/_metadata/{r}/b" for r in ("a", "a-b", "z")})


@pytest.fixture
def packed_repo(tmp_path):
    """A repository whose NAMES are all packed (and none loose), and their values."""
    repo = bare(tmp_path)
    values = write_values(repo, len(NAMES))
    expected = dict(zip(NAMES, values))
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "--stdin"], check=True, text=True,
                   input="".join(f"create {name} {oid}\n" for name, oid in expected.items()))
    git(repo, "pack-refs", "--all")
    assert not list((repo / "refs" / "wo").rglob("*"))  # no loose ref file left
    assert (repo / "packed-refs").read_text().startswith("# pack-refs with: peeled fully-peeled sorted \n")
    return repo, expected


def test_packed_only_refs_are_found_by_binary_search(packed_repo):
    repo, expected = packed_repo
    reader = Refs(str(repo))
    for name, oid in expected.items():
        assert reader.get(name) == oid == rev_parse(repo, name)
    for absent in ("refs/wo/a/b/c-", "refs/wo/a/b/c/", "refs/wo/a/b", "refs/wo/0", "refs/wo/zz/b/c",
                   "refs/wo/_maps/sha256/" + "f" * 64, "refs/wo/", "refs/wo/_metadata/a/b0", "refs/a"):
        assert reader.get(absent) is None
        assert rev_parse(repo, absent) is None


def test_a_packed_refs_of_many_blocks(tmp_path):
    """Names of every length across the file's 4 KiB blocks, some peeled: each found, none invented."""
    repo = bare(tmp_path)
    blob, = write_values(repo, 1)
    tag = subprocess.run(["git", "--git-dir", str(repo), "mktag"], capture_output=True, text=True, check=True,
                         input=f"object {blob}\ntype blob\ntag t\ntagger t <t@t> 1700000000 +0000\n\nt\n").stdout.strip()
    rng = random.Random(7)
    wanted = {f"refs/wo/r{i % 37}/m{'x' * rng.randrange(60)}/t{i}": (tag if i % 5 == 0 else blob) for i in range(6000)}
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "--stdin"], check=True, text=True,
                   input="".join(f"create {name} {oid}\n" for name, oid in wanted.items()))
    git(repo, "pack-refs", "--all")
    assert (repo / "packed-refs").stat().st_size > 100 * 4096
    packed = Refs(str(repo)).packed()
    assert all(packed.get(name) == oid for name, oid in wanted.items())
    for name in rng.sample(sorted(wanted), 300):
        assert packed.get(name + "0") is None and packed.get(name[:-1]) in (None, wanted.get(name[:-1]))
    assert list(packed.names("refs/wo/")) == git(repo, "for-each-ref", "--format=%(refname)").stdout.split()
    assert list(packed.names("refs/wo/r3/")) == sorted(n for n in wanted if n.startswith("refs/wo/r3/"))


def test_names_and_spans_under_a_prefix_are_gits(packed_repo):
    repo, _ = packed_repo
    packed = Refs(str(repo)).packed()
    listed = git(repo, "for-each-ref", "--format=%(refname)").stdout.split()  # in git's order
    for prefix in ("refs/wo/", "refs/wo/a/", "refs/wo/a/b/", "refs/wo/a-b/", "refs/wo/_maps/sha256/",
                   "refs/wo/_metadata/", "refs/wo/_", "refs/wo/a", "refs/wo/q/", "refs/wo/z/b0/", ""):
        assert list(packed.names(prefix)) == [n for n in listed if n.startswith(prefix)]
        begin, end = packed.span(prefix)
        text = b"".join(packed.text(begin, end, size=50))  # pieces of whole lines, however small
        assert [line.split(" ")[1] for line in text.decode().splitlines()] == list(packed.names(prefix))


def test_children_are_the_names_right_below_a_prefix(packed_repo):
    repo, expected = packed_repo
    reader = Refs(str(repo))
    assert reader.children("refs/wo/") == {"a", "a-b", "a.b", "a0", "z", "_maps", "_metadata"}
    assert list(reader.packed().children("refs/wo/")) == ["_maps", "_metadata", "a-b", "a.b", "a", "a0", "z"]  # git's order
    assert reader.children("refs/wo/_metadata/") == {"a", "a-b", "z"}
    assert reader.children("refs/wo/a/") == {"b", "b-c", "b0"}
    assert reader.children("refs/wo/q/") == set()
    blob, = write_values(repo, 1)
    for name in ("refs/x/a", "refs/x/a-b/c", "refs/x/a.c", "refs/x/a0/d/e", "refs/x/a0/f"):  # leaves and not
        update_ref(repo, name, blob)
    assert reader.children("refs/x/") == {"a", "a-b", "a.c", "a0"}  # loose
    git(repo, "pack-refs", "--all")
    assert list(reader.packed().children("refs/x/")) == ["a", "a-b", "a.c", "a0"]  # a leaf first
    update_ref(repo, "refs/wo/new/m/t", blob)  # loose, beside the packed ones
    (repo / "refs/wo/gone/m").mkdir(parents=True)  # a directory without a ref
    (repo / "refs/wo/locked/m").mkdir(parents=True)
    (repo / "refs/wo/locked/m/t.lock").write_text(blob + "\n")  # a ref being created, not yet one
    assert reader.children("refs/wo/") == {"a", "a-b", "a.b", "a0", "z", "_maps", "_metadata", "new"}


def test_loose_beats_packed_and_deleted_refs_are_gone(packed_repo):
    repo, expected = packed_repo
    reader = Refs(str(repo))
    moved, fresh = write_values(repo, 2)
    update_ref(repo, "refs/wo/a/b/c", moved)  # a loose file now shadows the packed line
    assert (repo / "refs/wo/a/b/c").read_text() == moved + "\n"
    assert reader.get("refs/wo/a/b/c") == moved == rev_parse(repo, "refs/wo/a/b/c")
    update_ref(repo, "refs/wo/new/b/c", fresh)  # loose only
    assert reader.get("refs/wo/new/b/c") == fresh
    git(repo, "update-ref", "-d", "refs/wo/a/b/c-d")  # packed only: git rewrites packed-refs
    git(repo, "update-ref", "-d", "refs/wo/a/b/c")  # loose and packed
    git(repo, "update-ref", "-d", "refs/wo/new/b/c")  # loose only
    for gone in ("refs/wo/a/b/c-d", "refs/wo/a/b/c", "refs/wo/new/b/c"):
        assert reader.get(gone) is None and rev_parse(repo, gone) is None
    assert reader.get("refs/wo/a/b/c.d") == expected["refs/wo/a/b/c.d"]  # a new packed-refs, read again


def test_peeled_lines_and_comments_are_skipped(tmp_path):
    repo = bare(tmp_path)
    values = write_values(repo, 60)
    for i, oid in enumerate(values):  # annotated tags: packed with a "^<peeled>" line after each
        name = f"refs/wo/r/m/t{i:02d}"
        tag = subprocess.run(["git", "--git-dir", str(repo), "mktag"], capture_output=True, text=True, check=True,
                             input=f"object {oid}\ntype blob\ntag t{i}\n"
                                   "tagger t <t@t> 1700000000 +0000\n\nt\n").stdout.strip()
        if i % 3:
            update_ref(repo, name, tag)
        else:
            update_ref(repo, name, oid)
    git(repo, "pack-refs", "--all")
    assert (repo / "packed-refs").read_text().count("\n^") == 40
    reader = Refs(str(repo))
    for i in range(60):
        name = f"refs/wo/r/m/t{i:02d}"
        assert reader.get(name) == rev_parse(repo, name)  # the tag object's id, never the peeled one
    assert list(reader.packed().names("refs/wo/r/m/")) == [f"refs/wo/r/m/t{i:02d}" for i in range(60)]


def test_unsorted_packed_refs_are_read_whole(packed_repo):
    repo, expected = packed_repo
    lines = [f"{oid} {name}\n" for name, oid in expected.items()]
    random.Random(1).shuffle(lines)
    (repo / "packed-refs").write_text("# pack-refs with: peeled \n" + "".join(lines))  # no "sorted"
    reader = Refs(str(repo))
    for name, oid in expected.items():
        assert reader.get(name) == oid == rev_parse(repo, name)
    assert reader.get("refs/wo/a/b/c-") is None
    assert list(reader.packed().names("refs/wo/a/")) == sorted(n for n in expected if n.startswith("refs/wo/a/"))
    (repo / "packed-refs").write_text("".join(lines))  # no header at all: unsorted too
    assert all(reader.get(name) == oid for name, oid in expected.items())


def test_update_is_a_compare_and_swap_git_reads(packed_repo):
    repo, expected = packed_repo
    reader = Refs(str(repo))
    name = "refs/wo/_metadata/a/b"  # packed only
    old, (new, newer) = expected[name], write_values(repo, 2)
    with pytest.raises(Moved):
        reader.update(name, new, newer)  # not at newer
    with pytest.raises(Moved):
        reader.update(name, new, ZERO)  # it exists
    assert not (repo / name).exists() and not (repo / (name + ".lock")).exists()
    reader.update(name, new, old)
    assert (repo / name).read_text() == new + "\n"
    assert rev_parse(repo, name) == reader.get(name) == new
    reader.update("refs/wo/_metadata/q/b", newer, ZERO)  # a create
    assert rev_parse(repo, "refs/wo/_metadata/q/b") == newer
    (repo / (name + ".lock")).write_text("")  # another writer's lock
    with pytest.raises(Locked):
        reader.update(name, newer, new)
    assert (repo / (name + ".lock")).exists() and reader.get(name) == new  # left as it was
    (repo / (name + ".lock")).unlink()
    assert refs(repo) == {**expected, name: new, "refs/wo/_metadata/q/b": newer}
    assert git(repo, "fsck", "--strict", check=False).returncode == 0


def test_concurrent_moves_with_git_lose_no_update(tmp_path):
    """Writers of wogit.refs and `git update-ref <ref> <new> <old>` advance one ref together, each
    from the value it read, while `git pack-refs` packs it: every success moves it one step, so
    none is lost."""
    repo = bare(tmp_path)
    chain = write_values(repo, 81)
    step = {oid: i for i, oid in enumerate(chain)}
    name = "refs/wo/_metadata/r/m"
    update_ref(repo, name, chain[0])
    git(repo, "pack-refs", "--all")
    reader = Refs(str(repo), fsync=False)
    wins, reads, errors = [], [], []

    def recorded(work):
        def run():
            try:
                work()
            except Exception as exc:  # the thread's failure is the test's
                errors.append(traceback.format_exc())
        return run

    def ours():
        while True:
            current = reader.get(name)
            reads.append(current)
            if step[current] >= 80:
                return
            try:
                reader.update(name, chain[step[current] + 1], current)
                wins.append("ours")
            except (Locked, Moved):
                pass

    def gits():
        while True:
            current = rev_parse(repo, name)
            if step[current] >= 80:
                return
            if git(repo, "update-ref", name, chain[step[current] + 1], current, check=False).returncode == 0:
                wins.append("git")

    def packs():  # git pack-refs meanwhile: loose refs packed and removed under their locks
        while len(wins) < 80:
            git(repo, "pack-refs", "--all", check=False)

    threads = [threading.Thread(target=recorded(work)) for work in (ours, ours, gits, packs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(wins) == 80 and "ours" in wins
    assert reader.get(name) == rev_parse(repo, name) == chain[80]
    assert all(value in step for value in reads)  # never a half-written file, never missing
    assert not list((repo / "refs").rglob("*.lock"))


# -- the names' patterns: what counting packed refs relies on ---------------------------------------

KIND_CASES = [
    "refs/wo/osm/test-area/v1", "refs/wo/a/b/c", "refs/wo/" + "r" * 64 + "/m/t", "refs/wo/" + "r" * 65 + "/m/t",
    "refs/wo/r/" + "m" * 65 + "/t", "refs/wo/r/m/" + "T" * 128, "refs/wo/r/m/" + "T" * 129, "refs/wo/r/m/metadata",
    "refs/wo/r/m/metadata.x", "refs/wo/r/m/Metadata", "refs/wo/r/m/v1.lock", "refs/wo/r/m/v1.", "refs/wo/r/m/a..b",
    "refs/wo/r/m/.x", "refs/wo/r/m/-x", "refs/wo/r.lock/m/t", "refs/wo/r/m.lock/t", "refs/wo/r.lockx/m/t",
    "refs/wo/A/m/t", "refs/wo/_x/m/t", "refs/wo/r/m/t/u", "refs/wo/r/m", "refs/wo/r--/m/t",
    "refs/wo/_maps/sha256/" + "a" * 64, "refs/wo/_configs/sha256/" + "0f" * 32, "refs/wo/_maps/sha256/" + "a" * 63,
    "refs/wo/_maps/sha256/" + "A" * 64, "refs/wo/_maps/sha256/" + "a" * 65, "refs/wo/_configs/" + "a" * 64,
    "refs/wo/_metadata/r/m", "refs/wo/_metadata/r/m/x", "refs/wo/_metadata/r", "refs/wo/_metadata/r.lock/m",
    "refs/wo/_metadata/r/m.lock", "refs/wo/_metadata/" + "r" * 65 + "/m", "refs/heads/main", "refs/wo/r/m/t\u00e9",
]


@pytest.mark.parametrize("ref", KIND_CASES)
def test_packed_line_patterns_are_parse_refs_kinds(ref):
    line = ("0" * 40 + " " + ref).encode()
    matching = [kind for kind, pattern in names.PACKED_LINES.items() if pattern.findall(line)]
    assert matching == ([names.kind_of(ref)] if names.kind_of(ref) else [])


def test_packed_line_patterns_count_whole_lines_only():
    text = "".join(f"{'0' * 40} {ref}\n" for ref in KIND_CASES).encode() + b"^" + b"0" * 40 + b"\n"
    for kind, pattern in names.PACKED_LINES.items():
        assert len(pattern.findall(text)) == sum(names.kind_of(ref) == kind for ref in KIND_CASES)


# -- through a server: metadata moves and counts on packed refs ----------------------------------------

def scrape_holdings(url: str) -> dict[str, float]:
    lines = requests.get(url + "/metrics").text.splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines
            if line.split(" ")[0] in ("wogit_maps", "wogit_configs", "wogit_tags")}


def test_counts_and_metadata_writes_on_a_packed_registry(fresh_server):
    srv = fresh_server()
    config = srv.upload("config", b"a: 1\n")
    for i in range(3):
        srv.push(f"osm/city/v{i}", f"map {i}".encode())
    srv.push("osm/town/v1", b"map town")
    assert requests.put(srv.url + "/osm/city/metadata", data="a=1").status_code == 200
    git(srv.data, "pack-refs", "--all")  # every ref now a packed-refs line only
    assert not [p for p in (srv.data / "refs").rglob("*") if p.is_file()]
    head = git(srv.data, "rev-parse", "refs/wo/_metadata/osm/city").stdout.strip()
    assert requests.put(srv.url + "/osm/city/metadata", data="b=2").status_code == 200  # a packed ref moved
    moved = (srv.data / "refs/wo/_metadata/osm/city").read_text().strip()
    assert git(srv.data, "rev-parse", "refs/wo/_metadata/osm/city^").stdout.strip() == head
    assert requests.get(srv.url + "/osm/city/metadata").text == "a=1\nb=2\n"
    srv.push("osm/city/v9", b"map 9")  # loose, beside the packed ones
    assert requests.delete(srv.url + "/osm/city/v0").status_code == 200  # a packed tag deleted
    assert git(srv.data, "rev-parse", "refs/wo/_metadata/osm/city~2").stdout.strip() == head  # the deletion after b=2
    assert moved in git(srv.data, "rev-list", "refs/wo/_metadata/osm/city").stdout.split()
    expected = {ref: oid for ref, oid in refs(srv.data).items()}
    tags = [r for r in expected if isinstance(names.parse_ref(r), names.TagName)]
    assert sorted(tags) == ["refs/wo/osm/city/v1", "refs/wo/osm/city/v2", "refs/wo/osm/city/v9", "refs/wo/osm/town/v1"]
    assert scrape_holdings(srv.url) == {"wogit_maps": 5.0, "wogit_configs": 1.0, "wogit_tags": 4.0}
    assert config == git(srv.data, "for-each-ref", "--format=%(refname)", "refs/wo/_configs/").stdout.strip().replace(
        "refs/wo/_configs/sha256/", "sha256:")
    fsck(srv.data)
    assert "Traceback" not in srv.log_text()


def test_readyz_and_reads_of_a_packed_registry(fresh_server):
    srv = fresh_server()
    srv.push("osm/city/v1")
    git(srv.data, "pack-refs", "--all")
    assert requests.get(srv.url + "/readyz").json() == {"status": "ready"}
    assert json.loads(requests.get(srv.url + "/osm/city/_tags").text)["tags"][0]["tag"] == "v1"


def test_catalog_of_packed_and_loose_repositories(fresh_server):
    srv = fresh_server()
    srv.push("alpha/city/v1", b"map a")
    srv.push("beta/town/v1", b"map b")
    git(srv.data, "pack-refs", "--all")
    srv.push("gamma/village/v1", b"map c")  # loose
    assert requests.delete(srv.url + "/beta/town/v1").status_code == 200  # beta keeps its history
    (srv.data / "refs/wo/stray/m").mkdir(parents=True)  # a directory without a ref in it
    assert requests.get(srv.url + "/_catalog").json() == {"repositories": ["alpha", "beta", "gamma"]}
    assert requests.get(srv.url + "/_catalog?n=1&last=alpha").json() == {"repositories": ["beta"]}
    assert requests.get(srv.url + "/_catalog/beta").json() == {"maps": ["town"]}


def test_an_old_lock_that_a_live_process_has_open_is_kept(tmp_path):
    """git keeps packed-refs.lock open while it holds it (``git pack-refs`` over a million loose
    refs, for many seconds): however old, it is not broken while a process has it open."""
    import os

    git_dir = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    lock = git_dir / "packed-refs.lock"
    lock.write_bytes(b"")
    os.utime(lock, (1_000_000_000, 1_000_000_000))  # far older than STALE_LOCK_SECONDS
    with open(lock, "rb") as held:
        holder = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        assert Refs(str(git_dir)).break_stale_lock("packed-refs") is False
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert Refs(str(git_dir)).break_stale_lock("packed-refs") is True
    assert not lock.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_that_is_not_a_file_is_left_and_never_blocks(tmp_path, kind):
    """A FIFO or a directory where a lock goes (no writer makes one): breaking it neither blocks
    on opening it nor removes it."""
    import os

    git_dir = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    lock = git_dir / "refs" / "wo" / "m.lock"
    lock.parent.mkdir(parents=True)
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    os.utime(lock, (1_000_000_000, 1_000_000_000))
    assert Refs(str(git_dir)).break_stale_lock("refs/wo/m") is False
    assert lock.exists() and sorted(p.name for p in git_dir.iterdir() if p.name.startswith("wogit-")) == []


def test_an_unmarked_lock_dated_in_the_future_is_stale(tmp_path):
    """A clock set back after a crash leaves a lock dated ahead: it is as stale as an old one."""
    import os
    import time

    git_dir = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    lock = git_dir / "packed-refs.lock"
    lock.write_bytes(b"")
    ahead = time.time() + 86400
    os.utime(lock, (ahead, ahead))
    assert Refs(str(git_dir)).break_stale_lock("packed-refs") is True
    assert not lock.exists()
