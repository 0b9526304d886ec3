"""Streaming reads and writes of git blobs, with bounded memory.

libgit2 holds a whole blob in memory to write or read it; maps can be many GiB.
So blobs are written here as git loose objects (``objects/xx/yyyy...``: zlib of
``blob <size>\\0<bytes>``), hashing sha1 (git's name) and sha256 (the registry's
digest) while the bytes stream, then fsync'd and renamed into place.  Content
that compresses poorly (most maps) is stored with zlib level 0, the rest with
level 1: git reads both.  Reads stream a loose object straight from its file,
or a packed one (after ``git gc`` or a clone) from ``git cat-file --batch``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

CHUNK = 1 << 20
_PROBE = 1 << 20
#: git's messages are parsed: keep them untranslated.
GIT_ENV = {**{k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LANG")}, "LC_ALL": "C"}


class Reader(Protocol):
    def read(self, size: int) -> bytes: ...


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp(objects_dir: str, prefix: str) -> tuple[int, str]:
    # git's own temporaries are objects/tmp_*; `git prune` sweeps stale ones.
    return tempfile.mkstemp(prefix=prefix, dir=objects_dir)


def spool(objects_dir: str, body: Reader, named: bool = False) -> tuple[BinaryIO, int, str | None]:
    """Copy a body to a temporary file; return it (at its start), its size, and its path if
    ``named`` (for a program to read; the caller removes it), else None (already unlinked)."""
    fd, path = _temp(objects_dir, "tmp_spool_")
    if not named:
        os.unlink(path)
    spooled = os.fdopen(fd, "w+b")
    size = 0
    try:
        while chunk := body.read(CHUNK):
            spooled.write(chunk)
            size += len(chunk)
        spooled.flush()
        spooled.seek(0)
    except BaseException:
        spooled.close()
        if named:
            _unlink(path)
        raise
    return spooled, size, path if named else None


def write_blob(
    objects_dir: str,
    body: Reader,
    size: int,
    check: Callable[[str], None] | None = None,
    fsync: bool = True,
) -> tuple[str, str]:
    """Store exactly ``size`` bytes read from ``body`` as a blob; return (oid, sha256 hex).

    ``check(sha256_hex)`` may raise to refuse the content before it becomes
    visible; nothing is left behind on any error.  A short body raises
    ``EOFError``.
    """
    header = b"blob %d\0" % size
    sha1 = hashlib.sha1(header)
    sha256 = hashlib.sha256()
    fd, tmp = _temp(objects_dir, "tmp_obj_")
    try:
        with os.fdopen(fd, "wb") as out:
            first = _read_exactly(body, min(size, _PROBE))
            deflate = zlib.compressobj(compression_level(first))
            out.write(deflate.compress(header))
            remaining = size
            chunk = first
            while True:
                sha1.update(chunk)
                sha256.update(chunk)
                out.write(deflate.compress(chunk))
                remaining -= len(chunk)
                if not remaining:
                    break
                chunk = _read_exactly(body, min(remaining, CHUNK))
            if body.read(1):
                raise ValueError("body longer than its size")
            out.write(deflate.flush())
            if check is not None:
                check(sha256.hexdigest())
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        oid = sha1.hexdigest()
        _install(objects_dir, tmp, oid, fsync)
        return oid, sha256.hexdigest()
    except BaseException:
        _unlink(tmp)
        raise


def _read_exactly(body: Reader, n: int) -> bytes:
    data = body.read(n)
    while len(data) < n:
        more = body.read(n - len(data))
        if not more:
            raise EOFError(f"body ended {n - len(data)} bytes early")
        data += more
    return data


def compression_level(sample: bytes) -> int:
    """zlib level 1 if ``sample`` compresses to under 90% at level 1, else 0 (stored)."""
    if not sample:
        return 1
    return 1 if len(zlib.compress(sample, 1)) < 0.9 * len(sample) else 0


def _install(objects_dir: str, tmp: str, oid: str, fsync: bool) -> None:
    fan = os.path.join(objects_dir, oid[:2])
    if not os.path.isdir(fan):
        os.makedirs(fan, exist_ok=True)
        if fsync:
            fsync_dir(objects_dir)
    os.chmod(tmp, 0o444)
    os.replace(tmp, os.path.join(fan, oid[2:]))
    if fsync:
        fsync_dir(fan)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- small objects: trees, commits, metadata values -------------------------------------------

TREE_MODE = 0o40000


@dataclass(frozen=True)
class Prepared:
    """A small object ready to be installed: its id, and its temporary file (None if it is stored)."""
    oid: str
    tmp: str | None


def prepare_object(objects_dir: str, kind: str, data: bytes) -> Prepared:
    """Write a small object (``blob``, ``tree``, ``commit``) to a temporary file, not yet synced
    nor visible (``install`` does both); one whose loose file is there already is not written."""
    raw = b"%s %d\0" % (kind.encode(), len(data)) + data
    oid = hashlib.sha1(raw).hexdigest()
    if os.path.exists(os.path.join(objects_dir, oid[:2], oid[2:])):
        return Prepared(oid, None)
    fd, tmp = _temp(objects_dir, "tmp_obj_")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(zlib.compress(raw, 1))
    except BaseException:
        _unlink(tmp)
        raise
    return Prepared(oid, tmp)


def install(objects_dir: str, prepared: list[Prepared], fsync: bool = True) -> None:
    """Make prepared objects durable and visible: every file fsync'd, then renamed into place,
    then every directory fsync'd.  The syncs run side by side, so the file system commits them
    together, and no thread holds the GIL while they wait (libgit2 would: every other request
    of the process would stop for each sync).  On failure no prepared file is left behind."""
    new = [p for p in prepared if p.tmp is not None]
    try:
        if fsync:
            _side_by_side(_fsync_file, [p.tmp for p in new])
        fans = set()
        for p in new:
            fan = os.path.join(objects_dir, p.oid[:2])
            if not os.path.isdir(fan):
                os.makedirs(fan, exist_ok=True)
                if fsync:
                    fsync_dir(objects_dir)
            os.chmod(p.tmp, 0o444)
            os.replace(p.tmp, os.path.join(fan, p.oid[2:]))
            fans.add(fan)
        if fsync:
            _side_by_side(fsync_dir, sorted(fans))
    except BaseException:
        discard(new)
        raise


def discard(prepared: list[Prepared]) -> None:
    """Remove the temporary files of objects that will not be installed."""
    for p in prepared:
        if p.tmp is not None:
            _unlink(p.tmp)


def write_object(objects_dir: str, kind: str, data: bytes, fsync: bool = True) -> str:
    """Store one small object now; return its id."""
    prepared = prepare_object(objects_dir, kind, data)
    install(objects_dir, [prepared], fsync)
    return prepared.oid


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNCERS: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)


def _side_by_side(sync: Callable[[str], None], paths: list[str]) -> None:
    """``sync(path)`` for every path, at the same time (a pool of threads of this process)."""
    global _SYNCERS
    if len(paths) < 2:
        for path in paths:
            sync(path)
        return
    if _SYNCERS is None or _SYNCERS[0] != os.getpid():  # none yet, or made before a fork
        _SYNCERS = (os.getpid(), ThreadPoolExecutor(max_workers=16, thread_name_prefix="wogit-fsync"))
    for _ in _SYNCERS[1].map(sync, paths):  # re-raises the first failure
        pass


def tree_bytes(entries: dict[str, tuple[int, str]]) -> bytes:
    """A tree object's content: ``name -> (mode, hex id)``, in git's order (a tree sorts as if
    its name ended in ``/``)."""
    def order(name: str) -> bytes:
        return name.encode() + (b"/" if entries[name][0] == TREE_MODE else b"")

    return b"".join(b"%o %s\0" % (entries[name][0], name.encode()) + bytes.fromhex(entries[name][1])
                    for name in sorted(entries, key=order))


def commit_bytes(tree: str, parents: list[str], author: tuple[str, str, int],
                 committer: tuple[str, str, int], message: str) -> bytes:
    """A commit object's content; ``author`` and ``committer`` are (name, email, unix time), in UTC."""
    lines = [f"tree {tree}", *(f"parent {parent}" for parent in parents),
             "author %s <%s> %d +0000" % author, "committer %s <%s> %d +0000" % committer]
    return ("\n".join(lines) + "\n\n" + message).encode("utf-8")


def read_blob(git_dir: str, oid: str) -> tuple[int, Iterator[bytes]]:
    """The size of a blob and an iterator over its bytes, streamed in chunks."""
    path = os.path.join(git_dir, "objects", oid[:2], oid[2:])
    try:
        loose = open(path, "rb")
    except FileNotFoundError:
        return _read_packed(git_dir, oid)
    try:
        inflate = zlib.decompressobj()
        head = b""
        while b"\0" not in head:
            data = inflate.unconsumed_tail or loose.read(64)
            if not data:
                raise ValueError(f"corrupt loose object {oid}")
            head += inflate.decompress(data, 64)
        header, _, rest = head.partition(b"\0")
        kind, _, size = header.partition(b" ")
        if kind != b"blob":
            raise ValueError(f"object {oid} is a {kind.decode(errors='replace')}, not a blob")
    except BaseException:
        loose.close()
        raise
    return int(size), _inflate(loose, inflate, rest)


def _inflate(loose: BinaryIO, inflate, first: bytes) -> Iterator[bytes]:
    with loose:
        if first:
            yield first
        while True:
            if inflate.unconsumed_tail:
                data = inflate.unconsumed_tail
            else:
                data = loose.read(CHUNK)
                if not data:
                    break
            out = inflate.decompress(data, CHUNK)
            if out:
                yield out
            if inflate.eof:
                break


def window(stream: Iterator[bytes], first: int, length: int) -> Iterator[bytes]:
    """The ``length`` bytes of ``stream`` from offset ``first`` (what a Range asks for)."""
    try:
        for chunk in stream:
            if first >= len(chunk):
                first -= len(chunk)
                continue
            piece = chunk[first:first + length]
            first = 0
            length -= len(piece)
            if piece:
                yield piece
            if length <= 0:
                return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _read_packed(git_dir: str, oid: str) -> tuple[int, Iterator[bytes]]:
    proc = subprocess.Popen(
        ["git", "--git-dir", git_dir, "cat-file", "--batch"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=GIT_ENV,
    )
    proc.stdin.write(oid.encode() + b"\n")
    proc.stdin.close()
    header = proc.stdout.readline().split()
    if len(header) != 3 or header[1] != b"blob":
        proc.kill()
        proc.wait()
        raise FileNotFoundError(f"blob {oid} is not in the repository")
    size = int(header[2])
    return size, _pipe(proc, size)


def _pipe(proc: subprocess.Popen, size: int) -> Iterator[bytes]:
    try:
        remaining = size
        while remaining:
            data = proc.stdout.read(min(CHUNK, remaining))
            if not data:
                raise EOFError("git cat-file ended early")
            remaining -= len(data)
            yield data
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait()
