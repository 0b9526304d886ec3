#!/usr/bin/env python3
"""Generate a valid wogit registry of N tags quickly (for benchmarks/scale.py).

Creating a million tags through HTTP takes hours; this writes the same objects and refs
directly: one pack (``objects/pack/pack-<sha>.pack`` and its ``.idx``, written here: whole
objects, no deltas, in stored zlib blocks as wogit stores incompressible maps) and one sorted
``packed-refs`` (as ``git pack-refs`` leaves it), then ``wogit init`` gives the repository the
registry's settings and hooks.  The layout is docs/layout.md's:

* every tag ``refs/wo/<repository>/<map>/<tag>`` is a parentless commit whose tree is
  ``{config, map}`` and whose message names both digests;
* every map (one per tag) and config (one per map) is indexed by
  ``refs/wo/_maps/sha256/<hex>`` / ``refs/wo/_configs/sha256/<hex>`` at a tree holding
  just that blob;
* every map has a metadata history ``refs/wo/_metadata/<repository>/<map>`` of one commit
  (keys ``name``, ``region``, ``source``).

The tags: ``probe/hundred`` (100 tags) and ``probe/ten`` (10 tags) at every size, the rest
spread round-robin over up to 10,000 maps ``area-NN/map-NNNN`` in 100 repositories.
``wogit fsck`` and ``git fsck --strict`` accept the result (``--check``).

    python benchmarks/scale_registry.py DIR --tags 100000 [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

IDENTITY = b"wogit <wogit@localhost>"
BASE_TIME = 1_700_000_000
PROBES = (("probe", "hundred", 100), ("probe", "ten", 10))
REPOSITORIES = 100
MAPS = 10_000
COMMIT, TREE, BLOB = 1, 2, 3
_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob"}
_MODE = b"100644 "


@dataclass(frozen=True)
class MapPlan:
    repository: str
    map: str
    tags: int


def plan(tags: int, maps: int = MAPS) -> list[MapPlan]:
    """The maps of a registry of ``tags`` tags, in ref order (repository, map)."""
    fixed = sum(count for _, _, count in PROBES)
    if tags < fixed + 1:
        raise ValueError(f"a registry needs at least {fixed + 1} tags")
    filler = tags - fixed
    count = min(maps, filler)
    out = [MapPlan(f"area-{j % REPOSITORIES:02d}", f"map-{j:04d}", filler // count + (j < filler % count))
           for j in range(count)]
    out += [MapPlan(r, m, n) for r, m, n in PROBES]
    out.sort(key=lambda p: (p.repository, p.map))
    return out


def tag_name(k: int) -> str:
    return f"v{k:06d}"


class PackWriter:
    """A version-2 pack of whole (undeltified) objects and its version-2 index."""

    def __init__(self, pack_dir: str):
        self.pack_dir = pack_dir
        self.tmp = os.path.join(pack_dir, f"tmp_scale_{os.getpid()}.pack")
        self.file = open(self.tmp, "wb", buffering=1 << 20)
        self.file.write(b"PACK" + struct.pack(">II", 2, 0))  # the count is patched in close()
        self.offset = 12
        self.buckets = [bytearray() for _ in range(256)]  # 20-byte oid, crc32, 8-byte offset
        self.count = 0

    def add(self, kind: int, data: bytes) -> bytes:
        oid = hashlib.sha1(b"%s %d\0" % (_NAMES[kind], len(data)) + data).digest()
        size = len(data)
        byte, size = (kind << 4) | (size & 15), size >> 4
        head = bytearray()
        while size:
            head.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        head.append(byte)
        body = bytes(head) + _stored(data)
        self.buckets[oid[0]] += oid + struct.pack(">IQ", zlib.crc32(body), self.offset)
        self.file.write(body)
        self.offset += len(body)
        self.count += 1
        return oid

    def close(self) -> str:
        """Finish the pack and write its index; returns the pack's name (its checksum)."""
        self.file.seek(8)
        self.file.write(struct.pack(">I", self.count))
        self.file.close()
        digest = hashlib.sha1()
        with open(self.tmp, "rb") as pack:
            while chunk := pack.read(1 << 22):
                digest.update(chunk)
        checksum = digest.digest()
        with open(self.tmp, "ab") as pack:
            pack.write(checksum)
        oids, crcs, offsets, large = [], [], [], []
        fanout, total = [], 0
        for bucket in self.buckets:
            records = sorted(bytes(bucket[i:i + 32]) for i in range(0, len(bucket), 32))
            for record in records:
                oids.append(record[:20])
                crcs.append(record[20:24])
                offset = struct.unpack(">Q", record[24:])[0]
                if offset < 0x80000000:
                    offsets.append(struct.pack(">I", offset))
                else:
                    offsets.append(struct.pack(">I", 0x80000000 | len(large)))
                    large.append(struct.pack(">Q", offset))
            total += len(records)
            fanout.append(total)
        self.buckets = []
        index = hashlib.sha1()
        name = checksum.hex()
        idx_tmp = os.path.join(self.pack_dir, f"tmp_scale_{os.getpid()}.idx")
        with open(idx_tmp, "wb", buffering=1 << 20) as idx:
            for part in (b"\377tOc" + struct.pack(">I", 2), struct.pack(">256I", *fanout), b"".join(oids),
                         b"".join(crcs), b"".join(offsets), b"".join(large), checksum):
                idx.write(part)
                index.update(part)
            idx.write(index.digest())
        os.rename(self.tmp, os.path.join(self.pack_dir, f"pack-{name}.pack"))
        os.rename(idx_tmp, os.path.join(self.pack_dir, f"pack-{name}.idx"))
        return name


def _stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of one stored (uncompressed) deflate block: zlib.compress
    spends most of its time setting up its state for objects this small."""
    assert len(data) < 0x10000
    return b"\x78\x01\x01" + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data + \
        struct.pack(">I", zlib.adler32(data))


def _tree(*entries: tuple[str, bytes]) -> bytes:
    """A tree of regular files (``entries`` sorted by name)."""
    return b"".join(_MODE + name.encode() + b"\0" + oid for name, oid in entries)


def _commit(tree: bytes, when: int, message: str) -> bytes:
    stamp = b"%s %d +0000" % (IDENTITY, when)
    return b"tree %s\nauthor %s\ncommitter %s\n\n%s" % (tree.hex().encode(), stamp, stamp, message.encode())


def _map_bytes(repository: str, map: str, tag: str) -> bytes:
    line = f"wogit scale benchmark map {repository}/{map}/{tag}\n".encode()
    return line * (512 // len(line) + 1)  # about half a KiB, compresses like text


def _config_bytes(repository: str, map: str) -> bytes:
    return f"map:\n  name: {repository}/{map}\nrouting:\n  profile: driving\n".encode()


def generate(path: str, tags: int, maps: int = MAPS, python: str = sys.executable) -> dict:
    """Write a registry of ``tags`` tags at ``path`` (which must not exist); returns counts and seconds."""
    started = time.monotonic()
    subprocess.run(["git", "init", "-q", "--bare", path], check=True)
    pack = PackWriter(os.path.join(path, "objects", "pack"))
    refs: list[bytes] = []
    index_refs: list[bytes] = []
    values: dict[bytes, bytes] = {}
    when = BASE_TIME

    def value(data: bytes) -> bytes:
        if data not in values:
            values[data] = pack.add(BLOB, data)
        return values[data]

    for p in plan(tags, maps):
        config = _config_bytes(p.repository, p.map)
        config_blob = pack.add(BLOB, config)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        index_refs.append(b"%s refs/wo/_configs/sha256/%s\n" % (
            pack.add(TREE, _tree(("config", config_blob))).hex().encode(), config_digest[7:].encode()))
        for k in range(p.tags):
            tag = tag_name(k)
            data = _map_bytes(p.repository, p.map, tag)
            blob = pack.add(BLOB, data)
            digest = hashlib.sha256(data).hexdigest()
            index_refs.append(b"%s refs/wo/_maps/sha256/%s\n" % (
                pack.add(TREE, _tree(("map", blob))).hex().encode(), digest.encode()))
            tree = pack.add(TREE, _tree(("config", config_blob), ("map", blob)))
            message = (f"tag {p.repository}/{p.map}/{tag}\n\n"
                       f"map_digest: sha256:{digest}\nconfig_digest: {config_digest}\n")
            commit = pack.add(COMMIT, _commit(tree, when, message))
            refs.append(b"%s refs/wo/%s/%s/%s\n" % (commit.hex().encode(), p.repository.encode(),
                                                      p.map.encode(), tag.encode()))
            when += 1
        meta = {"name": f"{p.repository}/{p.map}", "region": p.repository, "source": "scale-benchmark"}
        tree = pack.add(TREE, _tree(*((key, value(v.encode())) for key, v in sorted(meta.items()))))
        message = "set name, region, source\n\n" + "".join(f"{k}={v}\n" for k, v in sorted(meta.items()))
        commit = pack.add(COMMIT, _commit(tree, when, message))
        refs.append(b"%s refs/wo/_metadata/%s/%s\n" % (commit.hex().encode(), p.repository.encode(),
                                                         p.map.encode()))
    objects = pack.count
    written = time.monotonic()
    pack.close()
    refs += index_refs
    refs.sort(key=lambda line: line[41:])
    with open(os.path.join(path, "packed-refs"), "wb", buffering=1 << 20) as out:
        out.write(b"# pack-refs with: peeled fully-peeled sorted \n")
        out.writelines(refs)
    count = len(refs)
    del refs, index_refs
    subprocess.run([python, "-m", "wogit", "init", "--data", path], check=True, stdout=subprocess.DEVNULL)
    return {"tags": tags, "maps": len(plan(tags, maps)), "refs": count, "objects": objects,
            "seconds": round(time.monotonic() - started, 2), "objects_seconds": round(written - started, 2)}


def check(path: str, python: str = sys.executable) -> list[str]:
    """What ``wogit fsck`` (the registry's own rules, and ``git fsck --strict``) finds wrong."""
    result = subprocess.run([python, "-m", "wogit", "fsck", "--data", path, "--json"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return [result.stdout.strip() or result.stderr.strip()]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--maps", type=int, default=MAPS)
    parser.add_argument("--check", action="store_true", help="run wogit fsck on the result")
    args = parser.parse_args()
    print(generate(args.path, args.tags, args.maps))
    if args.check:
        started = time.monotonic()
        problems = check(args.path)
        print(f"wogit fsck: {len(problems)} problems in {time.monotonic() - started:.1f} s", *problems[:20], sep="\n")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
