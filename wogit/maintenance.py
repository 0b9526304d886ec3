"""``wogit gc`` and ``wogit fsck``: sweep what no tag uses, and check everything stored.

Both run beside a live server (or several) on the same repository.

gc, safe against a tag being created meanwhile:

1. every map and config a tag uses is kept;
2. an unused one is swept (its digest index ref deleted, compare-and-swap) only when its
   loose objects were last touched longer ago than the grace period (at least a minute): uploading it touches it,
   and creating a tag touches the blobs it names *before* the tag's ref exists
   (``Store._freshen``), so an upload about to be tagged is never swept;
3. after sweeping, the tags are read again and any swept digest a tag now uses, or whose
   objects were touched since step 2 (an upload answered 409, a tag being created, by the API
   or a push, whose ref does not exist yet), is indexed again; ``Store.create_tag`` also
   re-indexes its blobs after its ref exists, whichever of the two runs last;
4. ``git prune`` then removes the objects nothing reaches any more, but never one touched
   within the grace period (nor within a minute: another writer's object between its write
   and its ref), and it checks each object's time as it removes it.

fsck re-hashes every stored map and config against its digest and checks every ref with the
registry's rules (``wogit.rules``), then runs ``git fsck --strict`` over all objects.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field

from wogit import errors, names, objects, rules
from wogit.store import Store

MIN_PRUNE_AGE = 60.0  # seconds: the least grace; younger objects may be a writer's, not yet referenced


@dataclass
class Swept:
    kind: str
    digest: str
    size: int


@dataclass
class GcReport:
    swept: list[Swept] = field(default_factory=list)
    kept_in_grace: int = 0  # unused, but touched within the grace period
    kept_in_use: int = 0
    pruned_objects: int = 0
    freed_bytes: int = 0  # on disk, compressed
    problems: list[str] = field(default_factory=list)  # unused uploads that could not be swept, and why


@dataclass
class FsckReport:
    maps: int = 0
    configs: int = 0
    tags: int = 0
    histories: int = 0
    problems: list[str] = field(default_factory=list)


def gc(store: Store, grace_seconds: float, dry_run: bool = False) -> GcReport:
    report = GcReport()
    now = time.time()
    grace = max(grace_seconds, MIN_PRUNE_AGE)
    used = _used(store)
    swept: dict[str, tuple[str, str]] = {}  # index ref -> (its tree, the blob)
    view = store._view()  # objects read in-process: one subprocess per ref would cost minutes
    for ref, tree in _index_refs(store).items():
        name = names.parse_ref(ref)
        if (name.kind, name.digest) in used:
            report.kept_in_use += 1
            continue
        blob = rules.indexed_blob(view, tree, name.kind)
        if blob is None or now - _touched(store, blob, tree) < grace:
            report.kept_in_grace += 1
            continue
        if dry_run:
            swept[ref] = (tree, blob)
            continue
        deleted = store._git("update-ref", "-d", ref, tree, check=False)
        if deleted.returncode == 0:
            swept[ref] = (tree, blob)
        elif "but expected" not in deleted.stderr:  # not a ref that moved meanwhile: say why (a full disk)
            report.problems.append(f"cannot sweep {name.kind} {name.digest}: {deleted.stderr.strip()}")
    if swept and not dry_run:
        store._changed()
        again = _used(store)
        for ref, (tree, blob) in list(swept.items()):
            name = names.parse_ref(ref)
            # Tagged meanwhile, or touched since it was looked at (uploaded again: a 409 said it is
            # stored; named by a tag being created, through the API or a push): index it again.
            if (name.kind, name.digest) in again or time.time() - _touched(store, blob, tree) < grace:
                store._create_ref(ref, store._index_tree(name.kind, blob))
                del swept[ref]
    sizes = rules.GitView(store.path).headers([blob for _, blob in swept.values()])
    for ref, (_, blob) in sorted(swept.items()):
        name = names.parse_ref(ref)
        report.swept.append(Swept(name.kind, name.digest, sizes.get(blob, ("", 0))[1]))
    if not dry_run:
        report.pruned_objects, report.freed_bytes = _prune(store, grace)
    return report


def _used(store: Store) -> set[tuple[str, str]]:
    """(kind, digest) of every map and config a tag uses."""
    used = set()
    for tag in store.all_tags():
        used.add((names.MAP, tag.map_digest))
        used.add((names.CONFIG, tag.config_digest))
    return used


def _index_refs(store: Store) -> dict[str, str]:
    out = store._git("for-each-ref", "--format=%(objectname) %(refname)", names.MAPS, names.CONFIGS).stdout
    return {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}


def _touched(store: Store, *oids: str) -> float:
    """When the newest loose file of these objects was last written or touched (0: all packed,
    which only an operator's ``git gc`` does, long after an upload)."""
    times = [0.0]
    for oid in oids:
        try:
            times.append(os.stat(_loose(store, oid)).st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def _prune(store: Store, age: float) -> tuple[int, int]:
    """``git prune`` of unreachable loose objects older than ``age`` seconds: (count, bytes)."""
    expire = f"--expire={int(age)}.seconds.ago"
    sizes = {}
    listed = store._git("prune", "--dry-run", expire, check=False)
    if listed.returncode != 0:  # git prunes nothing while a ref names a missing object
        raise errors.REPOSITORY_DAMAGED(f"git prune refused to run: {listed.stderr.strip()}; run wogit fsck")
    for oid in listed.stdout.split()[::2]:  # "<oid> <type>" lines
        try:
            sizes[oid] = os.stat(_loose(store, oid)).st_size
        except FileNotFoundError:
            pass
    store._git("prune", expire)
    gone = [oid for oid in sizes if not os.path.exists(_loose(store, oid))]
    return len(gone), sum(sizes[oid] for oid in gone)


def _loose(store: Store, oid: str) -> str:
    return os.path.join(store.objects_dir, oid[:2], oid[2:])


def fsck(store: Store) -> FsckReport:
    report = FsckReport()
    view = rules.GitView(store.path)
    out = store._git("for-each-ref", "--format=%(objectname) %(refname)", "refs/").stdout
    refs = {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}
    changes = [rules.Change(ref, rules.ZERO, oid) for ref, oid in sorted(refs.items())]
    for problem in rules.check(changes, view):
        report.problems.append(f"{problem.ref}: {problem.msg}")
    for ref in refs:
        name = names.parse_ref(ref)
        if isinstance(name, names.BlobName):
            report.maps += name.kind == names.MAP
            report.configs += name.kind == names.CONFIG
        elif isinstance(name, names.TagName):
            report.tags += 1
        elif isinstance(name, names.MetadataName):
            report.histories += 1
    result = subprocess.run(["git", "--git-dir", store.path, "fsck", "--strict", "--no-dangling", "--no-progress"],
                            capture_output=True, text=True, env=objects.GIT_ENV)
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines()
                 if line.strip() and not line.startswith("notice: ")]  # "HEAD points to an unborn branch"
        report.problems += [f"git fsck: {line}" for line in lines] or [f"git fsck exited {result.returncode}"]
    return report
