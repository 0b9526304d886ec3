"""A reproducible gzipped tarball, streamed.

The same members, sizes, bytes and mtime always give the same archive bytes:
members in the given order, mode 0644, owner 0:0 with empty owner names, the
given mtime, POSIX (pax) headers only where a size needs them, and a gzip header
with no name, mtime 0 and OS "unknown".  Compression is deflate level 1, or, when
the first member's first MiB barely compresses (maps that are already compressed
are not squeezed again), stored: the tar stream cut into deflate stored blocks of
exactly 65535 bytes (the last one shorter and final), written here and not by zlib,
so their bytes and the archive's length (``length``) are known before it is made.
``FORMAT`` names this definition: change it whenever the bytes for the same input
change.
"""

from __future__ import annotations

import functools
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
PIECE = 1 << 20  # what zlib is fed at a time
STORED = 0xFFFF  # bytes of the tar stream in each stored block (the last one: the rest)
FORMAT = 2  # 2: stored blocks of 65535 bytes written here (1: zlib level 0)
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
    """Deflate ``chunks`` into a gzip member with a fixed header.

    zlib's output depends on how its input is cut (stored blocks end where an
    input ends), so the input is re-cut into fixed pieces first: the bytes then
    depend only on the content, not on whether the map was read loose or packed.
    """
    yield _GZIP_HEADER
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = 0
    size = 0
    for chunk in rechunk(chunks, PIECE):
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        out = deflate.compress(chunk)
        if out:
            yield out
    yield deflate.flush() + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")


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
