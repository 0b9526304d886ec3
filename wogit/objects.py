"""Streaming reads and writes of git blobs, with bounded memory.

libgit2 holds a whole blob in memory to write or read it; maps can be many GiB.
So blobs are written here as git loose objects (``objects/xx/yyyy...``: zlib of
``blob <size>\\0<bytes>``), hashing sha1 (git's name) and sha256 (the registry's
digest) while the bytes stream, then fsync'd and renamed into place.  The body
is read into a few reused buffers; worker threads hash, encode and write each
one while the next arrives (hashlib, zlib and os release the GIL on big
buffers).  Content that compresses poorly (most maps) is stored as zlib level 0
(stored blocks, built here without zlib's copying), the rest as level 1, in
segments compressed side by side: git reads both.  Reads stream a loose object
straight from its file, or a packed one (after ``git gc`` or a clone) from
``git cat-file --batch``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import subprocess
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

from isal import isal_zlib

CHUNK = 1 << 20
_PROBE = 1 << 20  # the first MiB of a blob decides its compression
_BLOCK = 0xFFFF  # the most a stored deflate block holds
_BUFFER = 64 * _BLOCK  # a buffer of the write pipeline (~4 MiB): whole stored blocks
_DEPTH = 4  # buffers in flight
_WINDOW = 1 << 15  # deflate's window: what a segment takes from the one before
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, fastest level, no dictionary
_WRITEBACK = 8 << 20  # bytes written between two pushes to the disk
#: git's messages are parsed: keep them untranslated.
GIT_ENV = {**{k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LANG")}, "LC_ALL": "C"}


class Reader(Protocol):
    """A body; one with ``readinto(buffer) -> int`` too is read straight into the buffers."""

    def read(self, size: int) -> bytes: ...


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def absent_dirs(folder: str, top: str) -> list[str]:
    """The directories from ``folder`` up to (not including) ``top`` that do not exist yet."""
    absent = []
    while folder != top and len(folder) > len(top) and not os.path.isdir(folder):
        absent.append(folder)
        folder = os.path.dirname(folder)
    return absent


def sync_new_entries(folders: set[str], created: list[str]) -> None:
    """fsync ``folders`` (which hold new or renamed entries) and the parent of every directory
    in ``created``: a new directory's own entry is in its parent, which must reach the disk too."""
    for folder in sorted(folders | {os.path.dirname(d) for d in created}, key=len, reverse=True):
        while not os.path.isdir(folder):  # git removes the directories a deletion empties
            folder = os.path.dirname(folder)
        fsync_dir(folder)


def _temp(objects_dir: str, prefix: str) -> tuple[int, str]:
    # git's own temporaries are objects/tmp_*; `git prune` sweeps stale ones.
    return tempfile.mkstemp(prefix=prefix, dir=objects_dir)


class Spooled(NamedTuple):
    """A body copied to a temporary file (at its start): its size, its sha256 (hex), and the
    file's path if it was asked for by name (the caller removes it), else None (unlinked)."""

    file: BinaryIO
    size: int
    sha256: str
    path: str | None


def spool(objects_dir: str, body: Reader, named: bool = False) -> Spooled:
    """Copy a body of unknown length to a temporary file, hashing it (sha256) on the way."""
    fd, path = _temp(objects_dir, "tmp_spool_")
    if not named:
        os.unlink(path)
    spooled = os.fdopen(fd, "w+b")
    sha256 = hashlib.sha256()
    try:
        with _Stages() as stages:
            size = stages.run(body, None, lambda view, final: [
                stages.hash.submit(sha256.update, view), stages.out.submit(_write_all, fd, [view])])
        spooled.seek(0)
    except BaseException:
        spooled.close()
        if named:
            _unlink(path)
        raise
    return Spooled(spooled, size, sha256.hexdigest(), path if named else None)


def write_blob(objects_dir: str, body: Reader, size: int, check: Callable[[str], None] | None = None,
               fsync: bool = True, sha256: str | None = None) -> tuple[str, str]:
    """Store exactly ``size`` bytes read from ``body`` as a blob; return (oid, sha256 hex):
    ``prepare_blob`` then ``install`` (see there)."""
    prepared, sha256 = prepare_blob(objects_dir, body, size, check, fsync, sha256)
    install(objects_dir, [prepared], fsync)
    return prepared.oid, sha256


def prepare_blob(
    objects_dir: str,
    body: Reader,
    size: int,
    check: Callable[[str], None] | None = None,
    writeback: bool = True,
    sha256: str | None = None,
) -> tuple[Prepared, str]:
    """Write exactly ``size`` bytes read from ``body`` as a blob's temporary file, not yet synced
    nor visible (``install`` does both, side by side with other objects); return it and the
    body's sha256 (hex).

    ``sha256`` is the body's digest when it was computed already, as it was spooled: it
    is not computed again.  ``check(sha256_hex)`` may raise to refuse the content; nothing
    is left behind on any error.  A short body raises ``EOFError``.  ``writeback`` pushes the
    file to the disk as it is written (when it will be synced: the sync then has little left).
    """
    fd, tmp = _temp(objects_dir, "tmp_obj_")
    try:
        try:
            writer = _ObjectWriter(fd, size, sha256, writeback=writeback)
            oid, sha256 = writer.write(body)
            if check is not None:
                check(sha256)
        finally:
            os.close(fd)
        return Prepared(oid, tmp), sha256
    except BaseException:
        _unlink(tmp)
        raise


class _ObjectWriter:
    """Writes ``blob <size>\\0<body>`` to a file as one zlib stream, hashing it on the way.

    The stream: the zlib header, a stored block holding the object header, then the body
    as stored blocks built here (level 0) or, when its first MiB compresses, as level-1
    deflate segments compressed side by side (each starts from the previous one's last
    32 KiB as its dictionary and ends byte-aligned with a sync flush, as pigz does), then
    the adler32 of all the bytes.
    """

    def __init__(self, fd: int, size: int, sha256: str | None, writeback: bool):
        self.size = size
        header = b"blob %d\0" % size
        self.sha1 = hashlib.sha1(header)
        self.sha256 = sha256
        self.sha256_hash = hashlib.sha256() if sha256 is None else None
        self.sink = _Sink(fd, header, final=not size, writeback=writeback)
        self.level: int | None = None
        self.dictionary: bytes | None = None

    def write(self, body: Reader) -> tuple[str, str]:
        """Read the body and write it; return (sha1, sha256) in hex."""
        with _Stages(deflate=True) as self.stages:
            self.stages.run(body, self.size, self._buffer)
            if body.read(1):
                raise ValueError("body longer than its size")
        self.sink.close()
        sha256 = self.sha256 if self.sha256_hash is None else self.sha256_hash.hexdigest()
        return self.sha1.hexdigest(), sha256

    def _buffer(self, view: memoryview, final: bool) -> list[Future]:
        stages = self.stages
        if self.level is None:
            self.level = _level(view[:_PROBE])
        futures = [stages.hash.submit(self.sha1.update, view)]
        if self.sha256_hash is not None:
            futures.append(stages.hash2.submit(self.sha256_hash.update, view))
        if self.level:
            segment = stages.deflate.submit(_deflate, view, self.level, self.dictionary, final)
            self.dictionary = bytes(view[-_WINDOW:])
            # The segment too: an aborted write cancels or waits for it before its buffer is reused.
            futures += [segment, stages.out.submit(self.sink.deflated, view, segment)]
        else:
            futures.append(stages.out.submit(self.sink.stored, view, final))
        return futures


def _deflate(data: memoryview, level: int, dictionary: bytes | None, final: bool) -> list[bytes]:
    """One raw deflate segment of the stream: the last one final, the others byte-aligned.

    ISA-L's deflate (the same format, so git reads it) runs some 4x faster than zlib's at
    level 1 and compresses a little better: zlib's is what limits a compressible upload.
    """
    if dictionary is None:
        deflate = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    else:
        deflate = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=dictionary)
    return [deflate.compress(data), deflate.flush(isal_zlib.Z_FINISH if final else isal_zlib.Z_SYNC_FLUSH)]


def _stored_header(length: int, final: bool) -> bytes:
    """A stored deflate block's header (BFINAL, BTYPE 00, LEN, NLEN), written byte-aligned."""
    return struct.pack("<BHH", final, length, length ^ 0xFFFF)


class _Sink:
    """The object's file, written with writev; what is written is pushed on to the disk as
    it goes (the final fsync then has little left to do).  The stream's adler32 is ISA-L's,
    some 5x faster than zlib's."""

    def __init__(self, fd: int, header: bytes, final: bool, writeback: bool):
        self.fd = fd
        self.writeback = writeback
        self.adler = isal_zlib.adler32(header)
        self.written = self.pushed = 0
        self._write([_ZLIB_HEADER, _stored_header(len(header), final), header])

    def stored(self, data: memoryview, final: bool) -> None:
        self.adler = isal_zlib.adler32(data, self.adler)
        parts = []
        for start in range(0, len(data), _BLOCK):
            block = data[start:start + _BLOCK]
            parts += (_stored_header(len(block), final and start + _BLOCK >= len(data)), block)
        self._write(parts)

    def deflated(self, data: memoryview, segment: Future) -> None:
        self.adler = isal_zlib.adler32(data, self.adler)
        self._write(segment.result())

    def close(self) -> None:
        self._write([self.adler.to_bytes(4, "big")])

    def _write(self, parts: list) -> None:
        self.written += _write_all(self.fd, parts)
        if self.writeback and self.written - self.pushed >= _WRITEBACK:
            start_writeback(self.fd, self.pushed, self.written - self.pushed)
            self.pushed = self.written


def _write_all(fd: int, parts: list) -> int:
    """Write the parts (bytes, memoryviews) in order, all of them; return their length."""
    total = left = sum(map(len, parts))
    while left:
        n = os.writev(fd, parts)
        left -= n
        while parts and n >= len(parts[0]):  # a short write: drop what went out, write the rest
            n -= len(parts[0])
            parts = parts[1:]
        if n:
            parts = [memoryview(parts[0])[n:], *parts[1:]]
    return total


def _libc_sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to disk, without waiting (a hint: fsync still decides)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class _Inline:
    """An executor that runs each task at once, in the caller's thread."""

    @staticmethod
    def submit(function: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


class _Stages:
    """The stages of a write: each a worker thread running its tasks in order (hashlib, zlib
    and os.writev release the GIL on big buffers, so they run side by side and alongside the
    receiving), over a ring of buffers the body is read into.  A body that fits in one
    buffer is processed in the caller's thread.  The threads outlive the write (``_lanes``):
    starting five threads per upload cost milliseconds on a busy machine."""

    def __init__(self, deflate: bool = False):
        self.deflating = deflate
        self.hash = self.hash2 = self.out = self.deflate = _Inline
        self._lanes: list[ThreadPoolExecutor] = []
        self._ring: deque[tuple[bytearray, list[Future]]] = deque()  # buffers in use, oldest first
        self._buffers: list[bytearray] = []  # every buffer of the ring

    def run(self, body: Reader, size: int | None, process: Callable[[memoryview, bool], list[Future]]) -> int:
        """Read ``size`` bytes of the body (to its end if None) buffer by buffer, and for each
        call ``process(view, final)``: it submits the tasks on the buffer and returns their
        futures, which finish before the buffer is read into again.  Return the size read."""
        done = 0
        while size is None or done < size:
            want = _BUFFER if size is None else min(_BUFFER, size - done)
            view = memoryview(self._buffer(want))[:want]
            n = _fill(body, view)
            if size is not None and n < want:
                raise EOFError(f"body ended {size - done - n} bytes early")
            if not n:
                break
            done += n
            final = n < want if size is None else done == size
            if not final and not self._lanes:
                self._start()
            self._ring.append((view.obj, process(view[:n], final)))
            if final:
                break
        while self._ring:
            self._wait_oldest()
        return done

    def _buffer(self, size: int) -> bytearray:
        if len(self._ring) < _DEPTH:
            buffer = _lanes.buffer(size)
            self._buffers.append(buffer)
            return buffer
        return self._wait_oldest()

    def _wait_oldest(self) -> bytearray:
        buffer, futures = self._ring.popleft()
        for future in futures:
            future.result()
        return buffer

    def _start(self) -> None:
        self._lanes = _lanes.take(3)
        self.hash, self.hash2, self.out = self._lanes
        if self.deflating:
            self.deflate = _lanes.deflate()

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        # Tasks still running use the buffers and the file: they end before either goes (a lane
        # runs its tasks in order: once a last, empty one has run, the others have ended).
        for _, futures in self._ring:
            for future in futures:
                future.cancel()
        for barrier in [lane.submit(int) for lane in self._lanes]:
            barrier.result()
        for _, futures in self._ring:
            wait(futures)  # a deflate task (the shared pool) not cancelled in time
        self._ring.clear()
        _lanes.give(self._lanes, self._buffers)
        self._lanes, self._buffers = [], []


class _Lanes:
    """Threads and buffers kept for the writes: idle lanes (one thread each, running its tasks in
    order), one pool shared by every write's deflate tasks (as many threads as cores), and the
    buffers of one ring (a new one is zeroed page by page: a few ms on a busy machine).  Made
    again in a process forked from the one that made them (their threads did not follow)."""

    KEPT = 24  # idle lanes kept: 8 writes at once
    KEPT_BUFFERS = _DEPTH  # idle buffers kept: one write's (16 MiB)

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[ThreadPoolExecutor] = []
        self._deflate: ThreadPoolExecutor | None = None
        self._buffers: list[bytearray] = []

    def _forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._idle, self._deflate, self._buffers = os.getpid(), [], None, []

    def buffer(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes: a kept one if it is a whole buffer of the ring (its old bytes
        are read into before any is used)."""
        if size == _BUFFER:
            with self._lock:
                self._forked()
                if self._buffers:
                    return self._buffers.pop()
        return bytearray(size)

    def take(self, count: int) -> list[ThreadPoolExecutor]:
        with self._lock:
            self._forked()
            taken = [self._idle.pop() for _ in range(min(count, len(self._idle)))]
        return taken + [ThreadPoolExecutor(1, "wogit-lane") for _ in range(count - len(taken))]

    def give(self, lanes: list[ThreadPoolExecutor], buffers: list[bytearray]) -> None:
        with self._lock:
            self._forked()
            keep = max(0, min(len(lanes), self.KEPT - len(self._idle)))
            self._idle += lanes[:keep]
            whole = [buffer for buffer in buffers if len(buffer) == _BUFFER]
            self._buffers += whole[:max(0, self.KEPT_BUFFERS - len(self._buffers))]
        for lane in lanes[keep:]:
            lane.shutdown(wait=False)

    def deflate(self) -> ThreadPoolExecutor:
        with self._lock:
            self._forked()
            if self._deflate is None:
                self._deflate = ThreadPoolExecutor(max(1, min(_DEPTH, os.cpu_count() or 1)), "wogit-deflate")
            return self._deflate


_lanes = _Lanes()


def _fill(body: Reader, view: memoryview) -> int:
    """Read into ``view`` until it is full or the body ends; return the number of bytes read."""
    readinto = getattr(body, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = body.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return got


def _level(sample: memoryview) -> int:
    """``compression_level``'s choice, by ISA-L's level 1 (some 4x faster than zlib's: the probe
    runs before the first buffer goes down the pipeline)."""
    if not sample:
        return 1
    return 1 if len(isal_zlib.compress(sample, 1, -15)) < 0.9 * len(sample) else 0


def compression_level(sample: bytes) -> int:
    """zlib level 1 if ``sample`` compresses to under 90% at level 1, else 0 (stored)."""
    if not sample:
        return 1
    return 1 if len(zlib.compress(sample, 1)) < 0.9 * len(sample) else 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- small objects: trees, commits, metadata values -------------------------------------------

TREE_MODE = 0o40000


@dataclass(frozen=True)
class Prepared:
    """An object ready to be installed: its id, and its temporary file (None if it is stored)."""
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


def touch(objects_dir: str, oid: str) -> bool:
    """Make a loose object look new to ``git prune`` (which removes only loose objects older than
    its expiry, checking each one's time as it removes it); False if it has no loose file."""
    try:
        os.utime(os.path.join(objects_dir, oid[:2], oid[2:]))
    except FileNotFoundError:
        return False
    except PermissionError:
        pass  # another user's file: a git prune run as we are could not remove it either
    return True


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
        inflate = zlib.decompressobj()  # not ISA-L's: with a max_length it can lose output (a small map came back cut)
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


#: compressed bytes inflated at a time: a compressible map's yield about a MiB, and what does not
#: fit (``unconsumed_tail``, copied each time) stays small
_INFLATE_IN = 1 << 18


def _inflate(loose: BinaryIO, inflate, first: bytes) -> Iterator[bytes]:
    with loose:
        if first:
            yield first
        while True:
            if inflate.unconsumed_tail:
                data = inflate.unconsumed_tail
            else:
                data = loose.read(_INFLATE_IN)
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


# -- loose blobs of stored blocks: their bytes lie in the file as they are ------

class NotStored(Exception):
    """A loose object whose zlib stream is not stored blocks only, exactly as read here."""


class StoredBlob:
    """A loose blob whose zlib stream is nothing but stored (level 0) deflate blocks.

    Such a file is ``78 01`` (the zlib header), then blocks of a 5-byte header (final
    flag, ``LEN``, ``NLEN``) and ``LEN`` bytes of the object as they are, then the adler32.
    ``open_stored`` walks every block header before anything is served: each must be a
    stored block (``NLEN`` the complement of ``LEN``), the last one final and followed by
    exactly the 4 bytes of the adler32, the object a blob whose header's size is what the
    blocks hold.  The adler32 itself is not recomputed (it would read every byte, which is
    what serving the spans avoids); ``wogit fsck`` re-hashes every map.
    """

    def __init__(self, fd: int, size: int, header: int):
        self.fd = fd
        self.size = size
        self.header = header  # bytes of "blob <size>\\0" before the blob's own

    def spans(self, first: int, length: int) -> Iterator[tuple[int, int]]:
        """(file offset, length) of the blob's bytes ``first`` to ``first + length``, in order;
        the blocks before them are skipped by their headers alone."""
        start, end = self.header + first, self.header + first + length
        at = 0  # offset in the object (header included) of the block's first byte
        for offset, size, _ in _stored_blocks(self.fd):
            lo, hi = max(start, at), min(end, at + size)
            if lo < hi:
                yield offset + lo - at, hi - lo
            at += size
            if at >= end:
                return


    def chunks(self) -> Iterator[memoryview]:
        """The blob's bytes in pieces of CHUNK (the last one: the rest), read into one buffer:
        each piece is valid until the next one is asked for."""
        buffer = memoryview(bytearray(min(CHUNK, self.size) or 1))
        fill = 0
        for offset, n in self.spans(0, self.size):
            while n:
                got = os.preadv(self.fd, [buffer[fill:fill + min(n, len(buffer) - fill)]], offset)
                if not got:
                    raise EOFError(f"a loose object ended {n} bytes before its block")
                fill, offset, n = fill + got, offset + got, n - got
                if fill == len(buffer):
                    yield buffer
                    fill = 0
        if fill:
            yield buffer[:fill]


def open_stored(git_dir: str, oid: str) -> StoredBlob | None:
    """The loose blob ``oid`` if it is made of stored blocks only (its structure checked whole,
    see StoredBlob), open; None if it is packed, compressed, or not such a blob."""
    try:
        fd = os.open(os.path.join(git_dir, "objects", oid[:2], oid[2:]), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        known = (oid, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)  # objects never change
        checked = _CHECKED.get(known)
        if checked is None:
            checked = _check_stored(fd)
            with _CHECKED_LOCK:
                _CHECKED[known] = checked
                while len(_CHECKED) > 4096:
                    del _CHECKED[next(iter(_CHECKED))]
        return StoredBlob(fd, *checked)
    except NotStored:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


#: (oid, device, inode, size, mtime) -> (size, header) of loose objects found to be stored blocks
_CHECKED: dict[tuple, tuple[int, int]] = {}
_CHECKED_LOCK = threading.Lock()


def _check_stored(fd: int) -> tuple[int, int]:
    head = b""  # the object's first bytes, enough to hold "blob <size>\0"
    total = 0
    for offset, size, final in _stored_blocks(fd):
        if len(head) < 32 and b"\0" not in head:
            head += os.pread(fd, min(size, 32 - len(head)), offset)
        total += size
        if final and os.fstat(fd).st_size != offset + size + 4:
            raise NotStored("bytes after the final block other than the adler32")
    header, nul, _ = head.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if not nul or kind != b"blob" or not size.isdigit() or size != b"%d" % int(size):
        raise NotStored("not a blob's header")
    if total != len(header) + 1 + int(size):
        raise NotStored(f"the blocks hold {total} bytes, the header says {int(size)} and itself")
    return int(size), len(header) + 1


def _stored_blocks(fd: int) -> Iterator[tuple[int, int, bool]]:
    """(file offset of its data, its length, whether it is the final one) of each block."""
    if os.pread(fd, 2, 0) not in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"):
        raise NotStored("not a zlib header without a dictionary")
    at = 2
    while True:
        head = os.pread(fd, 5, at)
        if len(head) < 5 or head[0] not in (0, 1):
            raise NotStored(f"no stored block header at byte {at}")
        size = int.from_bytes(head[1:3], "little")
        if size ^ int.from_bytes(head[3:5], "little") != 0xFFFF:
            raise NotStored(f"LEN and NLEN disagree at byte {at}")
        yield at + 5, size, head[0] == 1
        if head[0] == 1:
            return
        at += 5 + size
