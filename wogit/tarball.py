"""A reproducible gzipped tarball, streamed.

The same members, sizes, bytes and mtime always give the same archive bytes:
members in the given order, mode 0644, owner 0:0 with empty owner names, the
given mtime, POSIX (pax) headers only where a size needs them, and a gzip header
with no name, mtime 0 and OS "unknown".  Compression is zlib's deflate level 1, in
segments of a MiB compressed side by side (``gzip``), or, when the first member's
first MiB barely compresses (maps that are already compressed are not squeezed
again), stored: the tar stream cut into deflate stored blocks of exactly 65535
bytes (the last one: the rest, and final), written here and not by zlib, so their
bytes and the archive's length (``length``) are known before it is made.
``FORMAT`` names this definition: change it whenever the bytes for the same input
change.
"""

from __future__ import annotations

import functools
import os
import tarfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
PIECE = 1 << 20  # the input of one level-1 segment
STORED = 0xFFFF  # bytes of the tar stream in each stored block (the last one: the rest)
FORMAT = 2  # 2: stored blocks of 65535 bytes written here, level 1 in segments (1: zlib level 0 or 1, whole)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass
class Member:
    name: str
    size: int
    chunks: Iterable[bytes]


@functools.lru_cache(maxsize=4096)  # the same tag's members, again and again: built once
def header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_length(members: Iterable[Member], mtime: int) -> int:
    """The length of the uncompressed tar stream."""
    total = sum(len(header(m.name, m.size, mtime)) + m.size + -m.size % BLOCK for m in members)
    return total + 2 * BLOCK + -(total + 2 * BLOCK) % RECORD


def tar(members: Iterable[Member], mtime: int) -> Iterator[bytes]:
    """The uncompressed tar stream."""
    total = 0
    for member in members:
        head = header(member.name, member.size, mtime)
        yield head
        written = 0
        for chunk in member.chunks:
            written += len(chunk)
            if written > member.size:
                raise ValueError(f"member {member.name} is longer than {member.size} bytes")
            yield chunk
        if written != member.size:
            raise ValueError(f"member {member.name} is {written} bytes, not {member.size}")
        pad = -member.size % BLOCK
        yield b"\0" * pad
        total += len(head) + member.size + pad
    end = 2 * BLOCK
    end += -(total + end) % RECORD
    yield b"\0" * end


def gzip_stored(chunks: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    """The ``size`` bytes of ``chunks`` as a gzip member of stored blocks of exactly STORED bytes
    (the last one: the rest, and final).  The pieces are framed in one buffer of about a MiB,
    reused: each piece is valid until the next one is asked for."""
    if size <= 0:
        raise ValueError("a stored gzip member needs at least one byte")
    yield _GZIP_HEADER
    out = memoryview(bytearray(16 * (STORED + 5)))
    crc = fill = taken = left = 0  # left: bytes still to come in the current block
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
        data = memoryview(chunk)
        at = 0
        while at < len(data):
            if not left:
                if len(out) - fill < 6:
                    yield out[:fill]
                    fill = 0
                left = min(STORED, size - taken)
                if left <= 0:
                    raise ValueError(f"the tar stream is longer than {size} bytes")
                out[fill:fill + 5] = _stored_header(left, taken + left == size)
                fill += 5
            take = min(len(data) - at, left, len(out) - fill)
            out[fill:fill + take] = data[at:at + take]
            fill, at, taken, left = fill + take, at + take, taken + take, left - take
            if fill == len(out):
                yield out
                fill = 0
    if taken != size:
        raise ValueError(f"the tar stream is {taken} bytes, not {size}")
    yield bytes(out[:fill]) + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")


def _stored_header(size: int, final: bool) -> bytes:
    return bytes([final]) + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little")


def gzip_stored_length(size: int) -> int:
    """The length of ``gzip_stored`` of ``size`` bytes."""
    return len(_GZIP_HEADER) + size + 5 * -(-size // STORED) + 8


def gzip(chunks: Iterable[bytes], level: int) -> Iterator[bytes]:
    """Deflate ``chunks`` into a gzip member with a fixed header, in segments compressed side by side.

    The input is cut into segments of exactly PIECE bytes (the last one: the rest), so that the
    bytes depend only on the content, not on how the map was read (loose or packed).  Each
    segment is deflated by zlib on its own, with the previous segment's last 32 KiB as its
    dictionary, and ends byte-aligned with a sync flush (the last one: final), as pigz does:
    the segments compress on every core at once, and the output is the same however they
    were scheduled.
    """
    yield _GZIP_HEADER
    crc = size = 0
    dictionary = b""
    pending: deque[Future] = deque()
    pieces = rechunk(chunks, PIECE)
    piece = next(pieces, None)
    while piece is not None:
        following = next(pieces, None)
        piece = bytes(piece)  # the pool reads it after the source may have reused its buffer
        crc = zlib.crc32(piece, crc)
        size += len(piece)
        pending.append(_POOL.submit(_segment, piece, level, dictionary, following is None))
        dictionary = piece[-_WINDOW:]
        while len(pending) > _DEPTH or (pending and pending[0].done()):
            yield pending.popleft().result()
        piece = following
    while pending:
        yield pending.popleft().result()
    yield crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")


def _segment(data: bytes, level: int, dictionary: bytes, final: bool) -> bytes:
    if dictionary:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=dictionary)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


#: zlib releases the GIL while it deflates: one thread a core, shared by every tarball made at once
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="wogit-deflate")
_DEPTH = 2 * (os.cpu_count() or 1)  # segments in flight for one tarball
_WINDOW = 1 << 15  # deflate's window: what a segment takes from the one before


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in pieces of exactly ``size`` (the last one shorter)."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == size:
            yield chunk
            continue
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def tar_gz(members: list[Member], mtime: int, level: int) -> Iterator[bytes | memoryview]:
    """The gzipped tar: stored blocks for level 0 (``compression_level`` of the map's first
    MiB), deflate level 1 otherwise.  A piece is valid until the next one is asked for, and
    so may be a member's chunk: those may be buffers their source reuses too."""
    if level == 0:
        return gzip_stored(tar(members, mtime), tar_length(members, mtime))
    return gzip(tar(members, mtime), 1)


def length(members: list[Member], mtime: int, level: int) -> int | None:
    """The length of ``tar_gz``, if it is known before compressing (level 0, stored blocks)."""
    return gzip_stored_length(tar_length(members, mtime)) if level == 0 else None
