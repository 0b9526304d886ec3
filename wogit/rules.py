"""The registry's rules for ref changes: one set for git pushes and the HTTP API.

A push (through the ``pre-receive`` hook) and the HTTP API's own writes are both
lists of ``Change(ref, old, new)``; ``check`` returns what is wrong with each, so
the same rules decide both paths (docs/layout.md describes what they protect):

- every ref is a registry ref (``wogit.names.parse_ref``);
- a tag is created once and never moved; it is deleted only with the record of
  its deletion in its map's metadata history (the API's DELETE); it is a parentless commit
  whose tree is exactly the blobs ``map`` and ``config`` (mode 100644), and whose
  message names their digests, each indexed (before or by the same push) at
  exactly that blob;
- a digest index ref is created once, at a tree holding exactly one file named
  after its kind (``map`` or ``config``), a blob whose sha256 is the ref's name (a
  config's bytes are UTF-8), and deleted only when no tag uses it (``wogit gc``);
- a map's metadata only moves forward (the old commit is an ancestor of the new
  one), starts on a map that has a tag (or with the record of its tags' deletion),
  and every new commit's tree holds only simple keys whose values are valid.

So a push mirror of a registry into another registry carries deletions too.

Objects are read through a ``View``; ``GitView`` reads them with git itself, so it
also sees the objects of a push still in git's quarantine (pygit2 would not).
"""

from __future__ import annotations

import codecs
import hashlib
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from wogit import errors, metadata, names

ZERO = "0" * 40
BLOB_MODE = 0o100644
TAG_ENTRIES = ("config", "map")
DELETE_TAG = "delete-tag"  # the subject of a metadata commit recording a tag's deletion
_FIELD = re.compile(r"^(map_digest|config_digest): (\S+)$", re.M)


@dataclass(frozen=True)
class Change:
    ref: str
    old: str
    new: str


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Entry:
    mode: int
    name: str
    oid: str


class View(Protocol):
    """Objects and refs as they are before the change."""

    def ref(self, name: str) -> str | None: ...
    def refs(self, prefix: str) -> dict[str, str]: ...
    def kind(self, oid: str) -> str | None: ...  # "blob", "tree", "commit", "tag"; None if missing
    def headers(self, oids: list[str]) -> dict[str, tuple[str, int]]: ...  # kind and size; missing ones left out
    def commit(self, oid: str) -> Commit: ...
    def tree(self, oid: str) -> list[Entry]: ...
    def blobs(self, oids: list[str]) -> dict[str, bytes]: ...  # small objects only, raw (metadata values, commits)
    def blob_sha256(self, oid: str, utf8: bool) -> tuple[str, bool]: ...  # streamed
    def new_commits(self, old: str, new: str) -> list[str]: ...  # new, not reachable from old
    def is_ancestor(self, old: str, new: str) -> bool: ...


@dataclass(frozen=True)
class Rejection:
    ref: str
    msg: str


def check(changes: Iterable[Change], view: View) -> list[Rejection]:
    """What is wrong with each change, seen together (a push may bring a tag and its indexes)."""
    changes = list(changes)
    after = {c.ref: c.new for c in changes}
    before = {c.ref: c.old for c in changes}  # what each change expects to replace
    problems = []
    for change in changes:
        try:
            _check_one(change, view, after, before)
        except _Broken as broken:
            problems.append(Rejection(change.ref, str(broken)))
    return problems


def require(*changes: Change, view: View) -> None:
    """Raise ``errors.RULE_BROKEN`` unless ``changes`` (made together) keep the rules (the HTTP
    API's check)."""
    for problem in check(changes, view):
        raise errors.RULE_BROKEN(f"{problem.ref}: {problem.msg}")


class _Broken(Exception):
    pass


def _check_one(change: Change, view: View, after: dict[str, str], before: dict[str, str]) -> None:
    name = names.parse_ref(change.ref)
    if name is None:
        raise _Broken("outside the registry's namespaces: only refs/wo/<repository>/<map>/<tag>, "
                      "refs/wo/_maps/sha256/<hex>, refs/wo/_configs/sha256/<hex> and "
                      "refs/wo/_metadata/<repository>/<map> are registry refs (docs/layout.md)")
    if isinstance(name, names.TagName):
        _check_tag(change, view, after, before)
    elif isinstance(name, names.BlobName):
        _check_blob(change, name, view, after)
    else:
        _check_metadata(change, name, view, after)


def _check_tag(change: Change, view: View, after: dict[str, str], before: dict[str, str]) -> None:
    if change.old != ZERO and change.new == ZERO:
        return _check_tag_deletion(change, view, after, before)
    if change.old != ZERO:
        raise _Broken("tags are immutable: an existing tag cannot be moved")
    commit = _object(view, change.new, "commit", "a tag")
    if commit.parents:
        raise _Broken("a tag is a commit without parents")
    entries = view.tree(commit.tree)
    if sorted(e.name for e in entries) != list(TAG_ENTRIES) or any(
            e.mode != BLOB_MODE or view.kind(e.oid) != "blob" for e in entries):
        raise _Broken("a tag's tree must be exactly the files 'map' and 'config' (blobs, mode 100644)")
    fields = tag_digests(commit.message)
    blobs = {e.name: e.oid for e in entries}
    for kind in names.KINDS:
        digest = fields.get(f"{kind}_digest")
        if digest is None:
            raise _Broken(f"a tag's commit message must name '{kind}_digest: sha256:<hex>'")
        try:
            index = names.blob_ref(kind, digest)
        except errors.WogitError:
            raise _Broken(f"{kind}_digest {digest!r} is not sha256:<64 lowercase hex>") from None
        indexed = after.get(index, view.ref(index))
        if indexed in (None, ZERO):
            raise _Broken(f"{kind}_digest {digest} names no uploaded {kind} ({index} is missing)")
        blob = indexed_blob(view, indexed, kind)
        if blob != blobs[kind]:
            raise _Broken(f"the tree's '{kind}' is {blobs[kind]}, but {digest} is {blob}")


def _check_tag_deletion(change: Change, view: View, after: dict[str, str], before: dict[str, str]) -> None:
    """A tag is deleted only together with the record of its deletion in its map's metadata
    history (as the API's DELETE does; a push mirror carries both in one push)."""
    name = names.parse_ref(change.ref)
    history = names.metadata_ref(name.repository, name.map)
    old, new = before.get(history) or view.ref(history) or ZERO, after.get(history)
    if new not in (None, ZERO, old):
        for oid in view.new_commits(old, new):
            message = view.commit(oid).message
            if message.startswith(f"{DELETE_TAG} {name.tag}\n") and f"\ntag_commit: {change.old}\n" in message:
                return
    raise _Broken("tags are immutable: an existing tag cannot be deleted, except with the record of its "
                  f"deletion ('{DELETE_TAG} {name.tag}', tag_commit: {change.old}) added to {history} "
                  "by the same change (the API's DELETE)")


def indexed_blob(view: View, tree: str, kind: str) -> str | None:
    """The blob a digest index tree holds (None if it is not such a tree)."""
    if view.kind(tree) != "tree":
        return None
    entries = view.tree(tree)
    if [(e.name, e.mode) for e in entries] != [(kind, BLOB_MODE)] or view.kind(entries[0].oid) != "blob":
        return None
    return entries[0].oid


def tag_digests(message: str) -> dict[str, str]:
    """``{"map_digest": ..., "config_digest": ...}`` as a tag's commit message names them."""
    return dict(_FIELD.findall(message))


def _check_blob(change: Change, name: names.BlobName, view: View, after: dict[str, str]) -> None:
    if change.old != ZERO and change.new == ZERO:
        return _check_unused(name, view, after)
    if change.old != ZERO:
        raise _Broken(f"a {name.kind}'s digest index ref cannot be moved")
    blob = indexed_blob(view, change.new, name.kind)
    if blob is None:
        raise _Broken(f"a {name.kind}'s digest index ref must point at a tree holding exactly the file "
                      f"'{name.kind}' (a blob, mode 100644)")
    hexdigest, utf8 = view.blob_sha256(blob, name.kind == names.CONFIG)
    if names.digest(hexdigest) != name.digest:
        raise _Broken(f"the blob's digest is sha256:{hexdigest}, not the ref's {name.digest}")
    if not utf8:
        raise _Broken("a config must be UTF-8 text")


def _check_unused(name: names.BlobName, view: View, after: dict[str, str]) -> None:
    """A digest index ref is deleted (by ``wogit gc``, or a push mirroring it) only when no
    tag uses it afterwards.  Reads every tag's commit: rare, and as costly as the registry."""
    tags = {ref: oid for ref, oid in {**view.refs(names.NAMESPACE), **after}.items()
            if oid != ZERO and isinstance(names.parse_ref(ref), names.TagName)}
    field = f"\n{name.kind}_digest: {name.digest}\n"
    commits = view.blobs(sorted(set(tags.values())))  # raw commits
    for ref, oid in sorted(tags.items()):
        if field in commits.get(oid, b"").decode("utf-8", "replace"):
            raise _Broken(f"the {name.kind} {name.digest} is used by the tag {ref}: its index ref stays")


def _check_metadata(change: Change, name: names.MetadataName, view: View, after: dict[str, str]) -> None:
    if change.new == ZERO:
        raise _Broken("a map's metadata history cannot be deleted")
    _object(view, change.new, "commit", "metadata")
    if change.old == ZERO and not _has_tag(name, view, after) and not any(
            view.commit(oid).message.startswith(DELETE_TAG + " ") for oid in view.new_commits(ZERO, change.new)):
        raise _Broken(f"map {name.repository}/{name.map} has no tag: a metadata history starts on a tagged "
                      "map (or records the deletion of its tags)")
    if change.old != ZERO and not view.is_ancestor(change.old, change.new):
        raise _Broken("not a fast-forward: the new metadata commit must descend from the current one "
                      "(fetch, rebase your change on it, push again)")
    for oid in view.new_commits(change.old, change.new):
        commit = view.commit(oid)
        # Entries the first parent has too were checked with it (a new commit, or the valid current one).
        known = set(view.tree(view.commit(commit.parents[0]).tree)) if commit.parents else set()
        try:
            _check_metadata_tree(view.tree(commit.tree), known, view)
        except _Broken as broken:
            raise _Broken(f"commit {oid}: {broken}") from None


def _has_tag(name: names.MetadataName, view: View, after: dict[str, str]) -> bool:
    """Whether the map has a tag once the changes are made (lists the map's tags: only asked
    when its metadata history starts)."""
    prefix = names.tags_prefix(name.repository, name.map)
    tags = set(view.refs(prefix)) | {ref for ref in after if ref.startswith(prefix)}
    return any(after.get(ref, "x") != ZERO for ref in tags)


def _check_metadata_tree(entries: list[Entry], known: set[Entry], view: View) -> None:
    if len(entries) > metadata.MAX_KEYS:  # before reading any of them
        raise _Broken(f"a map may have at most {metadata.MAX_KEYS} metadata keys, not {len(entries)}")
    headers = view.headers([e.oid for e in entries])
    for entry in entries:
        if entry.mode != BLOB_MODE or headers.get(entry.oid, ("",))[0] != "blob":
            raise _Broken(f"metadata entry {entry.name!r} is not a file")
        if not names.is_key(entry.name):
            raise _Broken(f"invalid metadata key {entry.name!r}: must match {names.KEY_RULE}")
    try:
        metadata.check_limits({e.name: headers[e.oid][1] for e in entries})
    except errors.WogitError as exc:
        raise _Broken(exc.msg) from None
    fresh = [e for e in entries if e not in known]
    values = view.blobs([e.oid for e in fresh])
    for entry in fresh:
        try:
            metadata.check_value(entry.name, values[entry.oid].decode("utf-8"))
        except UnicodeDecodeError:
            raise _Broken(f"the value of {entry.name!r} is not UTF-8") from None
        except errors.WogitError as exc:
            raise _Broken(exc.msg) from None


def _object(view: View, oid: str, kind: str, what: str) -> Commit:
    if view.kind(oid) != kind:
        raise _Broken(f"{what} must be a {kind}")
    return view.commit(oid)


# -- reading objects with git (sees a push's quarantined objects) ---------------------------------

class GitView:
    """A ``View`` of the repository at ``git_dir`` through the git command line."""

    def __init__(self, git_dir: str, env: dict[str, str] | None = None):
        self.git_dir = git_dir
        self.env = env
        self._refs: dict[str, str] | None = None
        # Objects never change: what was read once (a pushed tag's commit and tree, read by the
        # hook's freshening and again by the rules) is not asked of git again.
        self._commits: dict[str, Commit] = {}
        self._trees: dict[str, list[Entry]] = {}
        self._kinds: dict[str, str] = {}

    def _git(self, *args: str, data: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], capture_output=True,
                              env=self.env, check=False, text=not data)

    def _all_refs(self) -> dict[str, str]:
        if self._refs is None:
            out = self._git("for-each-ref", "--format=%(objectname) %(refname)", names.NAMESPACE).stdout
            self._refs = {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}
        return self._refs

    def ref(self, name: str) -> str | None:
        return self._all_refs().get(name)

    def refs(self, prefix: str) -> dict[str, str]:
        return {ref: oid for ref, oid in self._all_refs().items() if ref.startswith(prefix)}

    def kind(self, oid: str) -> str | None:
        if oid not in self._kinds:
            found = self.headers([oid]).get(oid)
            if found is None:
                return None
            self._kinds[oid] = found[0]
        return self._kinds[oid]

    def headers(self, oids: list[str]) -> dict[str, tuple[str, int]]:
        if not oids:
            return {}
        out = subprocess.run(["git", "--git-dir", self.git_dir, "cat-file", "--batch-check"],
                             input="".join(f"{oid}\n" for oid in oids), capture_output=True, text=True,
                             env=self.env, check=False).stdout
        found = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3:  # "<oid> missing" otherwise
                found[fields[0]] = (fields[1], int(fields[2]))
        return found

    def commit(self, oid: str) -> Commit:
        if oid not in self._commits:
            raw = self._git("cat-file", "commit", oid, data=True).stdout.decode("utf-8", "replace")
            head, _, message = raw.partition("\n\n")
            fields = [line.split(" ", 1) for line in head.splitlines() if " " in line]
            tree = next(value for key, value in fields if key == "tree")
            self._commits[oid] = Commit(tree, tuple(value for key, value in fields if key == "parent"), message)
        return self._commits[oid]

    def tree(self, oid: str) -> list[Entry]:
        if oid not in self._trees:
            raw = self._git("cat-file", "tree", oid, data=True).stdout
            entries, at = [], 0
            while at < len(raw):
                space, nul = raw.index(b" ", at), raw.index(b"\0", at)
                entries.append(Entry(int(raw[at:space], 8), raw[space + 1:nul].decode("utf-8", "replace"),
                                     raw[nul + 1:nul + 21].hex()))
                at = nul + 21
            if not entries:  # missing (or the empty tree): not kept
                return entries
            self._trees[oid] = entries
        return list(self._trees[oid])

    def blobs(self, oids: list[str]) -> dict[str, bytes]:
        if not oids:
            return {}
        out = subprocess.run(["git", "--git-dir", self.git_dir, "cat-file", "--batch"],
                             input="".join(f"{oid}\n" for oid in oids).encode(), capture_output=True,
                             env=self.env, check=True).stdout
        found, at = {}, 0
        while at < len(out):
            end = out.index(b"\n", at)
            fields = out[at:end].decode().split(" ")
            if len(fields) != 3:  # "<oid> missing"
                at = end + 1
                continue
            found[fields[0]] = out[end + 1:end + 1 + int(fields[2])]
            at = end + 1 + int(fields[2]) + 1  # the object, then a newline
        return found

    def blob_sha256(self, oid: str, utf8: bool) -> tuple[str, bool]:
        sha256 = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        valid = True
        with subprocess.Popen(["git", "--git-dir", self.git_dir, "cat-file", "blob", oid],
                              stdout=subprocess.PIPE, env=self.env) as proc:
            while chunk := proc.stdout.read(1 << 20):
                sha256.update(chunk)
                if utf8 and valid:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError:
                        valid = False
        if utf8 and valid:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                valid = False
        return sha256.hexdigest(), valid

    def new_commits(self, old: str, new: str) -> list[str]:
        args = [new] if old == ZERO else [new, "^" + old]
        return self._git("rev-list", *args).stdout.split()

    def is_ancestor(self, old: str, new: str) -> bool:
        return self._git("merge-base", "--is-ancestor", old, new).returncode == 0


# -- reading objects with pygit2 (the HTTP API's own writes: no quarantine, no subprocesses) -------

class Pygit2View:
    """A ``View`` of an open ``pygit2.Repository``; ``refs(prefix)`` lists refs under a prefix,
    ``ref(name)`` reads one (wogit.refs: libgit2 maps all of packed-refs into every handle)."""

    def __init__(self, repo, refs: Callable[[str], dict[str, str]], ref: Callable[[str], str | None]):
        self.repo = repo
        self.refs = refs
        self.ref = ref

    def kind(self, oid: str) -> str | None:
        return self.headers([oid]).get(oid, (None,))[0]

    def headers(self, oids: list[str]) -> dict[str, tuple[str, int]]:
        found = {}
        for oid in oids:
            try:
                kind, size = self.repo.odb.read_header(oid)
            except (KeyError, ValueError):
                continue
            found[oid] = ({1: "commit", 2: "tree", 3: "blob", 4: "tag"}.get(int(kind), "?"), size)
        return found

    def commit(self, oid: str) -> Commit:
        commit = self.repo[oid]
        return Commit(str(commit.tree_id), tuple(str(p) for p in commit.parent_ids), commit.message)

    def tree(self, oid: str) -> list[Entry]:
        return [Entry(int(e.filemode), e.name, str(e.id)) for e in self.repo[oid]]

    def blobs(self, oids: list[str]) -> dict[str, bytes]:
        return {oid: self.repo[oid].read_raw() for oid in oids}

    def blob_sha256(self, oid: str, utf8: bool) -> tuple[str, bool]:
        raise NotImplementedError("the HTTP API hashes uploads as it stores them")

    def new_commits(self, old: str, new: str) -> list[str]:
        commits, oid = [], new
        while oid != old:  # the API's own commits: a single-parent chain
            commits.append(oid)
            parents = self.repo[oid].parent_ids
            if not parents:
                break
            oid = str(parents[0])
        return commits

    def is_ancestor(self, old: str, new: str) -> bool:
        # The API's own change is one commit on the current one: its parent, no graph walk.
        return old == new or old in {str(p) for p in self.repo[new].parent_ids} or self.repo.descendant_of(new, old)
