"""Downloads near the machine's limit, and still exact: sendfile of file spans, stored-block maps
served from their loose objects, the disposable download cache (wogit-cache/), stored tarballs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import tarfile
import threading
import time
import wsgiref.simple_server
import zlib
from pathlib import Path

import pytest
import requests

from conftest import fsck, git, git_blob_id, sha256
from test_access_control import AnyServer, needs_openssl, self_signed
from test_ops import samples, scrape

from wogit import cache, tarball
from wogit.api import create_app
from wogit.settings import Settings
from wogit.store import Store

MiB = 1 << 20
TAG_ROUTE = "/<repository>/<map>/<tag_id>"
BLOB_ROUTE = "/blobs/<digest>"


def text_map(size: int) -> bytes:
    """OSM-XML-like lines: compresses well, so it is stored (and the tarball made) with zlib level 1."""
    lines, n, total = [], 0, 0
    while total < size:
        line = f'<node id="{n}" lat="{60 + n * 7919 % 100000 / 1e5:.5f}" lon="{24 + n * 104729 % 100000 / 1e5:.5f}"/>\n'
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines).encode()[:size]


def entries(srv, namespace: str) -> dict[str, int]:
    """The download cache's finished entries of a namespace: name -> file size."""
    directory = srv.data / "wogit-cache" / namespace
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in directory.iterdir() if not p.name.startswith("partial-")}


def sealed(srv, namespace: str, name: str) -> Path:
    """Wait until the cache entry is in place (written while the first download streamed, then
    fsync'd and renamed in the background); fail if it never comes."""
    path = srv.data / "wogit-cache" / namespace / name
    deadline = time.monotonic() + 60
    while not path.exists() or list(path.parent.glob("partial-*")):
        assert time.monotonic() < deadline, f"the cache entry {namespace}/{name} never appeared"
        time.sleep(0.05)
    return path


def etag_name(reply: requests.Response) -> str:
    return reply.headers["ETag"].strip('"')


def members(archive: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]


def stored_blocks(deflate: bytes) -> tuple[list[tuple[bool, int]], int]:
    """The (final, length) of each block of a deflate stream of stored blocks only, and its length."""
    blocks, at, final = [], 0, False
    while not final:
        assert deflate[at] in (0, 1), f"not a stored block at {at}"
        final, size = deflate[at] == 1, int.from_bytes(deflate[at + 1:at + 3], "little")
        assert size ^ int.from_bytes(deflate[at + 3:at + 5], "little") == 0xFFFF
        blocks.append((final, size))
        at += 5 + size
    return blocks, at


def loose_path(srv, data: bytes) -> Path:
    oid = git_blob_id(data)
    return srv.data / "objects" / oid[:2] / oid[2:]


# -- tarballs ---------------------------------------------------------------------------------------

def test_a_stored_tarball_is_stored_blocks_of_65535_bytes_with_a_length_known_at_once(fresh_server):
    """Format 2: an incompressible map's tarball is the tar stream cut into stored blocks of exactly
    65535 bytes, the last one shorter and final, written by wogit (not zlib): its length is in the
    first answer and in a HEAD before any download."""
    srv = fresh_server()
    map_data = os.urandom(2 * MiB + 3)
    srv.push("r/m/v1", map_data, b"a: 1\n")
    head = requests.head(srv.url + "/r/m/v1")
    first = requests.get(srv.url + "/r/m/v1")
    assert first.status_code == head.status_code == 200
    assert "Transfer-Encoding" not in first.headers
    assert int(head.headers["Content-Length"]) == int(first.headers["Content-Length"]) == len(first.content)
    body = first.content
    assert body[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    blocks, end = stored_blocks(body[10:])
    raw = gzip.decompress(body)
    assert [size for _, size in blocks[:-1]] == [65535] * (len(blocks) - 1)
    assert [final for final, _ in blocks] == [False] * (len(blocks) - 1) + [True]
    assert 0 < blocks[-1][1] <= 65535 and sum(size for _, size in blocks) == len(raw)
    assert body[10 + end:] == zlib.crc32(raw).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    assert members(body) == [("map", map_data), ("metadata", b""), ("config", b"a: 1\n")]


@pytest.mark.parametrize("kind", ["incompressible", "compressible"])
def test_first_cached_head_packed_and_uncached_tarballs_are_identical(fresh_server, kind):
    srv = fresh_server()
    map_data = os.urandom(3 * MiB) if kind == "incompressible" else text_map(3 * MiB)
    srv.push("r/m/v1", map_data, b"a: 1\n")
    first = requests.get(srv.url + "/r/m/v1")
    assert first.status_code == 200
    cached_file = sealed(srv, "tarballs", etag_name(first))
    cached = requests.get(srv.url + "/r/m/v1")
    head = requests.head(srv.url + "/r/m/v1")
    assert cached.content == first.content
    assert cached.headers["ETag"] == head.headers["ETag"] == first.headers["ETag"]
    assert int(cached.headers["Content-Length"]) == int(head.headers["Content-Length"]) == len(first.content)
    if kind == "compressible":  # deflated: the length is known only once made, so the first is chunked
        assert first.headers["Transfer-Encoding"] == "chunked"
    assert cached_file.stat().st_size == len(first.content) + 48  # the body, then the footer
    assert members(first.content) == [("map", map_data), ("metadata", b""), ("config", b"a: 1\n")]
    # the same bytes when git packs the map, whether the cache is there or not
    git(srv.data, "gc", "--quiet")
    assert requests.get(srv.url + "/r/m/v1").content == first.content
    cached_file.unlink()
    assert requests.get(srv.url + "/r/m/v1").content == first.content
    fsck(srv.data)


def test_the_cached_tarball_follows_the_metadata(fresh_server):
    srv = fresh_server()
    srv.push("r/m/v1", os.urandom(2 * MiB), b"a: 1\n")
    before = requests.get(srv.url + "/r/m/v1")
    sealed(srv, "tarballs", etag_name(before))
    assert requests.put(srv.url + "/r/m/metadata", data="k=v").status_code == 200
    changed = requests.get(srv.url + "/r/m/v1")
    assert changed.headers["ETag"] != before.headers["ETag"] and changed.content != before.content
    assert dict(members(changed.content))["metadata"] == b"k=v\n"
    sealed(srv, "tarballs", etag_name(changed))
    assert sorted(entries(srv, "tarballs")) == sorted([etag_name(before), etag_name(changed)])
    assert requests.get(srv.url + "/r/m/v1").content == changed.content
    assert requests.delete(srv.url + "/r/m/metadata/k").status_code == 200
    restored = requests.get(srv.url + "/r/m/v1")
    assert (restored.headers["ETag"], restored.content) == (before.headers["ETag"], before.content)


def test_the_cache_evicts_the_least_recently_used_beyond_its_size(fresh_server):
    srv = fresh_server(None, "--download-cache-size", "5M")
    names = {}
    for tag in ("a", "b"):
        srv.push(f"r/m/{tag}", os.urandom(2 * MiB), b"a: 1\n")
        reply = requests.get(f"{srv.url}/r/m/{tag}")
        names[tag] = etag_name(reply)
        sealed(srv, "tarballs", names[tag])
    directory = srv.data / "wogit-cache" / "tarballs"
    os.utime(directory / names["a"], (time.time() - 7200,) * 2)  # a was used long ago,
    os.utime(directory / names["b"], (time.time() - 3600,) * 2)  # b less long ago,
    assert requests.get(f"{srv.url}/r/m/a").status_code == 200  # and now a again
    srv.push("r/m/c", os.urandom(2 * MiB), b"a: 1\n")
    names["c"] = etag_name(requests.get(f"{srv.url}/r/m/c"))
    sealed(srv, "tarballs", names["c"])
    kept = entries(srv, "tarballs")
    assert sorted(kept) == sorted([names["a"], names["c"]])
    assert sum(kept.values()) <= 5 * MiB


def test_download_cache_size_0_disables_the_cache(fresh_server):
    srv = fresh_server(None, "--download-cache-size", "0")
    map_data = text_map(2 * MiB)
    m, _ = srv.push("r/m/v1", map_data, b"a: 1\n")
    first, second = requests.get(srv.url + "/r/m/v1"), requests.get(srv.url + "/r/m/v1")
    assert first.content == second.content and members(first.content)[0] == ("map", map_data)
    assert "Content-Length" not in second.headers  # made again, not sent from a cached file
    assert requests.get(f"{srv.url}/blobs/{m}").content == map_data
    srv.stop()  # nothing is being written in the background either
    assert entries(srv, "tarballs") == entries(srv, "blobs") == {}


def test_a_truncated_or_stray_cache_file_is_never_served(fresh_server):
    srv = fresh_server()
    srv.push("r/m/a", os.urandom(2 * MiB), b"a: 1\n")
    srv.push("r/m/b", os.urandom(2 * MiB), b"b: 1\n")
    a, b = requests.get(srv.url + "/r/m/a"), requests.get(srv.url + "/r/m/b")
    file_a, file_b = sealed(srv, "tarballs", etag_name(a)), sealed(srv, "tarballs", etag_name(b))
    # a truncated entry: made again, never sent short, and cached again
    with open(file_a, "r+b") as f:
        f.truncate(file_a.stat().st_size - 100)
    assert requests.get(srv.url + "/r/m/a").content == a.content
    assert sealed(srv, "tarballs", etag_name(a)).stat().st_size == len(a.content) + 48
    # another entry's file under this one's name (a stray copy): its footer names the other
    file_b.write_bytes(file_a.read_bytes())
    assert requests.get(srv.url + "/r/m/b").content == b.content
    assert sealed(srv, "tarballs", etag_name(b)).read_bytes()[:-48] == b.content
    # a file that merely has the right length, without the footer
    file_b.write_bytes(b"\0" * (len(b.content) + 48))
    assert requests.get(srv.url + "/r/m/b").content == b.content
    # a blob entry cut short
    map_data = text_map(2 * MiB)
    m, _ = srv.push("r/t/v1", map_data, b"t: 1\n")
    assert requests.get(f"{srv.url}/blobs/{m}").content == map_data
    blob_file = sealed(srv, "blobs", m.removeprefix("sha256:"))
    blob_file.write_bytes(blob_file.read_bytes()[:-49])
    assert requests.get(f"{srv.url}/blobs/{m}").content == map_data


# -- maps by digest -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stored(server):
    """An incompressible map of 3 MiB and a bit, kept as a loose object of stored blocks."""
    data = os.urandom(3 * MiB + 4321)
    digest = server.upload("map", data)
    raw = loose_path(server, data).read_bytes()
    assert raw[:3] in (b"\x78\x01\x00", b"\x78\x01\x01"), "the map is not stored blocks: this tests nothing"
    return data, digest


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-0", 0, 0),
    ("bytes=0-9", 0, 9),
    ("bytes=65000-70000", 65000, 70000),  # across a block boundary
    ("bytes=100000-2500000", 100000, 2500000),  # many blocks
    (f"bytes={3 * MiB}-", 3 * MiB, 3 * MiB + 4320),  # the last bytes
    ("bytes=-1", 3 * MiB + 4320, 3 * MiB + 4320),
    ("bytes=-70000", 3 * MiB + 4321 - 70000, 3 * MiB + 4320),  # a suffix over blocks
    ("bytes=-99999999", 0, 3 * MiB + 4320),
])
def test_ranges_of_a_stored_map_are_exact(server, stored, spec, first, last):
    data, digest = stored
    reply = requests.get(f"{server.url}/blobs/{digest}", headers={"Range": spec})
    size = len(data)
    assert reply.status_code == (200 if (first, last) == (0, size - 1) else 206)
    assert reply.content == data[first:last + 1]
    assert reply.headers["Content-Length"] == str(last - first + 1)
    if reply.status_code == 206:
        assert reply.headers["Content-Range"] == f"bytes {first}-{last}/{size}"


def test_a_stored_map_whole_is_exact(server, stored):
    data, digest = stored
    assert requests.get(f"{server.url}/blobs/{digest}").content == data
    assert not entries(server, "blobs").get(digest.removeprefix("sha256:"))  # in the object already


def test_a_damaged_stored_object_is_never_served_as_wrong_bytes(fresh_server):
    """A loose object whose block headers do not add up is not served as spans: it is inflated,
    which fails, and the answer is cut short (never a whole body of wrong bytes)."""
    srv = fresh_server(None, "--download-cache-size", "0")  # no inflated copy to answer from
    data = os.urandom(2 * MiB)
    m, _ = srv.push("r/m/v1", data, b"a: 1\n")
    path = loose_path(srv, data)
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    # extra bytes after the adler32: not the stored structure; zlib inflates it right anyway
    path.write_bytes(bytes(raw) + b"trailing")
    assert requests.get(f"{srv.url}/blobs/{m}").content == data
    # a block whose NLEN does not match its LEN
    raw[3 + 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET /blobs/{m} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(1 << 20):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200"):
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert len(body) < length
    else:
        assert head.startswith(b"HTTP/1.1 500")


@pytest.mark.parametrize("how", ["compressible", "packed"])
def test_maps_git_keeps_compressed_are_cached_inflated_and_exact(fresh_server, how):
    srv = fresh_server()
    data = text_map(3 * MiB) if how == "compressible" else os.urandom(3 * MiB)
    m, _ = srv.push("r/m/v1", data, b"a: 1\n")
    if how == "packed":
        git(srv.data, "gc", "--quiet")
    first = requests.get(f"{srv.url}/blobs/{m}")
    assert first.content == data
    cached = sealed(srv, "blobs", m.removeprefix("sha256:"))
    assert cached.stat().st_size == len(data) + 48
    assert requests.get(f"{srv.url}/blobs/{m}").content == data
    for first_byte, last_byte in ((0, 0), (65530, 65545), (MiB - 1, 2 * MiB + 1), (len(data) - 7, len(data) - 1)):
        reply = requests.get(f"{srv.url}/blobs/{m}", headers={"Range": f"bytes={first_byte}-{last_byte}"})
        assert (reply.status_code, reply.content) == (206, data[first_byte:last_byte + 1])


# -- the connection -----------------------------------------------------------------------------------

def read_answer(sock: socket.socket, buffered: bytearray) -> tuple[bytes, bytes]:
    """One answer with a Content-Length on a kept-alive connection: (head, body)."""
    while b"\r\n\r\n" not in buffered:
        buffered += sock.recv(1 << 16)
    end = buffered.index(b"\r\n\r\n")
    head = bytes(buffered[:end])
    del buffered[:end + 4]
    length = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))
    while len(buffered) < length:
        buffered += sock.recv(1 << 20)
    body = bytes(buffered[:length])
    del buffered[:length]
    return head, body


def test_the_connection_stays_alive_after_sendfile_answers(fresh_server):
    srv = fresh_server()
    data = os.urandom(2 * MiB + 1)
    m, _ = srv.push("r/m/v1", data, b"a: 1\n")
    tarball = requests.get(srv.url + "/r/m/v1").content
    sealed(srv, "tarballs", etag_name(requests.head(srv.url + "/r/m/v1")))
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buffered = bytearray()
        for path, expected in ((f"/blobs/{m}", data), ("/r/m/v1", tarball), (f"/blobs/{m}", data)):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = read_answer(sock, buffered)
            assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
            assert body == expected
        sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_answer(sock, buffered)
        assert json.loads(body)["name"] == "wogit"
        assert buffered == b""


@needs_openssl
def test_downloads_over_tls_are_exact(tmp_path):
    cert, key = self_signed(tmp_path)
    srv = AnyServer(tmp_path / "registry.git", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        data = os.urandom(2 * MiB + 5)
        for kind, payload in (("blobs", data), ("configs", b"tls: 1\n")):
            assert requests.put(f"{srv.url}/{kind}/upload", data=payload, verify=str(cert)).status_code == 201
        m, c = sha256(data), sha256(b"tls: 1\n")
        assert requests.put(srv.url + "/r/m/v1", json={"map_digest": m, "config_digest": c},
                            verify=str(cert)).status_code == 201
        assert requests.get(f"{srv.url}/blobs/{m}", verify=str(cert)).content == data
        ranged = requests.get(f"{srv.url}/blobs/{m}", headers={"Range": "bytes=65000-1000000"}, verify=str(cert))
        assert ranged.content == data[65000:1000001]
        first = requests.get(srv.url + "/r/m/v1", verify=str(cert))
        sealed(srv, "tarballs", etag_name(first))
        cached = requests.get(srv.url + "/r/m/v1", verify=str(cert))
        assert cached.content == first.content and cached.headers["Content-Length"] == str(len(first.content))
        assert members(cached.content)[0] == ("map", data)
    finally:
        srv.stop()


def test_metrics_and_the_access_log_count_the_bytes_sendfile_sent(fresh_server):
    srv = fresh_server(None, "--metrics-access", "open")
    data = os.urandom(2 * MiB + 7)
    m, _ = srv.push("r/m/v1", data, b"a: 1\n")
    first = requests.get(srv.url + "/r/m/v1")
    sealed(srv, "tarballs", etag_name(first))
    answers = [requests.get(srv.url + "/r/m/v1"), requests.get(f"{srv.url}/blobs/{m}"),
               requests.get(f"{srv.url}/blobs/{m}", headers={"Range": "bytes=100-70099"})]
    assert [len(a.content) for a in answers] == [len(first.content), len(data), 70000]
    expected = {(TAG_ROUTE, "GET"): 2 * len(first.content), (BLOB_ROUTE, "GET"): len(data) + 70000}
    # The server counts a response's bytes once it has sent the last of them, which may be
    # just after the client has read them: scrape until the counts are in (or 10 s passed).
    deadline = time.monotonic() + 10
    with requests.Session() as session:
        while True:
            sent = samples(scrape(session, srv.url), "wogit_http_response_body_bytes_total")
            if {key: sent.get(key) for key in expected} == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert {key: sent.get(key) for key in expected} == expected
    srv.stop()
    log = srv.log_text()
    for answer in answers:
        line = next(line for line in log.splitlines() if line.endswith(answer.headers["X-Request-Id"]))
        assert line.split()[-3] == str(len(answer.content)), line


# -- the pieces themselves ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 65534, 65535, 65536, 2 * 65535, 16 * 65535 + 1])
def test_stored_blocks_are_65535_bytes_to_the_last_byte(size):
    data = os.urandom(size)
    pieces = tarball.gzip_stored([data[:1000], data[1000:]], size)
    body = b"".join(bytes(piece) for piece in pieces)
    assert len(body) == tarball.gzip_stored_length(size)
    blocks, end = stored_blocks(body[10:])
    assert [n for _, n in blocks] == [65535] * (size // 65535) + ([size % 65535] if size % 65535 else [])
    assert gzip.decompress(body) == data and 10 + end + 8 == len(body)


def test_any_wsgi_server_sends_the_same_bytes(tmp_path):
    """A Body is also an iterable and a file (``read``): served by wsgiref, without sendfile."""
    store = Store(str(tmp_path / "registry.git"), fsync=False)
    app = create_app(Settings(), store)
    httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        data = os.urandom(2 * MiB + 9)
        m = requests.put(url + "/blobs/upload", data=data).json()["digest"]
        c = requests.put(url + "/configs/upload", data=b"a: 1\n").json()["digest"]
        assert requests.put(url + "/r/m/v1", json={"map_digest": m, "config_digest": c}).status_code == 201
        assert requests.get(f"{url}/blobs/{m}").content == data
        assert requests.get(f"{url}/blobs/{m}", headers={"Range": "bytes=70000-"}).content == data[70000:]
        archive = requests.get(url + "/r/m/v1")
        assert members(archive.content)[0] == ("map", data)
        assert archive.headers["Content-Length"] == str(len(archive.content))
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_small_tarballs_are_kept_in_memory_least_recently_used_first():
    recent = cache.Recent(10)
    recent.put("a", b"aaaa")
    recent.put("b", b"bbbb")
    assert recent.get("a") == b"aaaa"  # a is now the most recent
    recent.put("c", b"cccc")  # 12 bytes > 10: b, the least recently used, goes
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (b"aaaa", None, b"cccc")
    assert recent.size == 8
    recent.put("big", b"x" * 11)  # larger than the whole bound: never kept
    assert recent.get("big") is None and recent.size == 8
    assert cache.Recent(0).get("a") is None


def test_a_small_tarball_served_twice_is_the_same_and_changes_with_its_metadata(fresh_server):
    srv = fresh_server()
    map_data = b"small map " * 100
    srv.push("r/m/v1", map_data, b"k: v\n")
    first = requests.get(srv.url + "/r/m/v1")
    again = requests.get(srv.url + "/r/m/v1")
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert first.headers["Content-Length"] == str(len(first.content))
    assert entries(srv, "tarballs") == {}  # kept in memory, not as a file
    assert requests.put(srv.url + "/r/m/metadata", data=b"k=new\n").status_code == 200
    changed = requests.get(srv.url + "/r/m/v1")
    assert changed.status_code == 200 and changed.headers["ETag"] != first.headers["ETag"]
    assert members(changed.content) == [("map", map_data), ("metadata", b"k=new\n"), ("config", b"k: v\n")]
