"""Refs read and moved one at a time, as git's files backend does, in time and memory that do
not grow with the number of refs the repository holds.

A ref ``<name>`` is the loose file ``<git_dir>/<name>`` holding ``<oid>\\n``, or, when there
is no such file, a line ``<oid> <name>`` of ``packed-refs`` (which ``git pack-refs`` and
``git gc`` write, maybe followed by a peeled line ``^<oid>``).  git writes ``packed-refs``
sorted and says so in its header (``# pack-refs with: peeled fully-peeled sorted``): one ref is
then a binary search in the file, read with ``pread`` (never mapped: the page cache holds the
file, not the process).  A file without that trait (an old git's) is read
whole, once for each version of it.

A ref is moved with git's protocol, so git, libgit2 and other wogit processes see each other's
changes and locks: ``<name>.lock`` is created exclusively, the current value is compared with
the expected one under that lock, the new value is written (and fsync'd), and the lock is
renamed onto ``<name>``.  A wogit writer also holds an ``flock`` on its lock file from just
after creating it until the file is renamed, and marks the file as one held so (its sticky
bit, which means nothing on a file and which git never sets; cleared just before the
rename): a marked lock whose ``flock`` is free was left by a writer that died (``kill -9``:
the kernel releases a dead process's flocks), and is broken at once (``break_stale_lock``);
any other lock (git's own, which take no flock) only once it is older than
``STALE_LOCK_SECONDS`` and no process has it open: git keeps ``packed-refs.lock`` open for as
long as it holds it (``git pack-refs`` at a million loose refs, for many seconds), and holds a
loose ref's lock for milliseconds.

libgit2's own ref writes parse all of ``packed-refs`` into every repository handle that writes
(one a thread) and scan it for each write: seconds and hundreds of MiB a thread at a million
refs, which is why wogit moves refs here.

Names are never built here: ``wogit.names`` owns them.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Iterator

from wogit import objects

ZERO = "0" * 40
PACKED = "packed-refs"
STALE_LOCK_SECONDS = 10.0  # a lock without a live owner we can see (git's): broken past this age
_HELD = stat.S_ISVTX  # the mark of a lock whose writer holds an flock on it (Refs.update)
log = logging.getLogger("wogit")
_HEADER = b"# pack-refs with:"
_OID = re.compile(r"[0-9a-f]{40}")
_PEELED = ord("^")


class RefError(Exception):
    """A ref file or packed-refs that git would not read either (a damaged repository)."""


class Locked(Exception):
    """Another writer holds the ref's lock."""


class Moved(Exception):
    """The ref is not at the value the change expected."""


class Packed:
    """One version of ``packed-refs`` (an open file: git replaces it by renaming a new one onto
    it, so this one stays as it was): its refs by name, found without reading it all.

    A sorted file is searched in two steps: a bisection over the first records after every
    ``SPAN`` bytes, each read (a block) when a search first needs it and kept (at most a few
    thousand names for a million refs), then one ``pread`` of the span between two of them,
    bisected in memory."""

    SPAN = 1 << 16

    def __init__(self, fd: int, stamp: tuple[int, int, int, int], start: int,
                 table: dict[str, str] | None = None):
        self.fd = fd
        self.stamp = stamp  # device, inode, size, mtime: another version, another stamp
        self.size = stamp[2]
        self.start = start  # where the records begin (after the header)
        self.table = table  # an unsorted file's refs, read whole
        weakref.finalize(self, os.close, fd)
        self.marks = max(0, self.size - start - 1) // self.SPAN  # mark j: the record after start + j * SPAN
        self._marks: dict[int, tuple[bytes | None, int]] = {}  # j -> its name (None: no record) and start

    def get(self, name: str) -> str | None:
        if self.table is not None:
            return self.table.get(name)
        key = name.encode()
        at, data, base = self._lower_bound(key)
        if at < base + len(data):
            eol = data.find(b"\n", at - base)
            oid, found = _parse(data[at - base:eol if eol >= 0 else len(data)])
        elif at < self.size:  # the first record of the next span
            oid, found, _ = _record(_Blocks(self.fd, self.size), at)
        else:
            return None
        return oid if found == key else None

    def names(self, prefix: str = "") -> Iterator[str]:
        """The names under ``prefix``, in git's order."""
        if self.table is not None:
            yield from sorted(name for name in self.table if name.startswith(prefix))
            return
        begin, end = self.span(prefix)
        for text in self.text(begin, end):
            for line in text.splitlines():
                if not line.startswith(b"^"):
                    yield _parse(line)[1].decode("utf-8", "surrogateescape")

    def children(self, prefix: str) -> Iterator[str]:
        """The distinct names right below ``prefix`` (which ends in '/'): read through when the
        refs under ``prefix`` are few, else one search for each, past all the refs below it."""
        if self.table is not None:
            yield from sorted({name[len(prefix):].split("/", 1)[0] for name in self.table if name.startswith(prefix)})
            return
        key = prefix.encode()
        at, end = self.span(prefix)
        if end - at <= 16 * self.SPAN:
            seen = set()
            for text in self.text(at, end):
                for line in text.splitlines():
                    child = line[41 + len(key):].partition(b"/")[0]  # the span's refs: all under prefix
                    if not line.startswith(b"^") and child not in seen:
                        seen.add(child)
                        yield child.decode("utf-8", "surrogateescape")
            return
        data = _Blocks(self.fd, self.size)
        while at < end:
            _, name, after = _record(data, at)
            child, slash, _ = name[len(key):].partition(b"/")
            yield child.decode("utf-8", "surrogateescape")
            # '0' follows '/': past every ref below prefix + child + '/' (a leaf: the next ref)
            at = self._lower_bound(key + child + b"0")[0] if slash else after

    def span(self, prefix: str) -> tuple[int, int]:
        """Where the records under ``prefix`` begin and end (equal when there are none)."""
        if self.table is not None:
            raise ValueError("an unsorted packed-refs has no spans")
        key = prefix.encode()
        return self._lower_bound(key)[0], self._lower_bound(key + b"\xff")[0]  # UTF-8 has no 0xff

    def text(self, begin: int, end: int, size: int = 1 << 20) -> Iterator[bytes]:
        """The records from ``begin`` to ``end`` (a span's), as pieces of whole lines."""
        while begin < end:
            piece = os.pread(self.fd, min(size, end - begin), begin)
            if begin + len(piece) < end:
                piece = piece[:piece.rfind(b"\n") + 1] or piece + _Blocks(self.fd, self.size).line_rest(begin + len(piece))
            yield piece
            begin += len(piece)

    def _lower_bound(self, key: bytes) -> tuple[int, bytes, int]:
        """Where the first record whose name is not before ``key`` starts (the file's size if
        none), and the span searched (its bytes and where they start)."""
        below, above = 0, self.marks + 1  # mark 0 is the start (before any key), marks + 1 the end
        while below + 1 < above:
            middle = (below + above) // 2
            name, _ = self._mark(middle)
            if name is not None and name < key:
                below = middle
            else:
                above = middle
        base = self._mark(below)[1] if below else self.start
        end = self._mark(above)[1] if above <= self.marks else self.size
        data = os.pread(self.fd, end - base, base)
        lo, hi = 0, len(data)  # whole records: marks are records' starts
        while lo < hi:
            rec = data.rfind(b"\n", lo, (lo + hi) // 2) + 1 or lo  # the record holding the middle
            if rec > lo and data[rec] == _PEELED:  # a peeled line belongs to the ref above it
                rec = data.rfind(b"\n", lo, rec - 1) + 1 or lo
            eol = data.find(b"\n", rec)
            eol = len(data) if eol < 0 else eol
            if data[rec + 41:eol] < key:
                lo = eol + 1
                if lo < len(data) and data[lo] == _PEELED:
                    lo = data.find(b"\n", lo) + 1 or len(data)
            else:
                hi = rec
        return base + min(lo, len(data)), data, base

    def _mark(self, j: int) -> tuple[bytes | None, int]:
        """Mark ``j``: the name (None: no record) and start of the first record after start + j * SPAN."""
        found = self._marks.get(j)
        if found is None:
            data = _Blocks(self.fd, self.size)
            at = _next_record(data, self.start + j * self.SPAN)
            found = self._marks[j] = (_record(data, at)[1], at) if at < self.size else (None, self.size)
        return found


class _Blocks:
    """Part of a file, read with ``pread`` a block at a time as it is asked for (never mapped:
    the page cache holds it, not the process)."""

    SIZE = 4096

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self.blocks: dict[int, bytes] = {}  # this reader's own

    def byte(self, at: int) -> bytes:
        return self._block(at // self.SIZE)[at % self.SIZE:at % self.SIZE + 1]

    def slice(self, begin: int, end: int) -> bytes:
        first, last = begin // self.SIZE, (end - 1) // self.SIZE
        joined = b"".join(self._block(n) for n in range(first, last + 1))
        return joined[begin - first * self.SIZE:end - first * self.SIZE]

    def find_newline(self, at: int) -> int:
        """The offset of the first newline at or after ``at``, or the file's size."""
        while at < self.size:
            n, offset = divmod(at, self.SIZE)
            found = self._block(n).find(b"\n", offset)
            if found >= 0:
                return n * self.SIZE + found
            at = (n + 1) * self.SIZE
        return self.size

    def line_rest(self, at: int) -> bytes:
        """The bytes from ``at`` to the end of its line, newline included."""
        return self.slice(at, min(self.find_newline(at) + 1, self.size))

    def _block(self, n: int) -> bytes:
        block = self.blocks.get(n)
        if block is None:
            block = self.blocks[n] = os.pread(self.fd, self.SIZE, n * self.SIZE)
        return block


def _next_record(data: _Blocks, at: int) -> int:
    """The start of the first record at or after offset ``at`` (the file's size if none)."""
    start = data.find_newline(at - 1) + 1 if data.byte(at - 1) != b"\n" else at
    if start < data.size and data.byte(start) == b"^":
        start = data.find_newline(start) + 1
    return min(start, data.size)


def _record(data: _Blocks, at: int) -> tuple[str, bytes, int]:
    """The oid and name of the record at ``at``, and where the next one starts."""
    eol = data.find_newline(at)
    oid, name = _parse(data.slice(at, eol))
    end = eol + 1
    if end < data.size and data.byte(end) == b"^":
        end = data.find_newline(end) + 1
    return oid, name, min(end, data.size)


def _parse(line: bytes) -> tuple[str, bytes]:
    """The oid and name of a line ``<oid> <name>``."""
    if len(line) < 42 or line[40:41] != b" " or _OID.fullmatch(line[:40].decode("latin-1")) is None:
        raise RefError(f"{PACKED}: unreadable line {line[:120]!r}")
    return line[:40].decode(), line[41:]


class Refs:
    """The refs of the repository at ``git_dir``; safe to share between threads."""

    def __init__(self, git_dir: str, fsync: bool = True):
        self.git_dir = git_dir
        self.fsync = fsync
        self._packed_path = os.path.join(git_dir, PACKED)
        self._packed: Packed | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        """The object ``name`` points at (its loose file first, then packed-refs), None if none."""
        loose = self.loose(name)
        if loose is not None:
            return loose
        packed = self.packed()
        return packed.get(name) if packed is not None else None

    def loose(self, name: str) -> str | None:
        """The object the loose file of ``name`` holds; None without one (a directory is none)."""
        try:  # os's calls, not open(): a ref is read on almost every request
            fd = os.open(os.path.join(self.git_dir, name), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            content = os.read(fd, 256)
        except IsADirectoryError:
            return None
        finally:
            os.close(fd)
        text = content.decode("latin-1").rstrip()
        if _OID.fullmatch(text) is None:
            raise RefError(f"{name}: not an object id: {content[:80]!r}")
        return text

    def packed(self) -> Packed | None:
        """The current version of ``packed-refs`` (None without one)."""
        try:
            st = os.stat(self._packed_path)
        except FileNotFoundError:
            return None
        current = self._packed
        if current is not None and current.stamp == _stamp(st):
            return current
        with self._lock:
            if self._packed is not None and self._packed.stamp == _stamp(st):
                return self._packed
            self._packed = _read_packed(self._packed_path)
            return self._packed

    def loose_names(self, prefix: str) -> Iterator[str]:
        """The names of the loose ref files under ``prefix`` (a directory: it ends in '/'), in no
        particular order; files being written (``*.lock``) are not refs."""
        top = os.path.join(self.git_dir, prefix)
        for folder, dirs, files in os.walk(top):
            relative = os.path.relpath(folder, self.git_dir).replace(os.sep, "/")
            for file in files:
                if not file.endswith(".lock"):
                    yield f"{relative}/{file}"

    def children(self, prefix: str) -> set[str]:
        """The names right below ``prefix`` (which ends in '/') that have a ref: a loose ref
        file at or under them, or a packed ref."""
        packed = self.packed()
        found = set(packed.children(prefix)) if packed is not None else set()
        try:
            entries = list(os.scandir(os.path.join(self.git_dir, prefix)))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if entry.name not in found and (entry.is_dir() and _holds_a_ref(entry.path) or
                                            entry.is_file() and not entry.name.endswith(".lock")):
                found.add(entry.name)
        return found

    def update(self, name: str, new: str, old: str) -> None:
        """Move ``name`` from ``old`` (ZERO: it must not exist) to ``new``, atomically and durably;
        ``Locked`` if another writer holds it, ``Moved`` if it is not at ``old``."""
        path = os.path.join(self.git_dir, name)
        lock = path + ".lock"
        created = objects.absent_dirs(os.path.dirname(path), self.git_dir) if self.fsync else []
        fd = _create_lock(lock)
        if fd is None:
            raise Locked(name)
        try:
            try:
                # Held until the lock is renamed or removed: a dead writer's lock is known by it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                marked = _chmod(fd, mode | _HELD)  # a file system that refuses: no mark, aged only
                current = self.get(name) or ZERO
                if current != old:
                    raise Moved(f"{name} is at {current}, not {old}")
                os.write(fd, f"{new}\n".encode())
                if self.fsync:
                    os.fsync(fd)
                if marked:
                    os.fchmod(fd, mode)  # the ref file as git would write it
                os.rename(lock, path)
            except BaseException:
                _unlink(lock)
                raise
        finally:
            os.close(fd)
        if self.fsync:
            objects.sync_new_entries({os.path.dirname(path)}, created)

    def break_stale_lock(self, name: str) -> bool:
        """Remove ``<name>.lock`` if no live writer holds it; whether it did.

        A lock marked as held with an ``flock`` (a wogit writer's) is stale as soon as the flock
        is free: its writer died.  Any other lock (git's, or a wogit writer's in the
        microseconds before it is marked) is stale once older than ``STALE_LOCK_SECONDS`` (or
        dated as far ahead: a clock set back) and open in no process.  One that is not a file (a
        directory, a FIFO) is never broken: the write answers 503 once its retries run out.
        The lock is moved aside first and removed only if it is still the same file, so a
        fresh lock taken meanwhile survives."""
        lock = os.path.join(self.git_dir, name + ".lock")
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block
        except (FileNotFoundError, NotADirectoryError):
            return False
        except PermissionError:  # another user's: whether its owner lives cannot be told
            log.warning("cannot read %s to tell whether its writer lives: left in place", lock)
            return False
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):  # no writer's: someone's mistake, for a person to mend
                log.warning("%s is not a file: left in place, the ref cannot be written", lock)
                return False
            age = time.time() - before.st_mtime
            if before.st_mode & _HELD:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # its writer is alive
                why = "its writer died"
            elif abs(age) >= STALE_LOCK_SECONDS and not _open_elsewhere(lock, before, fd):
                why = f"older than {STALE_LOCK_SECONDS:g} s and open in no process: left by a crashed writer"
            else:
                return False
            return _remove_if_same(self.git_dir, lock, before.st_ino, why)
        finally:
            os.close(fd)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_packed(path: str) -> Packed | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stamp = _stamp(os.fstat(fd))
        data = _Blocks(fd, stamp[2])
        start, ordered = 0, False
        while start < data.size and data.byte(start) == b"#":
            line = data.line_rest(start)
            if not line.endswith(b"\n"):
                raise RefError(f"{PACKED}: a header without an end of line")
            if line.startswith(_HEADER):
                ordered = b"sorted" in line[len(_HEADER):].split()
            start += len(line)
    except BaseException:
        os.close(fd)
        raise
    packed = Packed(fd, stamp, start)
    if ordered:
        return packed
    table = {}  # git's own fallback: read it all (and sort it) once
    for text in packed.text(start, packed.size):
        for line in text.splitlines():
            if not line.startswith(b"^"):
                oid, name = _parse(line)
                table[name.decode("utf-8", "surrogateescape")] = oid
    return Packed(os.dup(fd), stamp, start, table)


def _create_lock(lock: str) -> int | None:
    """Create ``lock`` exclusively (None: it exists), and its directory if need be: again if a
    ``git pack-refs`` removed the directory meanwhile, emptied of its refs (as git does)."""
    for attempt in range(10):
        last = attempt == 9
        try:
            os.makedirs(os.path.dirname(lock), exist_ok=True)
        except (FileExistsError, FileNotFoundError):  # a directory on the way came and went
            if last:
                raise
            continue
        try:
            return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return None
        except FileNotFoundError:
            if last:
                raise
    raise AssertionError("unreachable")


def _chmod(fd: int, mode: int) -> bool:
    try:
        os.fchmod(fd, mode)
    except OSError:
        return False
    return True


def _open_elsewhere(path: str, st: os.stat_result, own_fd: int) -> bool:
    """Whether a process other than this one's ``own_fd`` has the file ``st`` open, as far as
    ``/proc`` shows (processes of other users may be hidden: they count as not having it)."""
    me = str(os.getpid())
    try:
        processes = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return False  # no /proc: the age alone decides, as before
    for pid in processes:
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue
        for fd in fds:
            if pid == me and fd == str(own_fd):
                continue
            try:
                target = os.stat(f"{folder}/{fd}")
            except OSError:
                continue
            if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _remove_if_same(git_dir: str, lock: str, inode: int, why: str) -> bool:
    """Remove ``lock`` if it is still the file ``inode``: moved aside first, so that a lock
    another writer took meanwhile is put back, not removed."""
    aside = os.path.join(git_dir, f"wogit-stale-lock-{os.getpid()}-{threading.get_ident()}")
    try:
        if os.stat(lock).st_ino != inode:
            return False
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    same = os.stat(aside).st_ino == inode
    if same:
        log.warning("removed the stale lock %s (%s)", lock, why)
    else:
        try:
            os.link(aside, lock)  # a live writer's lock: put it back
        except FileExistsError:
            pass
    os.unlink(aside)
    return same


def _holds_a_ref(folder: str) -> bool:
    """Whether a loose ref file is in ``folder`` or below it (an emptied directory may stay)."""
    for _, _, files in os.walk(folder):
        if any(not file.endswith(".lock") for file in files):
            return True
    return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
