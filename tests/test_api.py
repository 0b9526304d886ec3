"""Every status code of the HTTP API (spec/api.md + issue 2), through real HTTP on a real server.

Requests go through ``http.client`` (exact paths: no dot-segment normalisation,
no re-encoding) unless a test is about a particular client; every error answer
must be ``{"msg": "..."}`` with Content-Type application/json; every error must
leave the refs of the data directory exactly as they were.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
import requests

import wogit
from conftest import TEST_CONFIG, TEST_MAP, fsck, git, git_blob_id, index_tree_id, refs, sha256

MAP_HEADER = "Wo-Map-Digest"
CONFIG_HEADER = "Wo-Config-Digest"
UPLOAD = {"map": ("/blobs/upload", MAP_HEADER), "config": ("/configs/upload", CONFIG_HEADER)}
INDEX = {"map": "refs/wo/_maps/sha256/", "config": "refs/wo/_configs/sha256/"}
TEXT = "text/plain; charset=utf-8"


# -- a tiny exact HTTP client ------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(server, method: str, path: str, body=None, headers: dict[str, str] | None = None,
         chunked: bool = False) -> Reply:
    """One request on its own connection, the path sent byte for byte."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_error(reply: Reply, status: int) -> str:
    """``status`` with a JSON body that is exactly {"msg": "<something>"}; returns the msg."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("Content-Type") == "application/json", reply.headers.items()
    payload = reply.json()
    assert isinstance(payload, dict) and set(payload) == {"msg"}, payload
    assert isinstance(payload["msg"], str) and payload["msg"].strip(), payload
    assert b"Traceback" not in reply.body
    return payload["msg"]


def upload(server, kind: str, data: bytes, headers: dict[str, str] | None = None, chunked: bool = False) -> Reply:
    path, _ = UPLOAD[kind]
    body = iter([data]) if chunked else data
    return call(server, "PUT", path, body, headers, chunked=chunked)


def put_tag(server, path: str, payload) -> Reply:
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    if isinstance(body, str):
        body = body.encode()
    return call(server, "PUT", path, body, {"Content-Type": "application/json"})


def put_metadata(server, path: str, text: str | bytes) -> Reply:
    body = text.encode() if isinstance(text, str) else text
    return call(server, "PUT", path, body, {"Content-Type": "text/plain"})


def map_bytes() -> bytes:
    return b"MAP\0" + os.urandom(64)


def config_bytes() -> bytes:
    return f"name: {uuid.uuid4()}\nzoom: 12\n".encode()


def index_ref(kind: str, data: bytes) -> str:
    return INDEX[kind] + hashlib.sha256(data).hexdigest()


def cat_blob(git_dir, oid: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "blob", oid],
                          capture_output=True, check=True).stdout


def has_object(git_dir, oid: str) -> bool:
    return git(git_dir, "cat-file", "-e", oid, check=False).returncode == 0


def stray_files(git_dir) -> list[str]:
    """Temporary or lock files left in a repository."""
    return [str(p) for p in Path(git_dir).rglob("*")
            if p.is_file() and (p.name.endswith(".lock") or p.name.startswith("tmp_"))]


def tag_created(reply: Reply) -> int:
    return calendar.timegm(time.strptime(reply.json()["created"], "%Y-%m-%dT%H:%M:%SZ"))


def push(server, path: str, map_data: bytes | None = None, config: bytes | None = None):
    """Upload a map and a config (201 or 409) and tag them; returns (M, C, tag reply)."""
    map_data = map_bytes() if map_data is None else map_data
    config = config_bytes() if config is None else config
    m_reply, c_reply = upload(server, "map", map_data), upload(server, "config", config)
    assert m_reply.status in (201, 409) and c_reply.status in (201, 409)
    m, c = m_reply.headers[MAP_HEADER], c_reply.headers[CONFIG_HEADER]
    reply = put_tag(server, "/" + path, {"map_digest": m, "config_digest": c})
    assert reply.status == 201, reply.body
    return m, c, reply


# -- version -----------------------------------------------------------------

def test_v1_is_200_json_with_version(server):
    reply = call(server, "GET", "/v1")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json()["version"] == wogit.__version__


@pytest.mark.parametrize("path", ["/v2", "/v0", "/v3", "/v10"])
def test_other_major_versions_are_404_json(server, path):
    assert_error(call(server, "GET", path), 404)


# -- uploads -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["map", "config"])
def test_upload_201_then_409_with_digest_header(server, kind):
    data = map_bytes() if kind == "map" else config_bytes()
    header = UPLOAD[kind][1]
    first = upload(server, kind, data)
    assert first.status == 201, first.body
    assert first.headers[header] == sha256(data)
    ref = index_ref(kind, data)
    assert refs(server.data)[ref] == index_tree_id(kind, data)
    assert cat_blob(server.data, git_blob_id(data)) == data

    again = upload(server, kind, data)
    assert_error(again, 409)
    assert again.headers[header] == sha256(data)
    assert refs(server.data)[ref] == index_tree_id(kind, data)


def test_map_digest_is_sha256_of_exact_bytes_of_real_map(fresh_server):
    srv = fresh_server()
    data = TEST_MAP.read_bytes()
    reply = upload(srv, "map", data)
    assert reply.status == 201
    assert reply.headers[MAP_HEADER] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert cat_blob(srv.data, git_blob_id(data)) == data
    assert refs(srv.data) == {index_ref("map", data): index_tree_id("map", data)}


def test_same_bytes_as_map_and_as_config_are_separate_kinds(server):
    data = config_bytes()
    m = upload(server, "map", data)
    c = upload(server, "config", data)
    assert (m.status, c.status) == (201, 201)
    assert m.headers[MAP_HEADER] == c.headers[CONFIG_HEADER] == sha256(data)
    assert CONFIG_HEADER not in m.headers and MAP_HEADER not in c.headers


@pytest.mark.parametrize("kind", ["map", "config"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_empty_body_is_400(server, kind, chunked):
    before = refs(server.data)
    path, header = UPLOAD[kind]
    if chunked:
        reply = call(server, "PUT", path, iter([]), chunked=True)
    else:
        reply = call(server, "PUT", path, b"", {"Content-Length": "0"})
    assert_error(reply, 400)
    assert header not in reply.headers
    assert refs(server.data) == before
    assert index_ref(kind, b"") not in refs(server.data)


@pytest.mark.parametrize("data", [b"\xff\xfe not utf-8", b"caf\xe9", b"ends mid-character \xc3",
                                  b"\xed\xa0\x80 surrogate", b"ok: 1\n" + b"\x80" * 3])
def test_config_not_utf8_is_400_and_nothing_stored(server, data):
    data = uuid.uuid4().hex.encode() + b" " + data  # unique bytes, still not UTF-8
    before = refs(server.data)
    reply = upload(server, "config", data)
    assert_error(reply, 400)
    assert CONFIG_HEADER not in reply.headers
    assert refs(server.data) == before
    assert not has_object(server.data, git_blob_id(data))
    # the same bytes are a perfectly good map
    assert upload(server, "map", data).status == 201


@pytest.mark.parametrize("kind", ["map", "config"])
def test_announced_digest_mismatch_is_400_and_nothing_stored(server, kind):
    data = map_bytes() if kind == "map" else config_bytes()
    other = sha256(b"something else " + os.urandom(8))
    header = UPLOAD[kind][1]
    before = refs(server.data)
    reply = upload(server, kind, data, {header: other})
    assert_error(reply, 400)
    assert refs(server.data) == before
    assert not has_object(server.data, git_blob_id(data))
    # nothing was stored: the bytes upload as new, and the announced digest is still unknown
    later = upload(server, kind, data)
    assert later.status == 201
    assert later.headers[header] == sha256(data)
    assert INDEX[kind] + other.removeprefix("sha256:") not in refs(server.data)


@pytest.mark.parametrize("kind", ["map", "config"])
def test_announced_digest_matching_is_201(server, kind):
    data = map_bytes() if kind == "map" else config_bytes()
    header = UPLOAD[kind][1]
    reply = upload(server, kind, data, {header: sha256(data)})
    assert reply.status == 201
    assert reply.headers[header] == sha256(data)


@pytest.mark.parametrize("announced", ["sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e", "SHA256:" + "a" * 64,
                                       "sha256:" + "A" * 64, "sha256:" + "a" * 63, "a" * 64])
@pytest.mark.parametrize("kind", ["map", "config"])
def test_announced_digest_malformed_is_400(server, kind, announced):
    data = map_bytes() if kind == "map" else config_bytes()
    before = refs(server.data)
    assert_error(upload(server, kind, data, {UPLOAD[kind][1]: announced}), 400)
    assert refs(server.data) == before


@pytest.mark.parametrize("kind", ["map", "config"])
def test_announced_digest_that_exists_is_409(server, kind):
    data = map_bytes() if kind == "map" else config_bytes()
    header = UPLOAD[kind][1]
    assert upload(server, kind, data).status == 201
    before = refs(server.data)
    reply = upload(server, kind, data, {header: sha256(data)})
    assert_error(reply, 409)
    assert reply.headers[header] == sha256(data)
    assert refs(server.data) == before


def test_size_limits_413_and_nothing_stored(fresh_server):
    srv = fresh_server(None, "--max-map-size", "1000", "--max-config-size", "100")
    big_map, big_config = os.urandom(1001), b"x" * 101
    for kind, data in (("map", big_map), ("config", big_config)):
        header = UPLOAD[kind][1]
        for chunked in (False, True):
            reply = upload(srv, kind, data, chunked=chunked)
            assert_error(reply, 413)
            assert header not in reply.headers
        # bigger still, in several chunks
        path = UPLOAD[kind][0]
        reply = call(srv, "PUT", path, iter([data[:60]] * 40), chunked=True)
        assert_error(reply, 413)
    assert refs(srv.data) == {}
    assert not has_object(srv.data, git_blob_id(big_map))
    assert not has_object(srv.data, git_blob_id(big_config))
    assert stray_files(srv.data) == []
    # exactly at the limit is accepted
    at_map, at_config = os.urandom(1000), b"y" * 100
    assert upload(srv, "map", at_map).status == 201
    assert upload(srv, "config", at_config, chunked=True).status == 201
    assert refs(srv.data) == {index_ref("map", at_map): index_tree_id("map", at_map),
                              index_ref("config", at_config): index_tree_id("config", at_config)}


# -- tags ----------------------------------------------------------------------

def test_tag_put_201_with_json_body(server, unique):
    m, c = upload(server, "map", map_bytes()), upload(server, "config", config_bytes())
    m, c = m.headers[MAP_HEADER], c.headers[CONFIG_HEADER]
    t0 = int(time.time())
    reply = put_tag(server, f"/{unique}/world/v1.0", {"map_digest": m, "config_digest": c})
    assert reply.status == 201, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert {k: body[k] for k in ("repository", "map", "tag", "map_digest", "config_digest")} == {
        "repository": unique, "map": "world", "tag": "v1.0", "map_digest": m, "config_digest": c}
    assert t0 - 1 <= tag_created(reply) <= time.time() + 1
    ref = f"refs/wo/{unique}/world/v1.0"
    commit = refs(server.data)[ref]
    assert git(server.data, "cat-file", "-t", commit).stdout.strip() == "commit"
    tree = git(server.data, "ls-tree", commit).stdout.splitlines()
    assert [line.split("\t")[1] for line in tree] == ["config", "map"]
    message = git(server.data, "log", "-1", "--format=%B", commit).stdout
    assert m in message and c in message
    assert int(git(server.data, "log", "-1", "--format=%ct", commit).stdout) == tag_created(reply)


def test_tag_put_409_when_tag_exists_and_ref_unchanged(server, unique):
    m1, c1, _ = push(server, f"{unique}/m/v1")
    ref = f"refs/wo/{unique}/m/v1"
    before = refs(server.data)
    m2 = upload(server, "map", map_bytes()).headers[MAP_HEADER]
    for payload in ({"map_digest": m2, "config_digest": c1}, {"map_digest": m1, "config_digest": c1}):
        assert_error(put_tag(server, f"/{unique}/m/v1", payload), 409)
    after = refs(server.data)
    assert after[ref] == before[ref]
    assert {k: v for k, v in after.items() if "/_maps/" not in k} == \
        {k: v for k, v in before.items() if "/_maps/" not in k}
    reply = call(server, "GET", f"/{unique}/m/v1")
    assert reply.headers[MAP_HEADER] == m1


def _bad_digest_payloads(m: str, c: str) -> dict[str, dict]:
    unknown = sha256(b"never uploaded " + os.urandom(8))
    hexm = m.removeprefix("sha256:")
    payloads = {}
    for name, bad in (("malformed-short", "sha256:abc"), ("malformed-upper", "sha256:" + hexm.upper()),
                      ("malformed-prefix", "SHA256:" + hexm), ("malformed-algo", "sha512:" + hexm),
                      ("malformed-bare-hex", hexm), ("malformed-long", m + "0"), ("malformed-empty", ""),
                      ("malformed-space", " " + m), ("unknown", unknown)):
        payloads[f"map_digest-{name}"] = {"map_digest": bad, "config_digest": c}
        payloads[f"config_digest-{name}"] = {"map_digest": m, "config_digest": bad}
    payloads["config-digest-as-map_digest"] = {"map_digest": c, "config_digest": c}
    payloads["map-digest-as-config_digest"] = {"map_digest": m, "config_digest": m}
    payloads["swapped"] = {"map_digest": c, "config_digest": m}
    return payloads


BAD_DIGEST_CASES = list(_bad_digest_payloads(sha256(b"m"), sha256(b"c")))

BAD_BODIES = {
    "not-json": b"map_digest=x",
    "truncated-json": b'{"map_digest": "sha256:',
    "json-array": b"[]",
    "json-array-of-pairs": b'[["map_digest", "{m}"], ["config_digest", "{c}"]]',
    "json-string": b'"{m}"',
    "json-null": b"null",
    "json-number": b"42",
    "empty-object": b"{}",
    "missing-map_digest": b'{"config_digest": "{c}"}',
    "missing-config_digest": b'{"map_digest": "{m}"}',
    "map_digest-number": b'{"map_digest": 1, "config_digest": "{c}"}',
    "map_digest-null": b'{"map_digest": null, "config_digest": "{c}"}',
    "config_digest-list": b'{"map_digest": "{m}", "config_digest": ["{c}"]}',
    "config_digest-object": b'{"map_digest": "{m}", "config_digest": {"d": "{c}"}}',
    "config_digest-bool": b'{"map_digest": "{m}", "config_digest": true}',
    "not-utf8": b'{"map_digest": "{m}", "config_digest": "{c}", "x": "\xff"}',
}


@pytest.fixture
def uploaded(server):
    """A fresh map digest and config digest on the shared server."""
    return (upload(server, "map", map_bytes()).headers[MAP_HEADER],
            upload(server, "config", config_bytes()).headers[CONFIG_HEADER])


@pytest.mark.parametrize("case", BAD_DIGEST_CASES)
def test_tag_put_404_for_malformed_unknown_or_wrong_kind_digest(server, unique, uploaded, case):
    m, c = uploaded
    payload = _bad_digest_payloads(m, c)[case]
    before = refs(server.data)
    assert_error(put_tag(server, f"/{unique}/m/v1", payload), 404)
    assert refs(server.data) == before
    assert_error(call(server, "GET", f"/{unique}/m/v1"), 404)


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_tag_put_400_for_body_not_an_object_of_two_strings(server, unique, uploaded, case):
    m, c = uploaded
    body = BAD_BODIES[case].replace(b"{m}", m.encode()).replace(b"{c}", c.encode())
    before = refs(server.data)
    assert_error(put_tag(server, f"/{unique}/m/v1", body), 400)
    assert refs(server.data) == before


def test_tag_put_empty_body_is_400(server, unique, uploaded):
    before = refs(server.data)
    assert_error(call(server, "PUT", f"/{unique}/m/v1", b"", {"Content-Length": "0"}), 400)
    assert refs(server.data) == before


def test_tag_errors_create_nothing_on_fresh_registry(fresh_server):
    srv = fresh_server()
    map_data, config = map_bytes(), config_bytes()
    m = upload(srv, "map", map_data).headers[MAP_HEADER]
    c = upload(srv, "config", config).headers[CONFIG_HEADER]
    uploads_only = {index_ref("map", map_data): index_tree_id("map", map_data),
                    index_ref("config", config): index_tree_id("config", config)}
    assert refs(srv.data) == uploads_only
    for case, payload in _bad_digest_payloads(m, c).items():
        assert_error(put_tag(srv, "/r/m/v1", payload), 404)
        assert refs(srv.data) == uploads_only, case
    for case, body in BAD_BODIES.items():
        assert_error(put_tag(srv, "/r/m/v1", body.replace(b"{m}", m.encode()).replace(b"{c}", c.encode())), 400)
        assert refs(srv.data) == uploads_only, case
    for path in ("/R/m/v1", "/r/m/metadata", "/r/m/v1.", "/r/m/.v1", "/r/m/v..1", "/r/m/v1.lock"):
        reply = put_tag(srv, path, {"map_digest": m, "config_digest": c})
        assert reply.status in (400, 404), (path, reply.status)  # /r/m/metadata is the metadata route
        assert_error(reply, reply.status)
        assert refs(srv.data) == uploads_only, path
    # a metadata PUT on a map that has no tag yet creates no metadata ref
    assert_error(put_metadata(srv, "/r/m/metadata", "a=1"), 404)
    assert refs(srv.data) == uploads_only
    assert stray_files(srv.data) == []
    assert put_tag(srv, "/r/m/v1", {"map_digest": m, "config_digest": c}).status == 201
    assert set(refs(srv.data)) == set(uploads_only) | {"refs/wo/r/m/v1"}


# -- metadata ------------------------------------------------------------------

def metadata_ref(repository: str, map: str = "m") -> str:
    return f"refs/wo/_metadata/{repository}/{map}"


def get_value(server, path: str) -> Reply:
    return call(server, "GET", path)


def test_metadata_put_merges_and_keeps_keys_not_named(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "a=1 b=2").status == 200
    reply = put_metadata(server, base, "b=3 c=4")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    for key, value in (("a", b"1"), ("b", b"3"), ("c", b"4")):
        got = get_value(server, f"{base}/{key}")
        assert (got.status, got.body) == (200, value)
    assert call(server, "GET", base).body == b"a=1\nb=3\nc=4\n"


def test_metadata_put_200_lists_ignored_nested_keys(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    reply = put_metadata(server, base, "a=1 x.y=2\tx[z]=3\nq]=4\r\nb=2 x.y=5")
    assert reply.status == 200, reply.body
    assert reply.json()["ignored"] == ["x.y", "x[z]", "q]"]
    assert call(server, "GET", base).body == b"a=1\nb=2\n"
    for key in ("x.y", "x%5Bz%5D", "q%5D"):
        assert_error(get_value(server, f"{base}/{key}"), 404)


def test_metadata_put_only_nested_keys_is_200_and_stores_nothing(server, unique):
    push(server, f"{unique}/m/v1")
    before = refs(server.data)
    reply = put_metadata(server, f"/{unique}/m/metadata", "a.b=1 c[d]=2")
    assert reply.status == 200
    assert reply.json()["ignored"] == ["a.b", "c[d]"]
    assert call(server, "GET", f"/{unique}/m/metadata").body == b""
    assert refs(server.data) == before


def test_metadata_put_any_whitespace_separates(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, " a=1\tb=2\nc=3\r\nd=4  \t e=5\r\n\r\n").status == 200
    assert call(server, "GET", base).body == b"a=1\nb=2\nc=3\nd=4\ne=5\n"
    for key in "abcde":
        assert b"\r" not in get_value(server, f"{base}/{key}").body


BAD_METADATA = {
    "token-without-equals": "novalue",
    "equals-missing-in-second": "b=2 c",
    "empty-key": "=1",
    "key-with-bang": "a!b=1",
    "key-with-slash": "a/b=1",
    "key-with-colon": "a:b=1",
    "key-non-ascii": "\u00e9t\u00e9=1",
    "key-129-chars": "k" * 129 + "=1",
    "value-bel": "v=x\x07y",
    "value-nul": "v=x\x00y",
    "value-esc": "v=x\x1by",
    "value-del": "v=x\x7fy",
    "value-c1": "v=x\x85y",
    "value-line-separator": "v=x\u2028y",
    "value-paragraph-separator": "v=x\u2029y",
    "nested-key-value-control": "a.b=x\x01y",
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_metadata_put_400_applies_nothing(server, unique, case):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "keep=1").status == 200
    before = refs(server.data)
    reply = put_metadata(server, base, "keep=2 good=1 " + BAD_METADATA[case] + " later=3")
    assert_error(reply, 400)
    assert refs(server.data) == before
    assert get_value(server, f"{base}/keep").body == b"1"
    assert_error(get_value(server, f"{base}/good"), 404)
    assert_error(get_value(server, f"{base}/later"), 404)
    assert call(server, "GET", base).body == b"keep=1\n"


def test_metadata_put_not_utf8_is_400(server, unique):
    push(server, f"{unique}/m/v1")
    before = refs(server.data)
    assert_error(put_metadata(server, f"/{unique}/m/metadata", b"a=\xff\xfe"), 400)
    assert refs(server.data) == before


def test_metadata_404_for_unknown_repository_or_map(server, unique):
    push(server, f"{unique}/m/v1")
    before = refs(server.data)
    for base in (f"/{unique}x/m/metadata", f"/{unique}/other/metadata"):
        assert_error(put_metadata(server, base, "a=1"), 404)
        assert_error(call(server, "GET", base), 404)
        assert_error(call(server, "GET", f"{base}/a"), 404)
        assert_error(call(server, "DELETE", f"{base}/a"), 404)
    assert refs(server.data) == before
    assert metadata_ref(unique, "other") not in refs(server.data)


def test_metadata_get_key_is_raw_value_text_plain_utf8(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    value = "gr\u00fc\u00dfe=\u00df/?&=%20\u2603"
    assert put_metadata(server, base, f"K_e-y9={value} empty=").status == 200
    reply = get_value(server, f"{base}/K_e-y9")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == TEXT
    assert reply.body == value.encode("utf-8")
    empty = get_value(server, f"{base}/empty")
    assert (empty.status, empty.headers["Content-Type"], empty.body) == (200, TEXT, b"")


def test_metadata_key_is_case_sensitive(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "Key=1 key=2").status == 200
    assert get_value(server, f"{base}/Key").body == b"1"
    assert get_value(server, f"{base}/key").body == b"2"


@pytest.mark.parametrize("key", ["nope", "a.b", "a%5Bb%5D", "bad!", "k" * 129, "%2e%2e", "a%20b", "a.lock"])
def test_metadata_get_unknown_nested_or_invalid_key_is_404(server, unique, key):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "a.b=1 a[b]=2 other=3").status == 200
    assert_error(get_value(server, f"{base}/{key}"), 404)
    assert_error(call(server, "DELETE", f"{base}/{key}"), 404)


def test_metadata_delete_200_then_404(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "a=1 b=2").status == 200
    reply = call(server, "DELETE", f"{base}/a")
    assert reply.status == 200
    assert_error(get_value(server, f"{base}/a"), 404)
    assert_error(call(server, "DELETE", f"{base}/a"), 404)
    assert get_value(server, f"{base}/b").body == b"2"
    assert call(server, "GET", base).body == b"b=2\n"
    assert_error(call(server, "DELETE", f"{base}/never"), 404)


def test_metadata_get_all_is_sorted_key_value_lines(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    empty = call(server, "GET", base)
    assert (empty.status, empty.headers["Content-Type"], empty.body) == (200, TEXT, b"")
    assert put_metadata(server, base, "zeta=1 alpha=2=2 Beta=3 m_1=4 m-2=5 9=nine").status == 200
    reply = call(server, "GET", base)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == TEXT
    assert reply.body == b"9=nine\nBeta=3\nalpha=2=2\nm-2=5\nm_1=4\nzeta=1\n"


def test_metadata_history_is_one_commit_per_change(server, unique):
    push(server, f"{unique}/m/v1")
    base = f"/{unique}/m/metadata"
    assert put_metadata(server, base, "a=1").status == 200
    assert put_metadata(server, base, "a=1").status == 200  # no change, no commit
    assert put_metadata(server, base, "b=2").status == 200
    assert call(server, "DELETE", f"{base}/a").status == 200
    log = git(server.data, "rev-list", "--parents", metadata_ref(unique)).stdout.splitlines()
    assert len(log) == 3
    assert len(log[-1].split()) == 1  # root
    assert all(len(line.split()) == 2 for line in log[:-1])  # linear


# -- tarball -------------------------------------------------------------------

def pull(server, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    return call(server, method, "/" + path, headers=headers)


def members(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return [(info, tar.extractfile(info).read() if info.isreg() else b"") for info in tar.getmembers()]


@pytest.fixture
def tagged(server, unique):
    """The real OSM extract and its config, tagged; returns (path, map bytes, config bytes, created)."""
    map_data, config = TEST_MAP.read_bytes(), TEST_CONFIG.read_bytes()
    _, _, reply = push(server, f"{unique}/osm/v1", map_data, config)
    return f"{unique}/osm/v1", map_data, config, tag_created(reply)


def test_tarball_has_three_regular_members_in_order(server, tagged):
    path, map_data, config, created = tagged
    reply = pull(server, path)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/gzip"
    disposition = reply.headers["Content-Disposition"]
    assert disposition.split(";")[0] == "attachment"
    assert reply.headers[MAP_HEADER] == sha256(map_data)
    assert reply.headers[CONFIG_HEADER] == sha256(config)
    got = members(reply.body)
    assert [info.name for info, _ in got] == ["map", "metadata", "config"]
    for info, _ in got:
        assert info.isreg()
        assert (info.mode, info.uid, info.gid, info.uname, info.gname) == (0o644, 0, 0, "", "")
        assert info.mtime == created
    assert got[0][1] == map_data
    assert got[1][1] == b""
    assert got[2][1] == config
    commit = refs(server.data)["refs/wo/" + path]
    assert int(git(server.data, "log", "-1", "--format=%ct", commit).stdout) == created


def test_tarball_is_a_plain_gzip_of_a_plain_tar(server, tagged):
    path, map_data, config, _ = tagged
    body = pull(server, path).body
    assert body[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags (no name, no comment)
    assert body[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    raw = gzip.decompress(body)
    assert len(raw) % 512 == 0
    assert raw.endswith(b"\0" * 1024)


def test_tarball_metadata_is_sorted_lines_and_puts_back_verbatim(server, tagged):
    path, _, _, _ = tagged
    repository, map, _ = path.split("/")
    base = f"/{repository}/{map}/metadata"
    assert put_metadata(server, base, "zoom=12 area=berlin url=http://x/?a=b Name=\u00e9 a.b=1").status == 200
    first = pull(server, path)
    meta = dict((info.name, data) for info, data in members(first.body))["metadata"]
    assert meta == "Name=\u00e9\narea=berlin\nurl=http://x/?a=b\nzoom=12\n".encode()
    assert meta == call(server, "GET", base).body
    before = refs(server.data)
    back = put_metadata(server, base, meta)
    assert back.status == 200
    assert back.json()["ignored"] == []
    assert refs(server.data) == before  # same content: no new metadata commit
    second = pull(server, path)
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.body == first.body


def test_tarball_empty_metadata_puts_back_verbatim(server, tagged):
    """An archive's metadata file is accepted back by PUT .../metadata, also when it is empty."""
    path, _, _, _ = tagged
    repository, map, _ = path.split("/")
    meta = dict((info.name, data) for info, data in members(pull(server, path).body))["metadata"]
    assert meta == b""
    before = refs(server.data)
    reply = put_metadata(server, f"/{repository}/{map}/metadata", meta)
    assert reply.status == 200, reply.body
    assert refs(server.data) == before


def test_tarball_is_reproducible(server, tagged):
    path, _, _, _ = tagged
    first, second = pull(server, path), pull(server, path)
    assert first.status == second.status == 200
    assert first.body == second.body
    assert first.headers["ETag"] == second.headers["ETag"]


def test_tarball_etag_strong_and_if_none_match_304(server, tagged):
    path, _, _, _ = tagged
    reply = pull(server, path)
    etag = reply.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert not etag.startswith("W/")
    for header in (etag, f'"other", {etag}', "*", "W/" + etag):
        cached = pull(server, path, {"If-None-Match": header})
        assert cached.status == 304, header
        assert cached.body == b""
        assert cached.headers["ETag"] == etag
    other = pull(server, path, {"If-None-Match": '"not-the-etag"'})
    assert other.status == 200
    assert other.body == reply.body


def test_tarball_etag_and_bytes_follow_metadata(server, tagged):
    path, _, _, _ = tagged
    repository, map, _ = path.split("/")
    base = f"/{repository}/{map}/metadata"
    before = pull(server, path)
    assert put_metadata(server, base, "k=v").status == 200
    changed = pull(server, path)
    assert changed.headers["ETag"] != before.headers["ETag"]
    assert changed.body != before.body
    assert dict((i.name, d) for i, d in members(changed.body))["metadata"] == b"k=v\n"
    assert pull(server, path, {"If-None-Match": before.headers["ETag"]}).status == 200
    # back to the same metadata: back to the same bytes and ETag
    assert call(server, "DELETE", f"{base}/k").status == 200
    restored = pull(server, path)
    assert restored.headers["ETag"] == before.headers["ETag"]
    assert restored.body == before.body


def test_tarball_of_two_tags_differs_only_as_their_content(server, unique):
    map_data, config = map_bytes(), config_bytes()
    push(server, f"{unique}/m/a", map_data, config)
    push(server, f"{unique}/m/b", map_data, config)
    a, b = pull(server, f"{unique}/m/a"), pull(server, f"{unique}/m/b")
    assert [d for _, d in members(a.body)] == [d for _, d in members(b.body)] == [map_data, b"", config]


def test_tarball_head_has_get_headers_and_no_body(server, tagged):
    path, _, _, _ = tagged
    get = pull(server, path)
    head = pull(server, path, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    ignore = {"date", "content-length", "transfer-encoding", "connection", "x-request-id"}
    strip = lambda h: sorted((k.lower(), v) for k, v in h.items() if k.lower() not in ignore)  # noqa: E731
    assert strip(head.headers) == strip(get.headers)
    # RFC 9110 8.6: a HEAD's Content-Length, if any, is the length a GET would send
    if "Content-Length" in head.headers:
        assert int(head.headers["Content-Length"]) == len(get.body)


def test_tarball_head_if_none_match_304(server, tagged):
    path, _, _, _ = tagged
    etag = pull(server, path).headers["ETag"]
    reply = pull(server, path, {"If-None-Match": etag}, method="HEAD")
    assert (reply.status, reply.body) == (304, b"")


def test_tarball_404_json_for_unknown_tag_map_or_repository(server, tagged):
    path, _, _, _ = tagged
    repository, map, _ = path.split("/")
    for unknown in (f"{repository}/{map}/v2", f"{repository}/nomap/v1", f"{repository}x/{map}/v1"):
        assert_error(pull(server, unknown), 404)
        head = pull(server, unknown, method="HEAD")
        assert (head.status, head.body) == (404, b"")


# -- names ---------------------------------------------------------------------

VALID_REPOSITORIES = ["a", "0", "abc", "a1b2", "a.b", "a-b", "a_b", "a.b-c_d", "1.0", "osm.de-berlin_2024",
                      "metadata", "a" * 64, "lock", "x.locks"]
INVALID_REPOSITORIES = {
    "upper-case": "Abc", "all-upper": "ABC", "leading-dash": "-a", "trailing-dash": "a-",
    "leading-underscore": "_a", "trailing-underscore": "a_", "leading-dot": ".a", "trailing-dot": "a.",
    "dot-dot": "a..b", "only-dot-dot": "%2e%2e", "double-dash": "a--b", "dot-underscore": "a._b",
    "dot-lock": "a.lock", "65-chars": "a" * 65, "space": "a%20b", "at-brace": "a@%7B1", "tilde": "a%7Eb",
    "caret": "a%5Eb", "colon": "a:b", "backslash": "a%5Cb", "nul": "a%00b", "bel": "a%07b",
    "star": "a*b", "question": "a%3Fb", "bracket": "a%5Bb", "namespace-maps": "_maps",
    "namespace-configs": "_configs", "namespace-metadata": "_metadata", "non-ascii": "%C3%A9",
}
VALID_TAGS = ["v1", "V1", "1", "v1.0", "v1.0.0-rc.1", "A_b-C.d", "latest", "Metadata", "a" * 128, "v1.locks",
              "lock", "x-"]
INVALID_TAGS = {
    "metadata": "metadata", "dot-dot": "%2e%2e", "inner-dot-dot": "v1..2", "trailing-dot": "v1.",
    "dot-lock": "v1.lock", "leading-dash": "-v1", "leading-underscore": "_v1", "leading-dot": ".v1",
    "129-chars": "a" * 129, "space": "a%20b", "at-brace": "a@%7B1", "tilde": "a%7Eb", "caret": "a%5Eb",
    "colon": "a:b", "backslash": "a%5Cb", "nul": "a%00b", "bel": "a%07b", "star": "a*b",
    "bracket": "a%5Bb", "non-ascii": "v%C3%A9",
}


@pytest.mark.parametrize("name", VALID_REPOSITORIES)
def test_valid_repository_and_map_names(server, unique, uploaded, name):
    m, c = uploaded
    for repository, map in ((name, unique), (unique, name)):
        reply = put_tag(server, f"/{repository}/{map}/v1", {"map_digest": m, "config_digest": c})
        assert reply.status == 201, (repository, map, reply.body)
        assert refs(server.data)[f"refs/wo/{repository}/{map}/v1"]
        assert pull(server, f"{repository}/{map}/v1").status == 200
        assert put_metadata(server, f"/{repository}/{map}/metadata", "k=1").status == 200
        assert get_value(server, f"/{repository}/{map}/metadata/k").body == b"1"


@pytest.mark.parametrize("name", list(INVALID_REPOSITORIES.values()), ids=list(INVALID_REPOSITORIES))
def test_invalid_repository_and_map_names_are_400(server, unique, uploaded, name):
    m, c = uploaded
    push(server, f"{unique}/m/v1")
    before = refs(server.data)
    for repository, map in ((name, "m"), (unique, name)):
        base = f"/{repository}/{map}"
        assert_error(put_tag(server, f"{base}/v1", {"map_digest": m, "config_digest": c}), 400)
        assert_error(call(server, "GET", f"{base}/v1"), 400)
        assert_error(put_metadata(server, f"{base}/metadata", "k=1"), 400)
        assert_error(call(server, "GET", f"{base}/metadata"), 400)
        assert_error(call(server, "GET", f"{base}/metadata/k"), 400)
        assert_error(call(server, "DELETE", f"{base}/metadata/k"), 400)
    assert refs(server.data) == before
    assert stray_files(server.data) == []


@pytest.mark.parametrize("name", VALID_TAGS)
def test_valid_tag_names(server, unique, uploaded, name):
    m, c = uploaded
    reply = put_tag(server, f"/{unique}/m/{name}", {"map_digest": m, "config_digest": c})
    assert reply.status == 201, reply.body
    assert reply.json()["tag"] == name
    assert refs(server.data)[f"refs/wo/{unique}/m/{name}"]
    got = pull(server, f"{unique}/m/{name}")
    assert got.status == 200
    assert got.headers[MAP_HEADER] == m


@pytest.mark.parametrize("name", list(INVALID_TAGS.values()), ids=list(INVALID_TAGS))
def test_invalid_tag_names_are_400(server, unique, uploaded, name):
    m, c = uploaded
    push(server, f"{unique}/m/v1")  # the map exists, so only the tag name can be wrong
    before = refs(server.data)
    assert_error(put_tag(server, f"/{unique}/m/{name}", {"map_digest": m, "config_digest": c}), 400)
    if name != "metadata":  # GET /R/M/metadata is the metadata listing
        assert_error(call(server, "GET", f"/{unique}/m/{name}"), 400)
    assert refs(server.data) == before
    assert f"refs/wo/{unique}/m/metadata" not in refs(server.data)
    assert stray_files(server.data) == []


def test_metadata_limits_1000_keys_and_1_mib(fresh_server):
    srv = fresh_server()
    srv.push("osm/big/v1")
    url = srv.url + "/osm/big/metadata"
    reply = requests.put(url, data=" ".join(f"k{i}=v" for i in range(1001)))
    assert (reply.status_code, reply.json()) == (400, {"msg": "a map may have at most 1000 metadata keys, not 1001"})
    assert requests.put(url, data=" ".join(f"k{i}=v" for i in range(999))).status_code == 200
    reply = requests.put(url, data="k999=v extra=v")  # merged: 1001 keys
    assert (reply.status_code, reply.json()) == (400, {"msg": "a map may have at most 1000 metadata keys, not 1001"})
    assert requests.put(url, data="k999=v").status_code == 200
    assert len(requests.get(url).text.splitlines()) == 1000
    # size: the whole metadata file, as GET writes it, at most 1 MiB
    srv.push("osm/wide/v1")
    url = srv.url + "/osm/wide/metadata"
    half = "x" * (600 << 10)
    assert requests.put(url, data="a=" + half).status_code == 200
    reply = requests.put(url, data="b=" + half)
    total = 2 * (len("a=") + len(half) + 1)
    assert (reply.status_code, reply.json()) == (400, {
        "msg": f"a map's metadata may be at most {1 << 20} bytes in all (as GET .../metadata writes it), not {total}"})
    assert requests.get(url).text == "a=" + half + "\n"
    fsck(srv.data)
