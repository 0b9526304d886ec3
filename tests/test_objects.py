"""Map uploads as git loose objects (wogit/objects.py): exact bytes, git's names, the zlib
stream's form (stored blocks or level-1 deflate), and nothing left behind on failure."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import zlib

import pytest
import requests
from conftest import Server, fsck, git_blob_id, index_tree_id, raw_request, refs, sha256, status_of, json_body_of

BLOCK = 0xFFFF
MiB = 1 << 20
# Around the edges of a stored block and of the first MiB (the compression probe); past one
# pipeline buffer (~4 MiB) and past the four buffers in flight (so buffers are reused).
SIZES = [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7, MiB - 1, MiB, MiB + 1, 4 * MiB + 1, 21 * MiB + 12345]


def random_bytes(size: int, seed: str = "") -> bytes:
    return random.Random(f"{size} {seed}").randbytes(size)


def text_bytes(size: int, seed: str = "") -> bytes:
    """OSM-XML-like lines: compresses about 4:1 at zlib level 1."""
    rng = random.Random(f"{size} {seed}")
    lines, total = [], 0
    while total < size:
        line = (f'  <node id="{rng.randrange(10**9)}" lat="{60 + rng.random():.7f}" lon="{24 + rng.random():.7f}">\n'
                f'    <tag k="highway" v="{rng.choice(["residential", "primary", "footway"])}"/>\n  </node>\n')
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


KINDS = {"incompressible": random_bytes, "compressible": text_bytes}


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    """Two registries: the same bytes are a new upload to each (tiny maps repeat)."""
    servers = {framing: Server(tmp_path_factory.mktemp("objects") / f"{framing}.git").start()
               for framing in ("length", "chunked")}
    yield servers
    for srv in servers.values():
        srv.stop()
        assert "Traceback" not in srv.log_text(), srv.log_text()


@pytest.fixture
def registry(registries):
    return registries["length"]


def chunks(data: bytes, size: int = 7919):
    """The body in odd-sized pieces: requests sends them as chunks."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def put(srv: Server, data, headers: dict | None = None) -> requests.Response:
    return requests.put(srv.url + "/blobs/upload", data=data, headers=headers or {})


def loose_object(srv: Server, oid: str) -> bytes:
    return (srv.data / "objects" / oid[:2] / oid[2:]).read_bytes()


def git_bytes(srv: Server, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(srv.data), *args], input=stdin, capture_output=True,
                          check=True).stdout


def leftovers(srv: Server) -> list[str]:
    """Temporary files in the repository's objects directory."""
    return sorted(name for name in os.listdir(srv.data / "objects") if name.startswith("tmp"))


def stored_blocks(raw: bytes) -> tuple[list[tuple[bool, int]], int]:
    """The stored blocks at the start of a zlib stream, as (final, length), and the offset of
    what follows them (a block of another type, or the adler32 after the final block)."""
    assert raw[:2] == b"\x78\x01"
    blocks, at = [], 2
    while raw[at] & 0b110 == 0:  # BTYPE 00: stored; a byte-aligned header
        final = bool(raw[at] & 1)
        length, inverse = struct.unpack_from("<HH", raw, at + 1)
        assert length ^ inverse == 0xFFFF
        blocks.append((final, length))
        at += 5 + length
        if final:
            break
    return blocks, at


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("size", SIZES)
def test_upload_is_the_exact_blob_in_the_right_form(registries, size, kind, framing):
    registry = registries[framing]
    data = KINDS[kind](size)
    reply = put(registry, data if framing == "length" else chunks(data))
    assert reply.status_code == 201, reply.text
    assert reply.json() == {"digest": sha256(data)}
    assert reply.headers["Wo-Map-Digest"] == sha256(data)
    oid = git_blob_id(data)
    assert refs(registry.data)["refs/wo/_maps/sha256/" + sha256(data)[7:]] == index_tree_id("map", data)
    assert git_bytes(registry, "hash-object", "--stdin", stdin=data).decode().strip() == oid
    assert git_bytes(registry, "cat-file", "-p", oid) == data
    assert git_bytes(registry, "cat-file", "blob", f"refs/wo/_maps/sha256/{sha256(data)[7:]}:map") == data

    raw = loose_object(registry, oid)
    header = b"blob %d\0" % size
    assert zlib.decompress(raw) == header + data
    assert raw[-4:] == struct.pack(">I", zlib.adler32(header + data))
    blocks, end = stored_blocks(raw)
    assert blocks[0] == (False, len(header)), "the object header is a stored block of its own"
    if kind == "compressible" and size >= BLOCK - 1:
        # Level 1: a deflate block follows the header, and the object is far smaller than the map.
        assert len(blocks) == 1 and raw[end] & 0b110 != 0
        assert len(raw) < size / 2
    else:
        # Level 0: stored blocks of at most 65535 bytes hold the map, the last one final; no waste.
        assert [final for final, _ in blocks] == [False] * (len(blocks) - 1) + [True]
        assert all(length <= BLOCK for _, length in blocks)
        assert sum(length for _, length in blocks[1:]) == size
        assert end == len(raw) - 4
        assert len(raw) == 2 + 5 * len(blocks) + len(header) + size + 4
    assert leftovers(registry) == []
    assert requests.get(f"{registry.url}/blobs/{sha256(data)}").content == data


def test_repositories_are_fsck_clean_after_the_uploads(registries):
    for registry in registries.values():
        fsck(registry.data)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_short_body_with_length_leaves_nothing(registry, kind):
    data = KINDS[kind](9 * MiB + 5, "short")
    before = refs(registry.data)
    head = (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (20 * MiB))
    answer = raw_request(registry.url, head + data, read_timeout=30, shutdown_write=True)
    assert status_of(answer) == 400
    assert json_body_of(answer) == {"msg": f"the map ended after {len(data)} of {20 * MiB} bytes"}
    assert refs(registry.data) == before
    assert leftovers(registry) == []
    assert not (registry.data / "objects" / git_blob_id(data)[:2] / git_blob_id(data)[2:]).exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chunked_body_cut_inside_a_chunk_leaves_nothing(registry, kind):
    data = KINDS[kind](9 * MiB + 5)
    before = refs(registry.data)
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in chunks(data, MiB))
    head = b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_request(registry.url, head + body + b"%x\r\n" % MiB + data[:1000], read_timeout=30,
                         shutdown_write=True)
    assert status_of(answer) == 400
    assert json_body_of(answer)["msg"].startswith("the map could not be read to its end")
    assert refs(registry.data) == before
    assert leftovers(registry) == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_wrong_announced_digest_leaves_nothing(registry, kind, framing):
    data = KINDS[kind](6 * MiB + 3, framing)
    wrong = sha256(data + b"!")
    before = refs(registry.data)
    reply = put(registry, data if framing == "length" else chunks(data, 65536), {"Wo-Map-Digest": wrong})
    assert reply.status_code == 400
    assert reply.json() == {"msg": f"the map has digest {sha256(data)}, not the announced {wrong}"}
    assert refs(registry.data) == before
    assert leftovers(registry) == []
    assert not (registry.data / "objects" / git_blob_id(data)[:2] / git_blob_id(data)[2:]).exists()
    fsck(registry.data)


@pytest.mark.parametrize("size", [1, 54, 100, 1000, 70_000, 3 * (1 << 20) + 5])
@pytest.mark.parametrize("kind", ["random", "text", "repeated"])
def test_a_blob_written_reads_back_whole(tmp_path, size, kind):
    """What wogit writes, its own streaming reader gives back exactly (a small compressible map
    once came back cut short, its tail left in the inflater)."""
    from wogit import objects
    import io
    if kind == "repeated":  # compresses to a few dozen bytes: the whole object in one read
        data = (b"small map " * (size // 10 + 1))[:size]
    else:
        data = (random_bytes if kind == "random" else text_bytes)(size, f"read-{size}")
    git_dir = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    oid, _ = objects.write_blob(str(git_dir / "objects"), io.BytesIO(data), size)
    assert oid == git_blob_id(data)
    length, stream = objects.read_blob(str(git_dir), oid)
    assert length == size and b"".join(stream) == data
