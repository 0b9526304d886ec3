"""A disposable cache of download bodies, so that repeated downloads are ``sendfile(2)`` of a file.

``<git-dir>/wogit-cache/<namespace>/<key>`` holds a body's bytes (a tag's tarball, a map
that git keeps compressed), then a footer of 48 bytes: a magic and version, the body's
length and the sha256 of ``<namespace>/<key>``.  A file is served only if its footer says
it is that entry and holds exactly its length: a truncated file, or one copied or renamed
into the cache by hand, is never served (and is removed).  Git ignores the directory (no
clone, fetch, gc or fsck looks at it); deleting it loses nothing.

A body is written while its first download streams (``writer``), to a temporary file that
is fsync'd and renamed into place in the background once complete, so a crash never
leaves a short entry and the download never waits for the disk.  A failed write (a full
disk) only abandons the entry.  The cache holds at most ``bound`` bytes, evicting the least
recently used entries (a hit refreshes the file's mtime); bodies under ``MIN_SIZE`` are
cheap to build and are not cached; ``bound`` 0 disables it.  It never fills the file
system beyond ``RESERVE`` of its size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time

from wogit import objects

DIRECTORY = "wogit-cache"  # in the git directory
DEFAULT_BOUND = 10 << 30
MIN_SIZE = 1 << 20
RESERVE = 0.05  # of the file system kept free
TOUCH_SECONDS = 60.0  # a hit refreshes an entry's mtime at most this often
STALE_SECONDS = 3600.0  # a temporary file this old was left by a stopped server
WRITEBACK = 8 << 20  # bytes written between two pushes to the disk
_MAGIC = b"wogitc1\n"
FOOTER = len(_MAGIC) + 8 + 32
_PARTIAL = "partial-"
log = logging.getLogger("wogit")


class Cache:
    def __init__(self, directory: str, bound: int):
        self.directory = directory
        self.bound = bound
        self._lock = threading.Lock()
        self._writing: set[str] = set()  # entries this process is writing

    def _path(self, namespace: str, key: str) -> str:
        return os.path.join(self.directory, namespace, key)

    def lookup(self, namespace: str, key: str) -> tuple[int, int] | None:
        """An open file descriptor of the entry and its body's length (the bytes from offset 0),
        or None.  The caller closes the descriptor."""
        if self.bound <= 0:
            return None
        path = self._path(namespace, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            length = info.st_size - FOOTER
            if length < 0 or os.pread(fd, FOOTER, length) != _footer(namespace, key, length):
                _remove_if_same(path, info)
                os.close(fd)
                return None
            if time.time() - info.st_mtime > TOUCH_SECONDS:
                os.utime(fd)
        except OSError:
            os.close(fd)
            return None
        return fd, length

    def writer(self, namespace: str, key: str, estimate: int) -> Writer | None:
        """A writer for the entry, for a body of about ``estimate`` bytes at most; None if it is
        not worth caching, does not fit, or this process is writing it already."""
        if self.bound <= 0 or estimate < MIN_SIZE or estimate > self.bound:
            return None
        name = f"{namespace}/{key}"
        with self._lock:
            if name in self._writing:
                return None
            self._writing.add(name)
        try:
            os.makedirs(os.path.join(self.directory, namespace), exist_ok=True)
            disk = os.statvfs(self.directory)
            if (disk.f_bavail - disk.f_blocks * RESERVE) * disk.f_frsize < estimate:
                raise OSError("the file system is nearly full")
            path = self._path(namespace, f"{_PARTIAL}{key}-{secrets.token_hex(4)}")
            return Writer(self, namespace, key, path, open(path, "xb"))
        except OSError as exc:
            log.info("not caching %s: %s", name, exc)
            self._done(namespace, key)
            return None

    def _done(self, namespace: str, key: str) -> None:
        with self._lock:
            self._writing.discard(f"{namespace}/{key}")

    def seal(self, writer: Writer) -> None:
        """Finish the entry in the background: the download that wrote it need not wait for the disk
        (a server stopped meanwhile leaves a temporary file, removed once stale)."""
        threading.Thread(target=self._seal, args=(writer,), name="wogit-cache-seal", daemon=True).start()

    def _seal(self, writer: Writer) -> None:
        try:
            writer.file.write(_footer(writer.namespace, writer.key, writer.length))
            writer.file.flush()
            os.fsync(writer.file.fileno())
            writer.file.close()
            os.replace(writer.path, self._path(writer.namespace, writer.key))
            self.evict()
        except OSError as exc:
            log.info("not caching %s/%s: %s", writer.namespace, writer.key, exc)
            writer.discard()
        finally:
            self._done(writer.namespace, writer.key)

    def evict(self) -> None:
        """Remove the least recently used entries beyond the bound, and stale temporary files."""
        entries, total, now = [], 0, time.time()
        try:
            namespaces = os.listdir(self.directory)
        except OSError:
            return
        for namespace in namespaces:
            try:
                with os.scandir(os.path.join(self.directory, namespace)) as found:
                    for entry in found:
                        info = entry.stat(follow_symlinks=False)
                        if entry.name.startswith(_PARTIAL):
                            if now - info.st_mtime > STALE_SECONDS:
                                _remove(entry.path)
                            continue
                        entries.append((info.st_mtime, info.st_size, entry.path))
                        total += info.st_size
            except OSError:
                continue
        for _, size, path in sorted(entries):
            if total <= self.bound:
                break
            _remove(path)
            total -= size


class Writer:
    """A body being written into the cache as it streams; ``finish`` once it is whole.  What is
    written is pushed on to the disk as it goes, so that sealing has little left to wait for."""

    def __init__(self, cache: Cache, namespace: str, key: str, path: str, file):
        self.cache, self.namespace, self.key, self.path, self.file = cache, namespace, key, path, file
        self.length = self.pushed = 0
        self.failed = False

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        self.length += len(data)
        try:
            if self.length > self.cache.bound:
                raise OSError("larger than the cache")
            self.file.write(data)
            if self.length - self.pushed >= WRITEBACK:
                self.file.flush()
                objects.start_writeback(self.file.fileno(), self.pushed, self.length - self.pushed)
                self.pushed = self.length
        except OSError as exc:  # a full disk fails the cache, never the download
            log.info("not caching %s/%s: %s", self.namespace, self.key, exc)
            self.abandon()

    def finish(self) -> None:
        if not self.failed:
            self.cache.seal(self)

    def abandon(self) -> None:
        if not self.failed:
            self.discard()
            self.cache._done(self.namespace, self.key)

    def discard(self) -> None:
        self.failed = True
        try:
            self.file.close()
        except OSError:
            pass
        _remove(self.path)


def _footer(namespace: str, key: str, length: int) -> bytes:
    return _MAGIC + length.to_bytes(8, "little") + hashlib.sha256(f"{namespace}/{key}".encode()).digest()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_if_same(path: str, info: os.stat_result) -> None:
    """Remove a bad entry, unless a good one has just been renamed over it."""
    try:
        if os.stat(path).st_ino == info.st_ino:
            os.unlink(path)
    except OSError:
        pass


class Recent:
    """Small values (under ``MIN_SIZE`` bytes: a small map's tarball, what a commit says) kept in
    memory, at most ``bound`` bytes, least recently used dropped first; ``bound`` 0 keeps none.
    Building one costs far more than the request around it, and a file each would be millions
    of small files."""

    def __init__(self, bound: int):
        self.bound = bound
        self.size = 0
        self._entries: dict[str, tuple[object, int]] = {}  # in order of use, the most recent last
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            self._entries[key] = entry
            return entry[0]

    def put(self, key: str, data, size: int | None = None) -> None:
        """Keep ``data``: bytes, or anything else of about ``size`` bytes (never changed after)."""
        size = len(data) if size is None else size
        if size >= MIN_SIZE or size > self.bound:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (data, size)
            self.size += size
            while self.size > self.bound:
                self.size -= self._entries.pop(next(iter(self._entries)))[1]
