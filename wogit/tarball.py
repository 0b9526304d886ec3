"""A reproducible gzipped tarball, streamed.

The same members, sizes, bytes and mtime always give the same archive bytes:
members in the given order, mode 0644, owner 0:0 with empty owner names, the
given mtime, POSIX (pax) headers only where a size needs them, and a gzip header
with no name, mtime 0 and OS "unknown".  Compression is deflate level 1, or level
0 (stored) when the first member's first MiB barely compresses: maps that are
already compressed are not squeezed again.
"""

from __future__ import annotations

import functools
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from wogit.objects import compression_level

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
PIECE = 1 << 20  # what zlib is fed at a time
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


def tar_gz(members: list[Member], mtime: int, sample: bytes) -> Iterator[bytes]:
    """The gzipped tar; ``sample`` (the first MiB of the map) chooses the level."""
    return gzip(tar(members, mtime), compression_level(sample))
