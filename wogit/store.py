"""The registry's storage: maps, configs, tags and metadata in a bare git repository.

Verbs use the API's words and return small immutable values; failures raise
``wogit.errors`` codes.  Ref names come only from ``wogit.names``; big blobs go
through ``wogit.objects`` so memory never grows with a map's size.

Writes are safe across threads and processes: every ref change is an atomic
create (tags, digest index) or a compare-and-swap of the old value (metadata),
retried on lock contention or a lost race, so no update is lost and nothing
half-written becomes visible.  Objects and refs are fsync'd before a write
returns.  A write that runs out of disk space removes what it wrote and raises
INSUFFICIENT_STORAGE (``_storing``); the next one succeeds once space is freed.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import hashlib
import logging
import os
import hmac
import itertools
import random
import re
import secrets
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pygit2

from wogit import cache, errors, githttp, metadata, names, objects, refs, rules, serverhooks, tarball
from wogit.sendfile import Body, Span

T = TypeVar("T")
IDENTITY = ("wogit", "wogit@localhost")
USER_EMAIL = "user@wogit"  # the author email of changes a user asked for; the name is the user (%-escaped)
_NAME_SAFE = "".join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in "%<>")
DELETE_TAG = rules.DELETE_TAG
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
ZERO_OID = "0" * 40
log = logging.getLogger("wogit")


@dataclass(frozen=True)
class Upload:
    digest: str
    created: bool


@dataclass(frozen=True)
class Tag:
    repository: str
    map: str
    tag: str
    map_digest: str
    config_digest: str
    created: int
    commit: str
    map_oid: str
    config_oid: str


@dataclass(frozen=True)
class Metadata:
    items: dict[str, str]
    version: str  # the git tree id of the metadata: equal items, equal version
    commit: str | None = None  # the metadata commit this state is (None: before any change)


@dataclass(frozen=True)
class Blob:
    """A stored map or config, ready to stream (whole or a byte range)."""
    kind: str
    digest: str
    oid: str
    size: int
    body: Callable[[int, int], Body]  # (first, length) -> the bytes


@dataclass(frozen=True)
class Change:
    """One entry of a map's history (``GET .../_history``)."""
    time: int
    user: str | None
    action: str  # create-tag, delete-tag, set-metadata, delete-metadata, change-metadata
    commit: str
    tag: str | None = None
    keys: tuple[str, ...] = ()
    map_digest: str | None = None
    config_digest: str | None = None


@dataclass(frozen=True)
class Archive:
    tag: Tag
    etag: str
    open: Callable[[], Body]  # the tarball's bytes; closing the body unread costs nothing more


#: A change of a map's metadata: edits the entries (name -> (mode, id)) in place, given the size
#: of any blob by its id; returns the keys it changed and the commit message.
_MetadataChange = Callable[[dict[str, tuple[int, str]], Callable[[str], int]], tuple[list[str], str]]


@dataclass(eq=False)
class _Queued:
    """A metadata change waiting for its map's turn (Store._change_metadata)."""
    change: _MetadataChange
    actor: str | None
    blobs: list[objects.Prepared]  # the values it sets, written but not yet synced
    sizes: dict[str, int]  # their sizes, by id
    done: bool = False
    outcome: list[str] | BaseException | None = None


class _Contended(Exception):
    """A ref was locked or moved under us: try again."""

    def __init__(self, ref: str, detail: str = ""):
        super().__init__(f"{ref}: {detail}" if detail else ref)
        self.ref = ref


#: What a full disk, a quota reached or a file-size limit (RLIMIT_FSIZE) make a write fail with,
#: and how git says it in its messages (LC_ALL=C: objects.GIT_ENV).
_NO_SPACE = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
             errno.EFBIG: "File too large"}
NO_SPACE_ERRNOS = frozenset(_NO_SPACE)


def _storing(verb: Callable[..., T]) -> Callable[..., T]:
    """A write verb whose running out of disk space (``NO_SPACE_ERRNOS``) is INSUFFICIENT_STORAGE:
    every write cleans up after itself on any error (no temporary object, no lock, no ref moved),
    so nothing of it remains and the next write, once space is freed, succeeds."""
    @functools.wraps(verb)
    def write(self, *args, **kwargs):
        try:
            return verb(self, *args, **kwargs)
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            raise errors.INSUFFICIENT_STORAGE(
                f"the registry's disk is full: {exc.strerror or exc}; nothing was stored, "
                "retry once space is freed") from None
    return write


@contextlib.contextmanager
def _discarded_on_failure(prepared) -> Iterator[None]:
    """Remove the temporary files of ``prepared`` objects (a live view: a list or a dict's values,
    filled meanwhile) if the block fails: a full disk refusing the next object leaves none behind."""
    try:
        yield
    except BaseException:
        objects.discard(list(prepared))
        raise


def _no_space(git_stderr: str) -> OSError | None:
    """The OSError a git command's failure stands for when it ran out of space, else None."""
    for code, words in _NO_SPACE.items():
        if words in git_stderr:
            return OSError(code, words)
    return None


class Store:
    def __init__(self, path: str, fsync: bool = True, retry_seconds: float = 30.0,
                 hook_timeout: float = serverhooks.DEFAULT_TIMEOUT, cache_size: int = cache.DEFAULT_BOUND):
        self.path = os.path.abspath(path)
        self.cache = cache.Cache(os.path.join(self.path, cache.DIRECTORY), cache_size)  # of downloads
        self.recent = cache.Recent(min(cache_size, 64 << 20))  # small tarballs, in memory
        self.parsed = cache.Recent(8 << 20)  # what a tag's or a metadata commit says, by its id
        self.fsync = fsync
        self.retry_seconds = retry_seconds
        self.hook_timeout = hook_timeout
        self._local = threading.local()
        self._ref_locks = [threading.Lock() for _ in range(64)]  # Store._writing
        self._queue_lock = threading.Lock()
        self._queued: dict[str, list[_Queued]] = {}  # metadata changes waiting for their map's turn
        self._secret: bytes | None = None  # the upload proofs' key (wogit.uploadSecret)
        self.listeners: list[Callable[[], None]] = []  # told after every ref change (replication)
        pygit2.settings.enable_fsync_gitdir(fsync)
        init(self.path)
        self.objects_dir = os.path.join(self.path, "objects")
        self.refs = refs.Refs(self.path, fsync)  # single refs moved without libgit2 (wogit.refs)
        self._packed_counts: tuple[tuple, dict[str, int]] | None = None  # (packed-refs stamp, its counts)

    @property
    def repo(self) -> pygit2.Repository:
        """This thread's handle: pygit2 repositories are not shared across threads."""
        repo = getattr(self._local, "repo", None)
        if repo is None:
            repo = self._local.repo = pygit2.Repository(self.path)
        return repo

    # -- maps and configs ----------------------------------------------------

    @_storing
    def put(self, kind: str, body: objects.Reader, length: int | None = None,
            expected: str | None = None, actor: str | None = None, shortcut: bool = True) -> Upload:
        """Store one map or config read from ``body`` (``length`` bytes, or to EOF).

        ``expected`` is the digest the client announced: a mismatch stores
        nothing; a digest already stored as ``kind`` answers at once, unread.
        ``actor`` (the user) is passed to the operator's validator, if any.  Without ``shortcut``
        the body is read even when the announced digest is stored.
        """
        expected_hex = names.digest_hex(expected, "announced digest") if expected is not None else None
        if expected_hex and shortcut and self._stored(kind, expected):
            return Upload(expected, False)
        reader = _Utf8Reader(body) if kind == names.CONFIG else body
        # The operator's validator reads a file: with one, the body is spooled to a named file first.
        validated = serverhooks.has_validator(self.path, kind)
        spooled = spool_path = spooled_digest = None
        try:
            if length is None or validated:
                spooled, length, spooled_digest, spool_path = objects.spool(self.objects_dir, reader, named=validated)
                reader = spooled
            if length == 0:
                raise errors.BODY_EMPTY(f"the {kind} is empty")

            def check(hexdigest: str) -> None:
                """Before the blob becomes visible: the announced digest, then the validator."""
                if expected_hex and hexdigest != expected_hex:
                    raise errors.DIGEST_MISMATCH(
                        f"the {kind} has digest sha256:{hexdigest}, not the announced {expected}")
                digest = names.digest(hexdigest)
                if validated and self._blob_oid(kind, digest) is None:  # stored already: a 409, unasked
                    serverhooks.validate(self.path, kind, self.hook_timeout, spool_path,
                                         WO_DIGEST=digest, WO_USER=actor)

            try:
                blob, hexdigest = objects.prepare_blob(self.objects_dir, reader, length, check, self.fsync,
                                                       sha256=spooled_digest)
            except EOFError as exc:
                raise errors.BODY_INCOMPLETE(f"the {kind} body ended early: {exc}") from None
        finally:
            if spooled is not None:
                spooled.close()
            if spool_path is not None:
                os.unlink(spool_path)
        with _discarded_on_failure([blob]):
            tree = self._prepare("tree", _index_entries(kind, blob.oid))
        objects.install(self.objects_dir, [blob, tree], self.fsync)  # synced together
        digest = names.digest(hexdigest)
        return Upload(digest, self._create_ref(names.blob_ref(kind, digest), tree.oid))

    def _stored(self, kind: str, digest: str) -> bool:
        """Whether a map or config is stored, touched first as an upload of it would be (so a
        ``wogit gc`` that swept it meanwhile indexes it again, wogit.maintenance)."""
        oid = self._blob_oid(kind, digest)
        return oid is not None and self._touch(oid) and self._blob_oid(kind, digest) == oid

    def _index_tree(self, kind: str, oid: str) -> str:
        """The digest index's tree for a blob, written now (see ``_index_entries``)."""
        return self._kept("tree", _index_entries(kind, oid))

    def _blob_oid(self, kind: str, digest: str) -> str | None:
        """The git id of a stored map or config, None if unknown or its object is missing."""
        target = self.refs.get(names.blob_ref(kind, digest))
        if target is None:
            return None
        try:
            tree = self.repo[target]
            if not isinstance(tree, pygit2.Tree):
                return None
            blob = tree[kind].id
            kind_id, _ = self.repo.odb.read_header(blob)
        except KeyError:
            return None
        return str(blob) if kind_id == pygit2.enums.ObjectType.BLOB else None

    def _require_blob(self, kind: str, digest: str, field: str) -> str:
        names.digest_hex(digest, field, errors.BLOB_UNKNOWN)
        oid = self._blob_oid(kind, digest)
        if oid is None:
            raise errors.BLOB_UNKNOWN(f"{field} {digest} names no uploaded {kind}")
        return oid

    def upload_proof(self, actor: str | None, kind: str, digest: str) -> str:
        """A token saying ``actor`` uploaded these bytes (or had them verified as stored): it lets
        that user tag a digest it may not otherwise read (knowing a digest is not a permission,
        holding the bytes is)."""
        if self._secret is None:  # set once by init() and never changed: read it once
            config = pygit2.Repository(self.path).config
            if UPLOAD_SECRET not in config:  # init() lost a race for the config file: try again
                init(self.path)
                config = pygit2.Repository(self.path).config
            self._secret = config[UPLOAD_SECRET].encode()
        secret = self._secret
        message = f"{actor or ''}\n{kind}\n{digest}".encode("utf-8")
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    def is_upload_proof(self, token: object, actor: str | None, kind: str, digest: str) -> bool:
        # A proof is hex: any other text (which compare_digest refuses if not ASCII) is not one.
        return isinstance(token, str) and token.isascii() \
            and hmac.compare_digest(token, self.upload_proof(actor, kind, digest))

    # -- tags ----------------------------------------------------------------

    @_storing
    def create_tag(self, repository: str, map: str, tag: str, map_digest: str, config_digest: str,
                   actor: str | None = None) -> Tag:
        ref = names.tag_ref(repository, map, tag)
        exists = errors.EXISTS(f"tag {repository}/{map}/{tag} already exists; tags are immutable")
        if self.refs.get(ref) is not None:
            raise exists
        blobs = {names.MAP: (map_digest, self._require_blob(names.MAP, map_digest, "map_digest")),
                 names.CONFIG: (config_digest, self._require_blob(names.CONFIG, config_digest, "config_digest"))}
        self._freshen(blobs)  # before gc could decide they are old and unused (wogit.maintenance)
        tree = self._prepare("tree", objects.tree_bytes({kind: (rules.BLOB_MODE, oid) for kind, (_, oid) in blobs.items()}))
        message = (f"tag {repository}/{map}/{tag}\n\n"
                   f"map_digest: {map_digest}\nconfig_digest: {config_digest}\n")
        with _discarded_on_failure([tree]):  # a full disk may refuse the commit's file
            prepared = self._prepare("commit", objects.commit_bytes(tree.oid, [], _person(actor), _person(), message))
        objects.install(self.objects_dir, [tree, prepared], self.fsync)  # synced together
        commit = prepared.oid
        self._require_tag(ref, str(commit), blobs)
        serverhooks.validate(self.path, "tag", self.hook_timeout, None, WO_REPOSITORY=repository, WO_MAP=map,
                             WO_TAG=tag, WO_MAP_DIGEST=map_digest, WO_CONFIG_DIGEST=config_digest,
                             WO_USER=actor)
        if not self._create_ref(ref, commit):
            raise exists
        self._keep_indexed(ref, str(commit), blobs)
        return self.get_tag(repository, map, tag)

    def _kept(self, kind: str, data: bytes) -> str:
        """Write an object now (``_prepare``, then synced and in place); return its id."""
        prepared = self._prepare(kind, data)
        objects.install(self.objects_dir, [prepared], self.fsync)
        return prepared.oid

    def _prepare(self, kind: str, data: bytes) -> objects.Prepared:
        """An object to write (``objects.install`` syncs it), so that ``git prune`` keeps it until a
        ref reaches it: one stored already (unreachable and old, maybe) is touched now, younger than
        any grace period (prune checks the time as it removes a file); one pruned meanwhile is
        written again."""
        for _ in range(3):
            prepared = objects.prepare_object(self.objects_dir, kind, data)
            if prepared.tmp is not None or self._touch(prepared.oid):
                return prepared
        raise errors.UNAVAILABLE("objects kept disappearing under a concurrent wogit gc; retry shortly")

    def _commit(self, tree: str, parents: list[str], actor: str | None, message: str) -> str:
        """Write a commit: authored by ``actor`` (the registry itself if None), committed by the registry."""
        data = objects.commit_bytes(tree, parents, _person(actor), _person(), message)
        return objects.write_object(self.objects_dir, "commit", data, self.fsync)

    def _freshen(self, blobs: dict[str, tuple[str, str]]) -> None:
        """Touch the loose objects of a tag's blobs, so a sweep that raced this tag cannot remove them."""
        for kind, (digest, oid) in blobs.items():
            if not self._touch(oid):
                raise errors.BLOB_UNKNOWN(f"{kind}_digest {digest} names no uploaded {kind}")

    def _touch(self, oid: str) -> bool:
        """Make an object look new to ``git prune``; False if it is not there (any more)."""
        # packed: git prune removes only loose objects
        return objects.touch(self.objects_dir, oid) or self.repo.odb.exists(oid)

    def _require_tag(self, ref: str, commit: str, blobs: dict[str, tuple[str, str]]) -> None:
        """The rules' check of a new tag.  A gc that found its blobs old before they were freshened
        may remove their index refs meanwhile (and put them back, wogit.maintenance): they are
        indexed again and checked again, rather than answered as a broken rule."""
        for attempt in range(3):
            if attempt:  # the first check failed: was it a gc's doing?
                self._index_again(blobs)
            try:
                return rules.require(rules.Change(ref, rules.ZERO, commit), view=self._view())
            except errors.WogitError:
                if attempt == 2 or attempt and all(self.refs.get(names.blob_ref(kind, digest)) is not None
                                                   for kind, (digest, _) in blobs.items()):
                    raise

    def _index_again(self, blobs: dict[str, tuple[str, str]]) -> None:
        """A tag's blobs are still there and indexed (a gc running meanwhile may have removed an
        index ref it thought unused: put it back); BLOB_UNKNOWN if one was swept before it was
        freshened."""
        for kind, (digest, oid) in blobs.items():
            if not self.repo.odb.exists(oid):
                raise errors.BLOB_UNKNOWN(f"{kind}_digest {digest} was removed by wogit gc meanwhile")
            if self.refs.get(names.blob_ref(kind, digest)) is None:
                self._create_ref(names.blob_ref(kind, digest), self._index_tree(kind, oid))

    def _keep_indexed(self, ref: str, commit: str, blobs: dict[str, tuple[str, str]]) -> None:
        """After a tag is created: its blobs are still there and indexed; a blob swept before it
        was freshened undoes the tag."""
        try:
            self._index_again(blobs)
        except BaseException:  # a swept blob, or no room for its index (507): no tag either way
            self._git("update-ref", "-d", ref, commit, check=False)
            self._changed()
            raise

    def get_tag(self, repository: str, map: str, tag: str) -> Tag:
        target = self.refs.get(names.tag_ref(repository, map, tag))
        if target is None:
            raise errors.TAG_UNKNOWN(f"tag {repository}/{map}/{tag} does not exist")
        said = self.parsed.get("tag " + target)
        if said is None:
            commit = self.repo[target]
            fields = rules.tag_digests(commit.message)
            said = (fields["map_digest"], fields["config_digest"], commit.commit_time, str(commit.id),
                    str(commit.tree["map"].id), str(commit.tree["config"].id))
            self.parsed.put("tag " + target, said, 512)
        return Tag(repository, map, tag, *said)

    def map_exists(self, repository: str, map: str) -> bool:
        """A map exists while it has a tag or a metadata history."""
        if self.refs.get(names.metadata_ref(repository, map)) is not None:
            return True
        prefix = names.tags_prefix(repository, map)
        return bool(self._git("for-each-ref", "--count=1", "--format=%(refname)", prefix).stdout.strip())

    @_storing
    def delete_tag(self, repository: str, map: str, tag: str, actor: str | None = None) -> Tag:
        """Delete a tag, recording it in the map's metadata history, in one ref transaction."""
        ref = names.tag_ref(repository, map, tag)
        history = names.metadata_ref(repository, map)

        def attempt() -> Tag:
            found = self.get_tag(repository, map, tag)
            repo = self.repo
            head = self.refs.get(history)
            parent = repo[head] if head is not None else None
            tree = str(parent.tree_id) if parent is not None else self._kept("tree", b"")
            author = repo[found.commit].author
            message = (f"{DELETE_TAG} {tag}\n\ntag_commit: {found.commit}\n"
                       f"map_digest: {found.map_digest}\nconfig_digest: {found.config_digest}\n"
                       f"created: {found.created}\ncreated_by: {author.name} <{author.email}>\n")
            commit = self._commit(tree, [str(parent.id)] if parent is not None else [], actor, message)
            old = str(parent.id) if parent is not None else ZERO_OID
            rules.require(rules.Change(history, old, str(commit)), rules.Change(ref, found.commit, ZERO_OID),
                          view=self._view())
            self._transaction(f"delete {ref} {found.commit}\nupdate {history} {commit} {old}\n", ref)
            return found

        return self._retrying(attempt)

    def list_tags(self, repository: str, map: str) -> list[Tag]:
        """Every tag of a map, by name: one read of the map's own refs, whatever the registry's size."""
        tags = list(self._tags_under([names.tags_prefix(repository, map)]))
        if not tags and not self.map_exists(repository, map):
            raise errors.MAP_UNKNOWN(f"map {repository}/{map} does not exist")
        return tags

    def repositories(self) -> list[str]:
        """The repositories holding at least one map, by name: a look-up for each, not a read of
        every ref.  Every ref is checked when it is written: its first name is enough (a
        metadata ref's second)."""
        first = {name for name in self.refs.children(names.NAMESPACE) if not name.startswith("_")}
        return sorted(name for name in first | self.refs.children(names.METADATA) if names.is_repository(name))

    def maps(self, repository: str) -> list[str]:
        """The maps of a repository, by name; MAP_UNKNOWN if it holds none."""
        out = self._git("for-each-ref", "--format=%(refname)", *names.repository_prefixes(repository)).stdout
        found = {name.map for name in map(names.parse_ref, out.splitlines())
                 if isinstance(name, (names.TagName, names.MetadataName)) and name.repository == repository}
        if not found:
            raise errors.MAP_UNKNOWN(f"repository {repository} holds no map")
        return sorted(found)

    def tags_using(self, kind: str, digest: str, repositories: list[str] | None = None) -> Iterator[Tag]:
        """The tags whose map (or config) is ``digest``, in ``repositories`` (None: all), by name.
        Reads the commit message of every tag there, streamed: memory stays flat, time grows
        with the tags read (stop early when one is enough)."""
        names.digest_hex(digest)
        field = f"{kind}_digest: {digest}\n"
        prefixes = [names.TAGS_PATTERN] if repositories is None else [
            names.repository_prefixes(r)[0] for r in repositories]
        return self._tags_under(prefixes, lambda body: field in body) if prefixes else iter(())

    def all_tags(self) -> Iterator[Tag]:
        return self._tags_under([names.TAGS_PATTERN])

    def _tags_under(self, prefixes: list[str], keep: Callable[[str], bool] = lambda body: True) -> Iterator[Tag]:
        """The tags under ``prefixes`` whose commit message ``keep`` accepts, streamed from one
        ``git for-each-ref``; REPOSITORY_DAMAGED if git cannot read them all."""
        fmt = "%(refname) %(objectname) %(committerdate:unix)%0a%(contents:body)%00"
        with subprocess.Popen(["git", "--git-dir", self.path, "for-each-ref", f"--format={fmt}", *prefixes],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=objects.GIT_ENV) as proc:
            try:
                for record in _records(proc.stdout, b"\0\n"):
                    head, _, body = record.decode("utf-8", "replace").partition("\n")
                    parts = head.split(" ")
                    if len(parts) != 3 or not keep(body):
                        continue
                    name = names.parse_ref(parts[0])
                    fields = rules.tag_digests(body)
                    if isinstance(name, names.TagName) and len(fields) == 2:
                        yield Tag(name.repository, name.map, name.tag, fields["map_digest"],
                                  fields["config_digest"], int(parts[2]), parts[1], "", "")
            finally:
                proc.kill()  # a caller that stopped early: git need not list the rest
                problem = proc.stderr.read().decode("utf-8", "replace").strip()
                code = proc.wait()
            if code not in (0, -9) or (code == -9 and problem):
                raise errors.REPOSITORY_DAMAGED(f"git cannot read every tag's commit: {problem or code}; "
                                                "run wogit fsck")

    # -- maps and configs by digest ----------------------------------------------

    def get_blob(self, kind: str, digest: str) -> Blob:
        """A stored map or config by digest; BLOB_UNKNOWN if it was not uploaded as ``kind``."""
        oid = self._require_blob(kind, digest, "digest")
        _, size = self.repo.odb.read_header(oid)

        def body(first: int, length: int) -> Body:
            # A loose object of stored blocks holds the bytes as they are: spans of its file.
            stored = objects.open_stored(self.path, oid)
            if stored is not None:
                spans = (Span(stored.fd, offset, n) for offset, n in stored.spans(first, length))
                return Body(spans, length, fds=[stored.fd])
            # Otherwise git inflates them: once, into the cache, which later downloads send.
            key = names.digest_hex(digest)
            cached = self.cache.lookup("blobs", key)
            if cached is not None and cached[1] == size:
                return Body([Span(cached[0], first, length)], length, fds=[cached[0]])
            if cached is not None:
                os.close(cached[0])
            _, stream = objects.read_blob(self.path, oid)
            if (first, length) == (0, size):
                return Body(_teed(stream, lambda: self.cache.writer("blobs", key, size)), length)
            return Body(objects.window(stream, first, length), length)

        return Blob(kind, digest, oid, size, body)

    # -- metadata ------------------------------------------------------------

    def get_metadata(self, repository: str, map: str, at: int | str | None = None) -> Metadata:
        """The map's metadata now, or as it was ``at`` a time (unix seconds: after the last change
        at or before it) or a commit of its history (a full commit id)."""
        if at is None:
            now = self._metadata_now(repository, map)
            return Metadata(dict(now.items), now.version, now.commit)
        return self._metadata_of(self._metadata_at(repository, map, at))

    def get_metadata_value(self, repository: str, map: str, key: str,
                           at: int | str | None = None) -> tuple[str, str | None]:
        """One value and the metadata commit it was read from."""
        if at is None:
            now = self._metadata_now(repository, map)
            value, commit = now.items.get(key), now.commit
        else:
            older = self._metadata_at(repository, map, at)
            value = commit = None
            if older is not None and names.is_key(key) and key in older.tree:
                value, commit = self.repo[older.tree[key].id].data.decode("utf-8"), str(older.id)
        if value is None or not names.is_key(key):
            when = "" if at is None else f" at {at}" if isinstance(at, str) else f" at {_iso(at)}"
            raise errors.KEY_UNKNOWN(f"map {repository}/{map} has no metadata key {key!r}{when}")
        return value, commit

    def _metadata_of(self, commit: pygit2.Commit | None) -> Metadata:
        if commit is None:
            return Metadata({}, EMPTY_TREE)
        items = {entry.name: self.repo[entry.id].data.decode("utf-8") for entry in commit.tree}
        return Metadata(items, str(commit.tree.id), str(commit.id))

    def _metadata_now(self, repository: str, map: str) -> Metadata:
        """The newest metadata (``_metadata_head``'s), kept by its commit's id (commits never
        change): a read of the map's ref, then none of git's objects.  Not to be changed."""
        target = self._metadata_target(repository, map)
        if target is None:
            return Metadata({}, EMPTY_TREE)
        now = self.parsed.get("metadata " + target)
        if now is None:
            now = self._metadata_of(self.repo[target])
            self.parsed.put("metadata " + target, now, 256 + sum(len(k) + len(v) for k, v in now.items.items()))
        return now

    def _metadata_at(self, repository: str, map: str, at: int | str | None) -> pygit2.Commit | None:
        commit = self._metadata_head(repository, map)
        if at is None:
            return commit
        if isinstance(at, str):
            for older in self._first_parents(commit):
                if str(older.id) == at:
                    return older
            at = self._tag_commit_time(repository, map, at)  # a create-tag entry of the history: its time
        for older in self._first_parents(commit):
            if older.commit_time <= at:
                return older
        return None

    def _tag_commit_time(self, repository: str, map: str, commit: str) -> int:
        """The time of one of this map's tag commits (as ``_history`` lists them)."""
        try:
            found = self.repo[commit]
        except (KeyError, ValueError):
            found = None
        if not isinstance(found, pygit2.Commit) or not found.message.startswith(f"tag {repository}/{map}/"):
            raise errors.COMMIT_UNKNOWN(f"commit {commit} is not in the history of {repository}/{map}")
        return found.commit_time

    def _first_parents(self, commit: pygit2.Commit | None) -> Iterator[pygit2.Commit]:
        while commit is not None:
            yield commit
            commit = commit.parents[0] if commit.parents else None

    def history(self, repository: str, map: str) -> list[Change]:
        """What happened to a map, newest first: its tags' creations and deletions and its
        metadata changes, from the tags' commits and the metadata history."""
        head = self._metadata_head(repository, map)
        changes: list[Change] = []
        for commit in self._first_parents(head):
            changes.extend(_describe_change(self.repo, commit))
        for tag in self._tags_under([names.tags_prefix(repository, map)]):
            author = self.repo[tag.commit].author
            changes.append(Change(tag.created, _actor(author.name, author.email), "create-tag", tag.commit,
                                  tag.tag, (), tag.map_digest, tag.config_digest))
        # Newest first; within one second, a tag's creation before what was done to it.  A tag
        # deleted and made again alike within one second is one commit: listed once.
        order = {"create-tag": 1}
        changes.sort(key=lambda c: (-c.time, order.get(c.action, 0)))
        unique = {(c.action, c.commit): c for c in reversed(changes)}
        return [c for c in changes if unique.get((c.action, c.commit)) is c]

    @_storing
    def set_metadata(self, repository: str, map: str, items: dict[str, str], actor: str | None = None) -> list[str]:
        """Merge ``items`` into the map's metadata; return the keys whose value changed."""
        self.require_map(repository, map)
        for key, value in items.items():
            if not names.is_key(key):
                raise errors.NAME_INVALID(f"invalid metadata key {key!r}: must match {names.KEY_RULE}")
            metadata.check_value(key, value)
        values = {key: value.encode("utf-8") for key, value in items.items()}
        metadata.check_limits({key: len(value) for key, value in values.items()})  # before writing anything
        prepared: dict[str, objects.Prepared] = {}  # synced with the commit
        with _discarded_on_failure(prepared.values()):
            for key, value in values.items():
                prepared[key] = self._prepare("blob", value)
        blobs = {key: p.oid for key, p in prepared.items()}

        def change(entries: dict[str, tuple[int, str]], size: Callable[[str], int]) -> tuple[list[str], str]:
            sizes = {key: size(oid) for key, (_, oid) in entries.items()}
            metadata.check_limits({**sizes, **{key: len(value) for key, value in values.items()}})
            changed = [key for key, oid in blobs.items() if entries.get(key) != (rules.BLOB_MODE, oid)]
            for key in changed:
                entries[key] = (rules.BLOB_MODE, blobs[key])
            body = "".join(f"{key}={items[key]}\n" for key in changed)
            return changed, f"set {', '.join(changed)}\n\n{body}"

        sizes = {blobs[key]: len(value) for key, value in values.items()}
        return self._change_metadata(repository, map, change, actor, list(prepared.values()), sizes)

    @_storing
    def delete_metadata(self, repository: str, map: str, key: str, actor: str | None = None) -> None:
        self.require_map(repository, map)
        unknown = errors.KEY_UNKNOWN(f"map {repository}/{map} has no metadata key {key!r}")
        if not names.is_key(key):
            raise unknown

        def change(entries: dict[str, tuple[int, str]], size: Callable[[str], int]) -> tuple[list[str], str]:
            if key not in entries:
                raise unknown
            del entries[key]
            return [key], f"delete {key}\n"

        self._change_metadata(repository, map, change, actor)

    def require_map(self, repository: str, map: str) -> None:
        """MAP_UNKNOWN unless the map exists (has a tag or a metadata history)."""
        self._metadata_head(repository, map)

    def _metadata_head(self, repository: str, map: str) -> pygit2.Commit | None:
        """The newest metadata commit of a map (None if it has none); MAP_UNKNOWN if no map."""
        target = self._metadata_target(repository, map)
        return self.repo[target] if target is not None else None

    def _metadata_target(self, repository: str, map: str) -> str | None:
        """The id of the newest metadata commit of a map (None if it has none); MAP_UNKNOWN if no map."""
        target = self.refs.get(names.metadata_ref(repository, map))
        if target is None and not self.map_exists(repository, map):
            raise errors.MAP_UNKNOWN(f"map {repository}/{map} does not exist (it has no tag)")
        return target

    def _change_metadata(self, repository: str, map: str, change: _MetadataChange, actor: str | None = None,
                         blobs: list[objects.Prepared] = (), sizes: dict[str, int] | None = None) -> list[str]:
        """Apply ``change`` to the newest metadata as one commit, compare-and-swap, retried.

        The writers of one map in this process take turns; whoever's turn it is commits every
        change queued for the map meanwhile (group commit): one commit each, in the order they
        came, synced together and published with one compare-and-swap of the ref.  A change
        that fails (a key to delete that is gone, limits) fails alone."""
        name = names.metadata_ref(repository, map)
        mine = _Queued(change, actor, list(blobs), sizes or {})
        with self._queue_lock:
            self._queued.setdefault(name, []).append(mine)
        with self._writing(name):
            if not mine.done:
                with self._queue_lock:
                    batch = self._queued.pop(name)
                try:
                    for queued, outcome in self._retrying(lambda: self._commit_changes(name, batch)).items():
                        queued.outcome = outcome
                except BaseException as exc:  # the whole batch failed (UNAVAILABLE, RULE_BROKEN...)
                    for queued in batch:
                        queued.outcome = exc
                finally:
                    for queued in batch:
                        queued.done = True
                        objects.discard(queued.blobs)  # left over if its change failed
        if isinstance(mine.outcome, BaseException):
            raise mine.outcome
        return mine.outcome

    def _commit_changes(self, name: str, batch: list[_Queued]) -> dict[_Queued, list[str] | BaseException]:
        """One attempt: a commit for each change of ``batch`` on the ref's current commit."""
        repo = self.repo
        head_id = self.refs.get(name)
        parent = repo[head_id] if head_id is not None else None
        entries = {e.name: (int(e.filemode), str(e.id)) for e in parent.tree} if parent is not None else {}
        old = str(parent.id) if parent is not None else rules.ZERO
        head, written, outcomes = old, [], {}
        sizes = {oid: size for queued in batch for oid, size in queued.sizes.items()}

        def size(oid: str) -> int:
            return sizes[oid] if oid in sizes else repo.odb.read_header(oid)[1]

        made: list[objects.Prepared] = []  # this attempt's trees and commits
        with _discarded_on_failure(made):  # (the changes' own blobs: _change_metadata discards them)
            for queued in batch:
                after = dict(entries)
                try:
                    changed, message = queued.change(after, size)
                except errors.WogitError as exc:
                    outcomes[queued] = exc
                    continue
                outcomes[queued] = changed
                if not changed:
                    continue
                made.append(tree := self._prepare("tree", objects.tree_bytes(after)))
                made.append(commit := self._prepare("commit", objects.commit_bytes(
                    tree.oid, [head] if head != rules.ZERO else [], _person(queued.actor), _person(), message)))
                written += [*queued.blobs, tree, commit]
                entries, head = after, commit.oid
        if head == old:
            return outcomes
        objects.install(self.objects_dir, written, self.fsync)
        for queued in batch:  # stored now, whatever happens next (a retry commits them again)
            if queued in outcomes and not isinstance(outcomes[queued], BaseException) and outcomes[queued]:
                queued.blobs = []
        rules.require(rules.Change(name, old, head), view=self._view())
        try:
            self._update_ref(name, head, old)
        except refs.Moved:
            raise _Contended(name, "moved") from None
        return outcomes

    # -- archives ------------------------------------------------------------

    def archive(self, repository: str, map: str, tag: str) -> Archive:
        """A tag as a reproducible tar.gz of ``map``, ``metadata`` and ``config``; made once per
        tag, metadata and tarball format, then kept in the cache."""
        found = self.get_tag(repository, map, tag)
        meta = self.get_metadata(repository, map)
        key = hashlib.sha256(f"{found.commit} {meta.version} {tarball.FORMAT}".encode()).hexdigest()

        def body() -> Body:
            small = self.recent.get(key)
            if small is not None:
                return Body([small], len(small))
            cached = self.cache.lookup("tarballs", key)
            if cached is not None:
                return Body([Span(cached[0], 0, cached[1])], cached[1], fds=[cached[0]])
            meta_bytes = metadata.serialise(meta.items)
            config = self.repo[found.config_oid].data  # configs are bounded in size
            stored = objects.open_stored(self.path, found.map_oid)
            if stored is not None:  # read as it is, into one buffer: no inflating, no copies
                map_size, source, close = stored.size, stored.chunks(), lambda: os.close(stored.fd)
                first = next(source, b"")  # the first MiB, valid until the next is read
                level, stream = objects.compression_level(first), itertools.chain([first], source)
            else:
                map_size, source = objects.read_blob(self.path, found.map_oid)
                close = source.close
                sample, stream = _peek(source, objects.CHUNK)
                level = objects.compression_level(sample)
            members = [tarball.Member("map", map_size, stream),
                       tarball.Member("metadata", len(meta_bytes), [meta_bytes]),
                       tarball.Member("config", len(config), [config])]
            length = tarball.length(members, found.created, level)
            estimate = length or tarball.tar_length(members, found.created)
            chunks = _teed(tarball.tar_gz(members, found.created, level),
                           lambda: self.cache.writer("tarballs", key, estimate))
            if estimate < cache.MIN_SIZE:  # a small map's: built whole (bounded), kept in memory
                try:
                    small = b"".join(bytes(chunk) for chunk in chunks)  # a chunk's buffer may be reused
                finally:
                    close()
                self.recent.put(key, small)
                return Body([small], len(small))
            return Body(chunks, length, on_close=close)

        return Archive(found, f'"{key}"', body)

    # -- git over HTTP ---------------------------------------------------------

    def serve_git(self, request: githttp.Request, body: objects.Reader | None) -> githttp.Response:
        """One smart-HTTP request (clone, fetch, push) on the registry repository."""
        answer = githttp.run(self.path, request, body, allow_push=True)
        if githttp.service(request.path, request.query) != githttp.RECEIVE_PACK or request.method != "POST":
            return answer

        def then_tell() -> Iterator[bytes]:
            try:
                yield from answer.body
            finally:
                self._changed()  # whatever the push changed (or not): listeners compare for themselves

        return githttp.Response(answer.status, answer.headers, then_tell())

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # -- refs ----------------------------------------------------------------

    def _view(self) -> rules.View:
        return rules.Pygit2View(self.repo, self._refs_under, self.refs.get)

    def _refs_under(self, prefix: str) -> dict[str, str]:
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", prefix).stdout
        return {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}

    def _create_ref(self, name: str, target: str) -> bool:
        """Atomically create ``name``; False if it already exists.

        libgit2 checks that a ref is absent *before* taking its lock, so two
        processes could both "create" it; ``wogit.refs`` checks under the lock,
        which makes exactly one creator win.
        """
        def attempt() -> bool:
            try:
                self._update_ref(name, target, ZERO_OID)
            except refs.Moved:
                return False
            return True

        return self._retrying(attempt)

    def _update_ref(self, name: str, new: str, old: str) -> None:
        """Move ``name`` from ``old`` to ``new`` (compare-and-swap, synced; wogit.refs: libgit2 would
        read every ref of the registry to write one); ``refs.Moved`` if it is elsewhere,
        ``_Contended`` while another writer holds its lock."""
        try:
            self.refs.update(name, new, old)
        except refs.Locked:
            raise _Contended(name, "locked") from None
        self._changed()

    @contextlib.contextmanager
    def _writing(self, ref: str) -> Iterator[None]:
        """Hold this process's lock for ``ref`` (one of a fixed set, by the name's hash)."""
        with self._ref_locks[hash(ref) % len(self._ref_locks)]:
            yield

    def _transaction(self, commands: str, ref: str) -> None:
        """Apply ``git update-ref --stdin`` commands (each naming the old value) all or none.

        git runs in a session of its own: a kill of the server's process group (``kill -9``
        of a service) does not stop it between its ref locks and their renames, which would
        leave locks only their age can break (reliability/crash.py); the commands are handed
        over whole (a ``start`` ... ``commit`` transaction: cut short, git applies none)."""
        touched = {os.path.dirname(os.path.join(self.path, line.split()[1])) for line in commands.splitlines()}
        created = [d for folder in touched for d in objects.absent_dirs(folder, self.path)] if self.fsync else []
        result = subprocess.run(["git", "--git-dir", self.path, "update-ref", "--stdin"],
                                input=f"start\n{commands}commit\n", capture_output=True, text=True,
                                env=objects.GIT_ENV, start_new_session=True)
        if result.returncode == 0:
            if self.fsync:  # git syncs the files it writes (core.fsync), not their directories
                objects.sync_new_entries(touched | {self.path}, created)  # the refs' and packed-refs'
            self._changed()
            return
        full = _no_space(result.stderr)  # its messages name the lock it could not write: not contention
        if full is not None:
            raise full
        if any(sign in result.stderr for sign in ("but expected", "reference already exists", ".lock",
                                                   "unable to resolve reference", "reference is missing")):
            # The lock git could not take may be another ref's of the transaction (a map's
            # history) or packed-refs' (deleting a packed ref rewrites it): name that one, so a
            # stale lock on it is the one broken.
            raise _Contended(self._locked(result.stderr) or ref, result.stderr.strip())
        raise RuntimeError(f"git update-ref --stdin failed: {result.stderr.strip()}")

    def _locked(self, stderr: str) -> str | None:
        """The ref (or ``packed-refs``) whose lock git found taken, from its message."""
        found = _LOCK_EXISTS.search(stderr)
        if found is None:
            return None
        name = os.path.relpath(os.path.normpath(found.group(1)), self.path).replace(os.sep, "/")
        return name if name == refs.PACKED or name.startswith(names.NAMESPACE) else None

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--git-dir", self.path, *args], check=check, capture_output=True,
                              text=True, env=objects.GIT_ENV)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.001
        while True:
            try:
                return attempt()
            except _Contended as exc:
                if time.monotonic() > deadline:
                    raise errors.UNAVAILABLE(f"{exc.ref} stayed locked or kept changing under other writers "
                                             f"for {self.retry_seconds:g} s; retry shortly") from None
                self.refs.break_stale_lock(exc.ref)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)

    # -- operations (health and metrics) ---------------------------------------

    READY_PROBE = "tmp_wogit_ready"  # in objects/, like git's own temporaries (`git prune` sweeps tmp_*)

    COUNTED = ("maps", "configs", "tags")

    def counts(self) -> dict[str, int]:
        """How many maps, configs and tags the registry holds.  The packed refs are counted once
        for each version of packed-refs (a scan of its text), the loose ones (written since it)
        each time."""
        packed = self.refs.packed()
        cached = self._packed_counts
        if packed is not None and (cached is None or cached[0] != packed.stamp):
            cached = self._packed_counts = (packed.stamp, _count_packed(packed))
        found = dict(cached[1]) if packed is not None else dict.fromkeys(self.COUNTED, 0)
        for ref in self.refs.loose_names(names.NAMESPACE):
            kind = names.kind_of(ref)
            if kind in found and (packed is None or packed.get(ref) is None):
                found[kind] += 1
        return found

    def check_ready(self) -> None:
        """Raise NOT_READY unless the repository's refs can be read and a file written and
        synced in its objects directory (where every upload goes)."""
        # One ref looked up (its loose file, then packed-refs), whatever the registry's size;
        # absent (1) or there (0), the refs were read.
        probe = names.blob_ref(names.MAP, names.digest("0" * 64))
        read = self._git("rev-parse", "--verify", "--quiet", "--end-of-options", probe, check=False)
        if read.returncode not in (0, 1):
            raise errors.NOT_READY(f"cannot read the repository's refs: {read.stderr.strip() or read.returncode}")
        probe = os.path.join(self.objects_dir, self.READY_PROBE)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ready\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                try:
                    os.unlink(probe)  # also when the disk is full: no probe is left behind
                except FileNotFoundError:
                    pass  # a concurrent check removed it first
        except OSError as exc:
            raise errors.NOT_READY(f"cannot write in the repository's objects directory: "
                                   f"{exc.strerror or exc}") from None


#: The registry's git settings: objects and refs synced to disk, pushed objects checked.
UPLOAD_SECRET = "wogit.uploadSecret"
GIT_CONFIG = (("core.fsync", "all"), ("receive.fsckObjects", "true"), ("core.logAllRefUpdates", "false"))


def init(path: str) -> list[str]:
    """Make ``path`` a registry repository: create it if need be, and give it (a mirror made by
    ``git clone --mirror``, a restored backup) the registry's git settings and hooks.
    Idempotent; returns what it changed."""
    done = []
    if not os.path.isfile(os.path.join(path, "HEAD")):
        deadline = time.monotonic() + 5  # another process may be creating it right now
        while os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, "HEAD")):
            if time.monotonic() > deadline:
                raise SystemExit(f"wogit: {path} exists and is not a bare git repository")
            time.sleep(0.1)
        pygit2.init_repository(path, bare=True)
    config = pygit2.Repository(path).config
    if UPLOAD_SECRET not in config:  # the key of the upload proofs (Store.upload_proof)
        try:
            config[UPLOAD_SECRET] = secrets.token_hex(32)
            done.append(f"set {UPLOAD_SECRET}")
        except pygit2.GitError:  # another process is writing the config: it sets one too
            pass
    for key, value in GIT_CONFIG:
        if (config[key] if key in config else None) != value:
            try:
                config[key] = value
                done.append(f"set {key}={value}")
            except pygit2.GitError:  # another process is writing the config (the same values)
                pass
    return done + serverhooks.install(path)


def _count_packed(packed: refs.Packed) -> dict[str, int]:
    """``Store.counts`` of the refs in one packed-refs: each kind's lines found by its pattern
    (wogit.names), in the span of the file where its refs sort."""
    found = dict.fromkeys(Store.COUNTED, 0)
    if packed.table is not None:  # an unsorted file, read whole
        for ref in packed.table:
            kind = names.kind_of(ref)
            if kind in found:
                found[kind] += 1
        return found
    begin, end = packed.span(names.NAMESPACE)
    private = packed.span(names.NAMESPACE + "_")  # _maps, _configs, _metadata: the rest are tags
    spans = {"maps": [packed.span(names.MAPS)], "configs": [packed.span(names.CONFIGS)],
             "tags": [(begin, private[0]), (private[1], end)]}
    for kind, where in spans.items():
        for first, last in where:
            # pieces of 256 KiB: the regex holds the GIL a few ms at a time, not a whole scan
            found[kind] += sum(len(names.PACKED_LINES[kind].findall(text))
                               for text in packed.text(first, last, size=1 << 18))
    return found


_LOCK_EXISTS = re.compile(r"Unable to create '(.+)\.lock': File exists")


def _index_entries(kind: str, oid: str) -> bytes:
    """The digest index's tree for a blob: one entry, named after the kind (docs/layout.md)."""
    return objects.tree_bytes({kind: (rules.BLOB_MODE, oid)})


def _person(actor: str | None = None) -> tuple[str, str, int]:
    """The registry's own identity, or (as a commit's author) the user who asked for the change:
    name, email and the time now."""
    if actor is None:
        return (*IDENTITY, int(time.time()))
    return urllib.parse.quote(actor, safe=_NAME_SAFE), USER_EMAIL, int(time.time())


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _actor(name: str, email: str) -> str | None:
    """The user an author line names (None: the registry itself, for an anonymous client)."""
    return urllib.parse.unquote(name) if email == USER_EMAIL else None


_CREATED_BY = re.compile(r"^created_by: (.*) <(.*)>$", re.M)
_CREATED = re.compile(r"^created: ([0-9]+)$", re.M)
_TAG_COMMIT = re.compile(r"^tag_commit: ([0-9a-f]{40})$", re.M)


def _describe_change(repo: pygit2.Repository, commit: pygit2.Commit) -> list[Change]:
    """The history entries one metadata commit records: a tag's deletion (which also recalls
    the deleted tag's creation), or the keys it set and deleted (from the trees themselves, so
    commits pushed with git are described too)."""
    user = _actor(commit.author.name, commit.author.email)
    subject, _, body = commit.message.partition("\n")
    if subject.startswith(DELETE_TAG + " ") and _TAG_COMMIT.search(body):
        tag = subject[len(DELETE_TAG) + 1:].strip()
        fields = rules.tag_digests(body)
        deleted = Change(commit.commit_time, user, "delete-tag", str(commit.id), tag, (),
                         fields.get("map_digest"), fields.get("config_digest"))
        created, by = _CREATED.search(body), _CREATED_BY.search(body)
        if created is None or len(created.group(1)) > 11:  # a record pushed with git may say anything
            return [deleted]
        return [deleted, Change(int(created.group(1)), _actor(*by.groups()) if by else None, "create-tag",
                                _TAG_COMMIT.search(body).group(1), tag, (), deleted.map_digest,
                                deleted.config_digest)]
    before = {e.name: e.id for e in commit.parents[0].tree} if commit.parents else {}
    after = {e.name: e.id for e in commit.tree}
    changed = tuple(sorted(k for k, oid in after.items() if before.get(k) != oid))
    removed = tuple(sorted(k for k in before if k not in after))
    if changed and removed:
        return [Change(commit.commit_time, user, "change-metadata", str(commit.id), keys=changed + removed)]
    if removed:
        return [Change(commit.commit_time, user, "delete-metadata", str(commit.id), keys=removed)]
    return [Change(commit.commit_time, user, "set-metadata", str(commit.id), keys=changed)] if changed else []


def _records(stream, separator: bytes) -> Iterator[bytes]:
    """The records of a byte stream, split at ``separator``, read a chunk at a time."""
    pending = b""
    while chunk := stream.read1(objects.CHUNK):
        pending += chunk
        *done, pending = pending.split(separator)
        yield from done
    if pending:
        yield pending


def _teed(chunks: Iterator[bytes], writer: Callable[[], cache.Writer | None]) -> Iterator[bytes]:
    """``chunks``, also written to the cache ``writer()`` (asked for at the first chunk), which
    keeps them only if they all went out."""
    into = None
    whole = False
    try:
        for chunk in chunks:
            if into is None:
                into = writer() or _NOWHERE
            into.write(chunk)
            yield chunk
        whole = True
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        if into is not None:
            into.finish() if whole else into.abandon()


class _Nowhere:
    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    abandon = finish


_NOWHERE = _Nowhere()


def _peek(stream: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``size`` bytes of ``stream`` (or all of it) and a stream that still yields them."""
    head: list[bytes] = []
    have = 0
    for chunk in stream:
        head.append(chunk)
        have += len(chunk)
        if have >= size:
            break
    sample = b"".join(head)

    def rest() -> Iterator[bytes]:
        yield from head
        yield from stream

    return sample[:size], rest()


class _Utf8Reader:
    """Passes bytes through, refusing any that are not UTF-8."""

    def __init__(self, body: objects.Reader):
        self.body = body
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0

    def read(self, size: int) -> bytes:
        data = self.body.read(size)
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise errors.BODY_INVALID(
                f"the config is not valid UTF-8 (byte {self.offset + exc.start})") from None
        self.offset += len(data)
        return data
