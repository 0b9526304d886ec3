"""The field cases of tests/data/field-cases.json (from shared/cases/) that concern HTTP behaviour.

Each test names its case id; each asserts the exact answer the case expects.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import FIELD_CASES, SHARED, fsck, git_blob_id, index_tree_id, raw_request, refs, sha256, status_of

CASES = {case["id"]: case for case in json.loads(FIELD_CASES.read_text())["cases"]}
MAP_HEADER, CONFIG_HEADER = "Wo-Map-Digest", "Wo-Config-Digest"
UPLOAD = {"map": ("/blobs/upload", MAP_HEADER), "config": ("/configs/upload", CONFIG_HEADER)}
INDEX = {"map": "refs/wo/_maps/sha256/", "config": "refs/wo/_configs/sha256/"}


@pytest.mark.skipif(not (SHARED / "cases").is_dir(), reason="no shared/ beside this checkout")
def test_the_copy_of_the_field_cases_is_current():
    shared = {case["id"]: case for case in json.loads((SHARED / "cases" / "field-cases.json").read_text())["cases"]}
    assert CASES == shared


def test_every_http_case_here_exists_in_the_case_file():
    for case in ("FC-003-names-git-refuses", "FC-008-chunked-and-lengthless-bodies", "FC-009-truncated-body",
                 "FC-013-framework-errors-not-json", "FC-014-metadata-parsing-edges"):
        assert case in CASES


# -- helpers ---------------------------------------------------------------------

class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def call(server, method: str, path: str, body=None, headers=None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_error(reply: Reply, *statuses: int) -> None:
    assert reply.status in statuses, (reply.status, reply.body)
    assert reply.headers.get("Content-Type") == "application/json", reply.headers.items()
    payload = reply.json()
    assert isinstance(payload, dict) and set(payload) == {"msg"}, payload
    assert isinstance(payload["msg"], str) and payload["msg"].strip()


def parse_raw(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return status_of(raw), headers, body


def assert_raw_json_error(raw: bytes, status: int) -> dict[str, str]:
    code, headers, body = parse_raw(raw)
    assert code == status, raw
    assert headers.get("content-type") == "application/json", raw
    payload = json.loads(body)
    assert set(payload) == {"msg"} and isinstance(payload["msg"], str) and payload["msg"].strip(), raw
    return headers


def has_object(git_dir, oid: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "-e", oid],
                          capture_output=True).returncode == 0


def index_ref(kind: str, data: bytes) -> str:
    return INDEX[kind] + hashlib.sha256(data).hexdigest()


def upload(server, kind: str, data: bytes) -> Reply:
    return call(server, "PUT", UPLOAD[kind][0], data)


def push(server, path: str) -> tuple[str, str]:
    m = upload(server, "map", b"map " + os.urandom(32)).headers[MAP_HEADER]
    c = upload(server, "config", f"c: {uuid.uuid4()}\n".encode()).headers[CONFIG_HEADER]
    reply = call(server, "PUT", "/" + path, json.dumps({"map_digest": m, "config_digest": c}).encode())
    assert reply.status == 201, reply.body
    return m, c


# -- FC-003 ----------------------------------------------------------------------

FC003_NAMES = ["v1.lock", "v1.", "%2e%2e", "a@%7B1", ".x", "a%20b", "a:b", "a%7Eb", "a%5Eb", "a%5Cb",
               "a%00b", "a%07b", "v" * 300]


def test_fc003_names_git_refuses(fresh_server):
    """FC-003-names-git-refuses: every listed string as tag, repository and map: PUT 400 JSON,
    GET 400 or 404 JSON, no ref created, no .lock file left in the repository."""
    srv = fresh_server()
    m, c = push(srv, "r/m/v1")
    tag_body = json.dumps({"map_digest": m, "config_digest": c}).encode()
    before = refs(srv.data)
    for name in FC003_NAMES:
        for path in (f"/r/m/{name}", f"/{name}/m/v1", f"/r/{name}/v1"):
            put = call(srv, "PUT", path, tag_body, {"Content-Type": "application/json"})
            assert put.status == 400, (path, put.status, put.body)
            assert_error(put, 400)
            assert_error(call(srv, "GET", path), 400, 404)
        for base in (f"/{name}/m", f"/r/{name}"):
            assert_error(call(srv, "PUT", f"{base}/metadata", b"k=1", {"Content-Type": "text/plain"}), 400)
            assert_error(call(srv, "GET", f"{base}/metadata"), 400, 404)
            assert_error(call(srv, "GET", f"{base}/metadata/k"), 400, 404)
        assert refs(srv.data) == before, name
    locks = [str(p) for p in Path(srv.data).rglob("*") if p.name.endswith(".lock")]
    assert locks == []
    fsck(srv.data)
    # the registry still works
    assert call(srv, "PUT", "/r/m/v2", tag_body).status == 201


# -- FC-008 ----------------------------------------------------------------------

def curl_upload(server, kind: str, file: Path) -> tuple[int, dict[str, str], str]:
    """`cat file | curl -T -`: status, response headers and curl's verbose log."""
    headers_file = file.with_suffix(".headers")
    command = (f"cat {shlex.quote(str(file))} | curl -sS -v -T - -o /dev/null -D {shlex.quote(str(headers_file))} "
               f"-w '%{{http_code}}' {server.url}{UPLOAD[kind][0]}")
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    headers = {}
    for line in headers_file.read_bytes().decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(result.stdout), headers, result.stderr


@pytest.mark.parametrize("kind", ["map", "config"])
def test_fc008_curl_chunked_with_expect_100_continue(server, tmp_path, kind):
    """FC-008-chunked-and-lengthless-bodies: cat file | curl -T - (chunked + Expect: 100-continue) is 201
    with the sha256 of the file; re-sending it is 409 with the same digest."""
    if kind == "map":
        data = os.urandom(3 * 1024 * 1024 + 17)  # crosses the server's 1 MiB read size
    else:
        data = ("".join(f"key{i}: {uuid.uuid4()}\n" for i in range(2000)) + "name: caf\u00e9\n").encode()
    file = tmp_path / f"{kind}.bin"
    file.write_bytes(data)
    status, headers, log = curl_upload(server, kind, file)
    assert "> Transfer-Encoding: chunked" in log
    assert "> Expect: 100-continue" in log
    assert status == 201
    assert headers[UPLOAD[kind][1].lower()] == sha256(data)
    assert refs(server.data)[index_ref(kind, data)] == index_tree_id(kind, data)
    status, headers, _ = curl_upload(server, kind, file)
    assert status == 409
    assert headers[UPLOAD[kind][1].lower()] == sha256(data)


@pytest.mark.parametrize("kind", ["map", "config"])
def test_fc008_http10_put_without_content_length_is_411(server, kind):
    """FC-008-chunked-and-lengthless-bodies: a raw HTTP/1.0 PUT with a body and no Content-Length is
    411 JSON {msg}; nothing (and in particular no empty blob) is stored."""
    body = f"body {uuid.uuid4()}".encode()
    before = refs(server.data)
    raw = raw_request(server.url, f"PUT {UPLOAD[kind][0]} HTTP/1.0\r\nHost: x\r\n\r\n".encode() + body)
    headers = assert_raw_json_error(raw, 411)
    assert UPLOAD[kind][1].lower() not in headers
    assert refs(server.data) == before
    assert index_ref(kind, b"") not in refs(server.data)
    assert index_ref(kind, body) not in refs(server.data)
    assert not has_object(server.data, git_blob_id(body))


@pytest.mark.parametrize("kind", ["map", "config"])
def test_fc008_requests_generator_body_is_chunked_upload(server, kind):
    """FC-008-chunked-and-lengthless-bodies: a chunked upload from Python (requests, generator body)."""
    parts = [f"part {i} {uuid.uuid4()}\n".encode() for i in range(50)]
    data = b"".join(parts)
    sent = requests.Request("PUT", server.url + UPLOAD[kind][0], data=(p for p in parts)).prepare()
    assert sent.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in sent.headers
    with requests.Session() as session:
        reply = session.send(sent, timeout=30)
    assert reply.status_code == 201, reply.text
    assert reply.headers[UPLOAD[kind][1]] == sha256(data)
    assert refs(server.data)[index_ref(kind, data)] == index_tree_id(kind, data)


@pytest.mark.parametrize("kind", ["map", "config"])
def test_fc008_expect_100_continue_with_content_length(server, kind):
    """FC-008-chunked-and-lengthless-bodies: `Expect: 100-continue`: the server answers 100 Continue
    before the body is sent, then 201 with the digest of the body."""
    data = f"expect {uuid.uuid4()}\n".encode() * 100
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"PUT {UPLOAD[kind][0]} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            assert chunk, interim
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
                parse_raw(answer)[1].get("content-length", "0")):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    status, headers, _ = parse_raw(answer)
    assert status == 201, answer
    assert headers[UPLOAD[kind][1].lower()] == sha256(data)


# -- FC-009 ----------------------------------------------------------------------

def send_and_half_close(server, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data``, shut down the sending side, read until the server closes.

    Unlike a timeout, a close is an answer: a server that neither answers nor
    closes within ``timeout`` fails the test.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                pytest.fail(f"the server neither answered nor closed within {timeout}s: {b''.join(chunks)!r}")
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("kind", ["config", "map"])
def test_fc009_truncated_body(server, kind):
    """FC-009-truncated-body: Content-Length 1000, then 10 bytes, then the client shuts its sending side:
    400 JSON {msg} or the connection closed; no object written, no digest; later the 10 bytes are 201."""
    ten = os.urandom(5).hex().encode()
    assert len(ten) == 10
    path, header = UPLOAD[kind]
    before = refs(server.data)
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    raw = send_and_half_close(server, head + ten)
    if raw:
        headers = assert_raw_json_error(raw, 400)
        assert header.lower() not in headers
    assert refs(server.data) == before
    assert not has_object(server.data, git_blob_id(ten))
    later = upload(server, kind, ten)
    assert later.status == 201, later.body
    assert later.headers[header] == sha256(ten)


# -- FC-013 ----------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/blobs/upload", {"PUT"}),  # not /blobs/<digest>: "upload" is not a digest
    ("DELETE", "/blobs/upload", {"PUT"}),
    ("POST", "/configs/upload", {"PUT"}),
    ("POST", "/r/m/v1", {"GET", "PUT", "DELETE"}),
    ("POST", "/r/m/metadata/k", {"GET", "DELETE"}),
])
def test_fc013_wrong_method_is_405_json_with_allow(server, method, path, allow):
    """FC-013-framework-errors-not-json: 405 is JSON {msg} and carries Allow."""
    reply = call(server, method, path)
    assert_error(reply, 405)
    assert {m.strip() for m in reply.headers["Allow"].split(",")} - {"HEAD"} == allow


@pytest.mark.parametrize("path", ["/a/b", "/a/b/c/d/e", "/", "/a", "/blobs", "/v1/x"])
def test_fc013_unmatched_route_is_404_json(server, path):
    """FC-013-framework-errors-not-json: an unmatched route is 404 JSON {msg}."""
    assert_error(call(server, "GET", path), 404)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /v1 HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", 400),
    (b"GET /v1 HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n", 400),
    (b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 413),
    (b"GET /v1 HTTP/2.0\r\nHost: x\r\n\r\n", 505),
], ids=["garbage", "method-only", "extra-token", "length-and-chunked", "length-not-a-number", "bad-chunk-size",
        "chunk-longer-than-size", "illegal-header-line", "headers-too-large", "http-2.0"])
def test_fc013_malformed_requests_are_json_errors(server, request_bytes, status):
    """FC-013-framework-errors-not-json: requests cheroot or the framework refuse are JSON {msg} too,
    with Content-Type application/json, and nothing is stored."""
    before = refs(server.data)
    raw = raw_request(server.url, request_bytes)
    assert_raw_json_error(raw, status)
    assert refs(server.data) == before


def test_fc013_length_and_chunked_closes_connection(server):
    """FC-013-framework-errors-not-json: both Content-Length and Transfer-Encoding: 400 JSON and close
    (the body is never parsed as a next request)."""
    smuggled = b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    raw = raw_request(server.url, b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n" + body)
    headers = assert_raw_json_error(raw, 400)
    assert headers.get("connection") == "close"
    assert raw.count(b"HTTP/1.1 ") == 1


# -- FC-014 ----------------------------------------------------------------------

def test_fc014_metadata_parsing_edges(server, unique):
    """FC-014-metadata-parsing-edges: split at the first '=', the last duplicate wins, nested keys are
    ignored, CRLF never ends up in a value."""
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    reply = call(server, "PUT", base, b"tok=YWJj== url=http://x/?a=b dup=1 dup=2 a.b=9\r\n",
                 {"Content-Type": "text/plain"})
    assert reply.status == 200, reply.body
    assert reply.json()["ignored"] == ["a.b"]
    expected = {"tok": b"YWJj==", "url": b"http://x/?a=b", "dup": b"2"}
    for key, value in expected.items():
        got = call(server, "GET", f"{base}/{key}")
        assert (got.status, got.body) == (200, value), key
        assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert b"\r" not in got.body and b"\n" not in got.body
    assert_error(call(server, "GET", f"{base}/a.b"), 404)
    listing = call(server, "GET", base).body
    assert listing == b"dup=2\ntok=YWJj==\nurl=http://x/?a=b\n"
    assert b"\r" not in listing
