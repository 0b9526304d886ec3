"""Hostile and broken clients against a real ``wogit serve``.

Runs a corpus of named cases (bad names in every path segment, query strings, bodies and
headers; broken and ambiguous framing; slow, idle and stalled clients) against one server,
and for each case checks that:

* every answer is a 4xx with ``Content-Type: application/json`` and a ``{"msg": ...}`` body,
  or the connection is closed (never a 5xx, never a traceback in the log, never a hang);
* nothing is stored: ``git for-each-ref``, ``git count-objects -v`` and the set of files of
  the data directory (temporaries included) are the same before and after;
* other clients are unaffected: a canary (``GET /v1`` and a small tag's tarball, each on a new
  connection, every 0.2 s) gets every answer right within ``CANARY_BOUND`` seconds, throughout;
* memory stays bounded: the server's VmRSS before and after is reported (growth beyond
  ``RSS_GROWTH_BOUND`` is a violation).

    .venv/bin/python reliability/hostile.py              # the full corpus, a few minutes
    .venv/bin/python reliability/hostile.py --short      # the same cases, light slow-client phases
    .venv/bin/python reliability/hostile.py --output figures.json

Exit status 0 when there is no violation, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The field cases: shared/cases/ beside a checkout, else the tests' copy of it (in a clone).
CASES_FILE = next((p for p in (ROOT.parent / "shared" / "cases" / "field-cases.json",
                               ROOT / "tests" / "data" / "field-cases.json") if p.is_file()), None)
CANARY_BOUND = 10.0  # seconds: a canary answer slower than this is a violation
HANG_BOUND = 20.0  # seconds: neither an answer nor a close within this is a hang
RSS_GROWTH_BOUND = 64 << 10  # KiB: the server's VmRSS growing more over the corpus is a violation


# -- the server -------------------------------------------------------------------

class Server:
    """A ``wogit serve`` process on its own data directory and a free port."""

    def __init__(self, data: Path, threads: int, env: dict[str, str], args: tuple[str, ...] = ()):
        self.data = data
        self.log_path = data.parent / "server.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0", "--threads", str(threads),
                 *args],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env={**os.environ, **env})
        line = self.proc.stdout.readline()
        match = re.search(r"on https?://([\d.]+):(\d+)", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line}{self.log_path.read_text()}")
        self.port = int(match.group(2))
        self.log_offset = 0

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return int(next(line.split()[1] for line in status if line.startswith("VmRSS:")))

    def new_log(self) -> str:
        """What the server logged since the last call."""
        with open(self.log_path, errors="replace") as log:
            log.seek(self.log_offset)
            text = log.read()
            self.log_offset = log.tell()
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def git(data: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(data), *args], capture_output=True, text=True, check=True).stdout


def snapshot(data: Path) -> dict:
    """What a rejected request must not change: refs, the object count, every file's name."""
    counts = dict(line.split(": ") for line in git(data, "count-objects", "-v").splitlines())
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    return {"refs": git(data, "for-each-ref", "--format=%(refname) %(objectname)"),
            "objects": int(counts["count"]) + int(counts["in-pack"]), "files": files}


def differences(before: dict, after: dict) -> list[str]:
    found = []
    if before["refs"] != after["refs"]:
        found.append(f"refs changed: {sorted(set(after['refs'].splitlines()) ^ set(before['refs'].splitlines()))}")
    if before["objects"] != after["objects"]:
        found.append(f"object count {before['objects']} -> {after['objects']}")
    if before["files"] != after["files"]:
        found.append(f"files changed: {sorted(set(after['files']) ^ set(before['files']))[:5]}")
    return found


# -- talking raw HTTP -------------------------------------------------------------

#: With --tls: the client side's TLS context (the server's certificate trusted).
TLS: ssl.SSLContext | None = None


def connect(port: int, timeout: float) -> socket.socket:
    """A connection to the server: TCP, or TLS with --tls (handshake done)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return TLS.wrap_socket(sock, server_hostname="127.0.0.1") if TLS else sock


def client_hello() -> bytes:
    """The bytes a TLS client sends first (its ClientHello), made without a server."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        TLS.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(buf: bytes, head_only: bool = False) -> tuple[list[Response], bytes]:
    """The complete responses at the start of ``buf`` (1xx skipped), and what is left."""
    found = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return found, buf
        lines = buf[:end].decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        if not match:
            raise ValueError(f"not an HTTP response: {buf[:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        length = 0 if head_only or status < 200 else int(headers.get("content-length", -1))
        if length < 0:  # no length: the body runs to the close
            return found, buf
        if len(buf) < end + 4 + length:
            return found, buf
        if status >= 200:
            found.append(Response(status, headers, buf[end + 4:end + 4 + length]))
        buf = buf[end + 4 + length:]


@dataclass
class Exchange:
    """One connection: pieces sent (each followed by a pause), then what the client does."""

    pieces: list[tuple[bytes, float]]
    allowed: frozenset[int] | None = None  # statuses allowed; None: any 4xx
    responses: int = 1  # how many answers to wait for at most
    then: str = "read"  # "read": read the answers; "shutdown": half-close, then read; "close": just close
    head_only: bool = False  # answers to HEAD: no bodies
    label: str = ""  # what it is, in a violation's description


@dataclass
class Outcome:
    responses: list[Response]
    ended: str  # "answered", "closed", "reset", "hang"
    sent_all: bool


def exchange(port: int, ex: Exchange, bound: float = HANG_BOUND) -> Outcome:
    sock = connect(port, bound)
    sent_all = True
    try:
        for data, pause in ex.pieces:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):  # the server closed
                sent_all = False
                break
            if pause:
                time.sleep(pause)
        if ex.then == "close":
            return Outcome([], "closed", sent_all)
        if ex.then == "shutdown" and sent_all:
            if TLS:  # TLS has no half-close (a shutdown ends it): the client goes away instead
                return Outcome([], "closed", sent_all)
            sock.shutdown(socket.SHUT_WR)
        buf, responses, ended = b"", [], "hang"
        deadline = time.monotonic() + bound
        while len(responses) < ex.responses:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                ended = "reset"
                break
            if not chunk:
                ended = "closed"
                break
            buf += chunk
            more, buf = parse_responses(buf, ex.head_only)
            responses += more
        else:
            ended = "answered"
        if ended in ("closed", "reset") and buf:
            more, rest = parse_responses(buf + b"", ex.head_only)
            responses += more
            if rest and not more:  # a body without length, ended by the close
                responses += parse_close_delimited(rest)
        return Outcome(responses, ended, sent_all)
    finally:
        sock.close()


def parse_close_delimited(buf: bytes) -> list[Response]:
    head, sep, body = buf.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not (sep and match):
        return [Response(-1, {}, buf[:200])]  # garbage: a violation
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return [Response(int(match.group(1)), headers, body)]


def problems_of(outcome: Outcome, ex: Exchange) -> list[str]:
    """What is wrong with the answers to one exchange."""
    found = []
    if ex.then == "close" or (ex.then == "shutdown" and TLS):
        return found
    if outcome.ended == "hang":
        found.append(f"hang: neither {ex.responses} answer(s) nor a close within {HANG_BOUND:.0f} s")
    for reply in outcome.responses:
        allowed = ex.allowed if ex.allowed is not None else range(400, 500)
        if reply.status not in allowed:
            found.append(f"status {reply.status} (allowed: {sorted(ex.allowed) if ex.allowed else '4xx'}): {reply.body[:120]!r}")
        if reply.status >= 400 and ex.head_only:  # no body: the header says what it would be
            if reply.headers.get("content-type") != "application/json":
                found.append(f"error {reply.status} to HEAD is not application/json: {reply.headers}")
        elif reply.status >= 400:
            try:
                payload = json.loads(reply.body)
                good = (reply.headers.get("content-type") == "application/json" and isinstance(payload, dict)
                        and set(payload) == {"msg"} and isinstance(payload["msg"], str) and payload["msg"])
            except ValueError:
                good = False
            if not good:
                found.append(f"error {reply.status} is not JSON {{msg}}: {reply.headers.get('content-type')} {reply.body[:120]!r}")
    return found


# -- the corpus -------------------------------------------------------------------

@dataclass
class Case:
    name: str
    kind: str
    exchanges: list[Exchange] = field(default_factory=list)
    run: object = None  # instead of exchanges: a function(harness) -> list of problems


def request(method: str, target: str, body: bytes = b"", headers: str = "", protocol: str = "HTTP/1.1") -> bytes:
    head = f"{method} {target} {protocol}\r\nHost: x\r\n{headers}"
    if body or method == "PUT":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"Connection: close\r\n\r\n" + body


def simple(method: str, target, body: bytes = b"", headers: str = "", allowed=None) -> Exchange:
    data = target if isinstance(target, bytes) else request(method, target, body, headers)
    label = f"{method} {target[:60]!r}" if isinstance(target, str) else ""
    return Exchange([(data, 0)], frozenset(allowed) if allowed else None, head_only=method == "HEAD", label=label)


#: Path segments no name may be (as they appear in the URL: percent-encoded).
BAD_SEGMENTS = {
    "slash-upper": "a%2Fb", "slash-lower": "a%2fb", "slash-alone": "%2F", "dotdot": "..", "dot": ".",
    "dotdot-encoded": "%2e%2e", "dot-encoded": "%2E", "nul": "a%00b", "nul-alone": "%00", "soh": "a%01b",
    "bel": "a%07b", "esc": "a%1Bb", "del": "a%7Fb", "lf": "a%0Ab", "cr": "a%0Db", "tab": "a%09b",
    "space": "a%20b", "overlong-129": "a" * 129, "overlong-10k": "v" * 10240,
    "escape-refs": "..%2F..%2Fheads%2Fmain", "escape-encoded": "%2E%2E%2F%2E%2E%2Frefs%2Fheads%2Fx",
    "refs-path": "refs%2Fheads%2Fx", "lock": "v1.lock", "lock-alone": ".lock", "at-brace": "a@%7B1",
    "at-brace-minus": "@%7B-1%7D", "at": "@", "trailing-dot": "v1.", "trailing-dots": "v1..",
    "trailing-slash-encoded": "v1%2F", "leading-dot": ".x", "colon": "a:b", "backslash": "a%5Cb",
    "tilde": "a~b", "caret": "a%5Eb", "star": "a*b", "question-encoded": "a%3Fb", "bracket": "a%5Bb",
    "percent-alone": "%25", "bad-percent": "a%zzb", "fullwidth-v": "%EF%BD%961", "cyrillic-a": "%D0%B0",
    "nbsp": "a%C2%A0b", "zero-width-space": "v%E2%80%8B1", "one-dot-leader": "v%E2%80%A41",
    "overlong-utf8-slash": "%C0%AF", "ff": "%FF", "ff-inside": "a%FFb", "surrogate": "%ED%A0%80",
    "five-byte-utf8": "%F8%88%80%80%80", "truncated-utf8": "a%C3", "reserved-metadata": "metadata",
    "underscore-start": "_x", "upper-case-repo": "Ab",
}
#: Of these, the ones that are valid as a tag or a metadata key (or route there): sent only where invalid.
VALID_AS_TAG = {"upper-case-repo", "reserved-metadata"}
VALID_AS_KEY = {"upper-case-repo", "underscore-start"}


def name_case(label: str, segment: str, tag_body: bytes) -> Case:
    ex = []
    for path in (f"/{segment}/m/v1", f"/r/{segment}/v1") + (() if label in VALID_AS_TAG else (f"/r/m/{segment}",)):
        ex.append(simple("PUT", path, tag_body, "Content-Type: application/json\r\n", {400, 404, 405}))
        ex.append(simple("GET", path, allowed={400, 404, 405}))
        ex.append(simple("DELETE", path, allowed={400, 404, 405}))
    for base in (f"/{segment}/m", f"/r/{segment}"):
        ex.append(simple("PUT", f"{base}/metadata", b"k=1", "Content-Type: text/plain\r\n", {400, 404, 405}))
        ex.append(simple("GET", f"{base}/metadata", allowed={400, 404, 405}))
        ex.append(simple("GET", f"{base}/_tags", allowed={400, 404, 405}))
        ex.append(simple("GET", f"{base}/_history", allowed={400, 404, 405}))
    if label not in VALID_AS_KEY:
        ex.append(simple("GET", f"/r/m/metadata/{segment}", allowed={400, 404, 405}))
        ex.append(simple("DELETE", f"/r/m/metadata/{segment}", allowed={400, 404, 405}))
    ex.append(simple("GET", f"/_catalog/{segment}", allowed={400, 404, 405}))
    ex.append(simple("GET", f"/blobs/{segment}", allowed={400, 404, 405}))
    ex.append(simple("HEAD", f"/configs/{segment}", allowed={400, 404, 405}))
    ex.append(simple("GET", f"/blobs/sha256:{segment}/_tags", allowed={400, 404, 405}))
    return Case(f"name:{label}", "names", ex)


def names_corpus(tag_body: bytes) -> list[Case]:
    cases = [name_case(label, segment, tag_body) for label, segment in BAD_SEGMENTS.items()]
    bad = ["%FF", "%C0%AF", "%ED%A0%80", "a%C3", "%F8%88%80%80%80"]  # not UTF-8: 400
    queries = [f"/r/m/_tags?sort={b}" for b in bad] + [f"/r/m/_tags?last={b}" for b in bad] + \
              [f"/r/m/_tags?n={b}" for b in bad + ["-1", "0", "99999999999999999999", "1e9", "%00"]] + \
              [f"/r/m/_history?last={b}" for b in bad] + [f"/r/m/metadata?at={b}" for b in bad + ["9999-99-99", "%00"]] + \
              [f"/r/m/metadata/k?at={b}" for b in bad] + [f"/_catalog?last={b}&n={b}" for b in bad] + \
              [f"/r/m/_tags?{b}={b}" for b in bad] + ["/r/m/_tags?sort=name&sort=time&sort=%FF", "/r/m/_tags?sort=%00"]
    cases.append(Case("query:invalid-values", "names", [simple("GET", q, allowed={400, 404}) for q in queries]))
    odd = ["/r/m/_tags?last=%00", "/r/m/_tags?last=a%0Ab", "/r/m/_tags?%00=%00", "/r/m/_tags?a%0Ab=1",
           "/r/m/_tags?" + "x=1&" * 5000, "/r/m/_tags?last=" + "a" * 20000, "/_catalog?last=%E2%80%8B"]
    cases.append(Case("query:odd-but-utf8", "names", [simple("GET", q, allowed={200, 400, 404, 413, 414}) for q in odd]))
    meta = [b"k\xff=1", b"k=\xff", b"k=\xc0\xaf", b"k=a\x00b", b"k=a\x07b", b"\x00=1", b"k=" + b"v" * (2 << 20),
            b"%FF=1", b"=1", b"k", b"k=1\x1b[31m", b"k" * 200 + b"=1", b"k=\xed\xa0\x80"]
    cases.append(Case("metadata:invalid-bodies", "names",
                      [simple("PUT", "/r/m/metadata", body, "Content-Type: text/plain\r\n", {400, 413}) for body in meta]))
    digest = "sha256:" + "0" * 64
    json_bodies = [b'{"map_digest": "\xff", "config_digest": "\xff"}', b'{"map_digest": "sha256:\\u0000", "config_digest": 1}',
                   b'{"map_digest": "\\ud800", "config_digest": "\\udfff"}', b'{"map_digest": NaN}', b"1e999999",
                   b'{"map_digest": ' + b"9" * 100_000 + b"}", b"[]", b"null", b'"\xc0\xaf"', b"\xef\xbb\xbf{}",
                   b'{"map_digest": "%s", "map_digest": "x", "config_digest": "%s"}' % (digest.encode(), digest.encode()),
                   b'{"map_digest": "' + b"a" * (2 << 20) + b'"}', b"{" * 1000, b'{"a": "\\', b"\x00\x00\x00{",
                   b'{"map_digest": "SHA256:' + b"A" * 64 + b'", "config_digest": "sha256:' + b"0" * 64 + b'"}']
    cases.append(Case("json:invalid-tag-bodies", "names",
                      [simple("PUT", "/r/m/vjson", body, "Content-Type: application/json\r\n", {400, 404, 413})
                       for body in json_bodies]))
    bad_headers = [("PUT", "/blobs/upload", b"abc", "Wo-Map-Digest: sha256:%C0%AF\r\n"),
                   ("PUT", "/configs/upload", b"abc", "Wo-Config-Digest: \xc0\xaf\r\n"),
                   ("PUT", "/blobs/upload", b"abc", "Wo-Map-Digest: sha256:" + "a" * 10000 + "\r\n"),
                   ("GET", "/r/m/_tags", b"", "Authorization: Basic \xff\xfe\r\n"),
                   ("PUT", "/r/m/metadata", b"k=1", "Content-Type: text/plain; charset=\xff\r\nContent-Encoding: gzip\r\n"),
                   ("GET", "/r/m/v1", b"", "Range: bytes=\xff-\r\n"),
                   ("GET", "/r/m/v1", b"", "Range: bytes=99999999999999999999999-\r\n"),
                   ("GET", "/r/m/v1", b"", "Range: bytes=5-1\r\n"),
                   ("GET", "/r/m/v1", b"", "Range: " + "bytes=0-0," * 2000 + "\r\n"),
                   ("GET", "/blobs/upload", b"", "X-\xff\xfe: 1\r\n"),
                   ("PUT", "/configs/upload", b"abc", "Content-Length: \xff\r\n"),
                   ("PUT", "/configs/upload", b"", "Transfer-Encoding: \xc0\xaf\r\n")]
    cases.append(Case("headers:invalid-values", "names",
                      [simple(m, p, b, h, {200, 206, 400, 401, 404, 411, 413, 416}) for m, p, b, h in bad_headers]))
    return cases


def framing_corpus() -> list[Case]:
    put = "PUT /configs/upload HTTP/1.1\r\nHost: x\r\n"
    meta = "PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    smuggled = b"PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\nsmuggled=yes\n"
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)

    def one(name: str, data: bytes, then: str = "read", allowed=None, responses: int = 1) -> Case:
        return Case(f"framing:{name}", "framing", [Exchange([(data, 0)], frozenset(allowed) if allowed else None,
                                                            responses, then)])

    big = os.urandom(256 << 10)
    cases = [
        one("length-larger-then-half-close", (put + "Content-Length: 1000\r\n\r\n").encode() + b"0123456789", "shutdown"),
        one("length-larger-then-close", (put + "Content-Length: 1000\r\n\r\n").encode() + b"0123456789", "close"),
        one("map-length-larger-then-close", b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (4 << 20) + big, "close"),
        one("map-length-larger-then-half-close", b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (4 << 20) + big, "shutdown"),
        one("length-smaller-than-body", b"PUT /r/m/vsmall HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
            b'{"map_digest": "x"}\r\n\r\n', responses=2),
        one("chunked-cut-mid-chunk", (put + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"400\r\n" + b"a" * 100, "shutdown"),
        one("chunked-cut-mid-chunk-close", b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"100000\r\n" + big, "close"),
        one("chunked-cut-before-last-chunk", (put + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").encode(), "shutdown"),
        one("chunked-cut-in-trailers", (put + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n").encode(), "shutdown"),
        one("chunk-without-crlf", (put + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n").encode()),
        one("too-many-trailers", (put + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n").encode()
            + b"X-T: 1\r\n" * 100 + b"\r\n"),
        one("cl-and-te", (meta + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunk, responses=2),
        one("te-and-cl", (meta + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n").encode() + chunk, responses=2),
        one("te-chunked-identity", (meta + "Transfer-Encoding: chunked, identity\r\n\r\n").encode() + chunk, responses=2),
        one("te-identity-chunked", (meta + "Transfer-Encoding: identity, chunked\r\n\r\n").encode() + chunk, responses=2),
        one("te-xchunked", (meta + "Transfer-Encoding: xchunked\r\n\r\n").encode() + chunk, responses=2),
        one("te-chunked-upper", (meta + "Transfer-Encoding: CHUNKED\r\nContent-Length: 4\r\n\r\n").encode() + chunk, responses=2),
        one("te-space-before-colon", (meta + "Transfer-Encoding : chunked\r\n\r\n").encode() + chunk, responses=2),
        one("te-tab-value", (meta + "Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n").encode() + chunk, responses=2),
        one("te-obs-fold", (meta + "Transfer-Encoding:\r\n chunked\r\n\r\n").encode() + chunk, responses=2),
        one("te-gzip", (meta + "Transfer-Encoding: gzip\r\n\r\n").encode() + chunk, responses=2),
        one("te-twice", (meta + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n").encode() + chunk, responses=2),
        one("cl-duplicate-same", (meta + "Content-Length: 4\r\nContent-Length: 4\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-duplicate-differ", (meta + "Content-Length: 4\r\nContent-Length: 40\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-list", (meta + "Content-Length: 4, 4\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-negative", (meta + "Content-Length: -1\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-plus", (meta + "Content-Length: +4\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-hex", (meta + "Content-Length: 0x4\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-unicode-digits", (meta + "Content-Length: ").encode() + "٤".encode() + b"\r\n\r\nk=1\n", responses=2),
        one("cl-huge", (meta + "Content-Length: 99999999999999999999999999\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("cl-obs-fold", (meta + "Content-Length:\r\n 4\r\n\r\n").encode() + b"k=1\n", responses=2),
        one("header-huge", b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"),
        one("header-just-over-limit", b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n"),
        # Thousands of small headers fit in max_header_size: answered (the size is the bound), or 413.
        one("headers-thousands", b"GET /v1 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000))
            + b"\r\n", allowed={200, 413}),
        one("headers-thousands-over-limit", b"GET /v1 HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(10000)) + b"\r\n", allowed={413}),
        one("request-line-huge", b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        one("request-line-100k", b"GET /r/m/" + b"v" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        one("http-0.9", b"GET /v1\r\n\r\n", "shutdown"),
        one("http-0.9-no-blank", b"GET /v1\r\n", "shutdown"),
        # 505 HTTP Version Not Supported is the one 5xx allowed: it is the client's version, said in JSON.
        one("http-2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00", "shutdown",
            allowed={400, 505}),
        one("http-2.0-request", b"GET /v1 HTTP/2.0\r\nHost: x\r\n\r\n", allowed={400, 505}),
        one("http-1.2", b"GET /v1 HTTP/1.2\r\nHost: x\r\n\r\n", allowed={400, 505}),
        one("http-9.9", b"GET /v1 HTTP/9.9\r\nHost: x\r\n\r\n", allowed={400, 505}),
        one("protocol-lower", b"GET /v1 http/1.1\r\nHost: x\r\n\r\n"),
        one("tls-hello-on-http", bytes.fromhex("16030100a5010000a10303") + os.urandom(160), "shutdown"),
        one("binary-garbage", os.urandom(4096) + b"\r\n\r\n", "shutdown"),
        one("nul-in-request-line", b"GET /v1\x00 HTTP/1.1\r\nHost: x\r\n\r\n", "shutdown"),
        one("bare-lf", b"GET /v1 HTTP/1.1\nHost: x\n\n", "shutdown"),
        one("bare-cr", b"GET /v1 HTTP/1.1\rHost: x\r\r", "shutdown"),
        one("absolute-uri-other-host", b"PUT http://evil.example/r/m/metadata HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 0\r\n\r\n", allowed={400, 404, 411}),
        one("method-lower", b"put /r/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nk=1\n", allowed={400, 404, 405}),
        one("method-unknown", b"BREW /v1 HTTP/1.1\r\nHost: x\r\n\r\n", allowed={400, 405, 501}),
        one("method-huge", b"A" * 100_000 + b" /v1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        one("host-twice", b"PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 4\r\n\r\nk=1\n"),
        one("expect-unknown", (meta + "Expect: 100-continue, x\r\nContent-Length: 4\r\n\r\nk=1\n").encode(), allowed={417}),
        one("put-without-length-1.0", b"PUT /configs/upload HTTP/1.0\r\nHost: x\r\n\r\nbody", "shutdown", allowed={411}),
        Case("framing:pipelined-gets", "framing", [Exchange([(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n" * 20
             + b"GET /r/m/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0)], frozenset({200}), 21)]),
        Case("framing:pipelined-get-then-smuggle", "framing", [Exchange([(b"GET /v1 HTTP/1.1\r\nHost: x\r\n"
             b"Content-Length: 0\r\n\r\n" + b"PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n" + chunk, 0)], frozenset({200, 400}), 2)]),
        Case("framing:pipelined-after-error", "framing", [Exchange([(b"GET /nope%FF HTTP/1.1\r\nHost: x\r\n\r\n"
             + smuggled, 0)], frozenset({400}), 2)]),
    ]
    return cases


def pkt(line: bytes) -> bytes:
    return b"%04x" % (len(line) + 4) + line


def writes_corpus() -> list[Case]:
    """Writes that lie (digests, sizes) or go through git's smart HTTP with garbage: refused, nothing stored."""
    zero, fake = b"0" * 40, hashlib.sha1(b"fake").hexdigest().encode()
    receive = "Content-Type: application/x-git-receive-pack-request\r\n"
    upload = "Content-Type: application/x-git-upload-pack-request\r\n"
    git_ok = {200, 400, 403, 404, 405, 411, 413, 415}  # git's own answers (errors inside a 200) are allowed
    commands = [pkt(zero + b" " + fake + b" refs/heads/x\0report-status\n") + b"0000",
                pkt(zero + b" " + fake + b" refs/wo/r/m/v9\0report-status\n") + b"0000" + b"PACK\0\0\0\2\0\0\0\0",
                pkt(zero + b" " + fake + b" refs/wo/../../x\0report-status\n") + b"0000"]
    cases = [
        Case("write:map-digest-that-lies", "writes", [simple("PUT", "/blobs/upload", b"map bytes",
             "Wo-Map-Digest: sha256:" + "0" * 64 + "\r\n", {400})]),
        Case("write:config-digest-that-lies", "writes", [simple("PUT", "/configs/upload", b"a: 1\n",
             "Wo-Config-Digest: sha256:" + "0" * 64 + "\r\n", {400})]),
        Case("write:map-over-the-limit-declared", "writes", [simple("PUT", "/blobs/upload", b"",
             "Content-Length: 99999999999999\r\n", {400, 413})]),
        Case("write:tag-body-over-the-limit", "writes", [simple("PUT", "/r/m/vbig", b"{" + b" " * (2 << 20) + b"}",
             "Content-Type: application/json\r\n", {413})]),
        Case("write:tag-of-unknown-digests", "writes", [simple("PUT", "/r/m/vnone", json.dumps(
             {"map_digest": "sha256:" + "1" * 64, "config_digest": "sha256:" + "2" * 64}).encode(), "", {404})]),
        Case("write:tag-over-an-existing-tag", "writes", [simple("PUT", "/r/m/v1", json.dumps(
             {"map_digest": "sha256:" + "1" * 64, "config_digest": "sha256:" + "2" * 64}).encode(), "", {404, 409})]),
        Case("write:expect-100-then-close", "writes", [Exchange([(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\n"
             b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n", 0.3)], None, 1, "close")]),
        Case("git:receive-pack-garbage", "git", [simple("POST", "/_git/git-receive-pack", os.urandom(4096), receive, git_ok),
             simple("POST", "/_git/git-receive-pack", b"0000", receive, git_ok),
             simple("POST", "/_git/git-receive-pack", b"ffff" + b"x" * 100, receive, git_ok),
             simple("POST", "/_git/git-receive-pack", os.urandom(512), receive + "Content-Encoding: gzip\r\n", git_ok)]
             + [simple("POST", "/_git/git-receive-pack", c, receive, git_ok) for c in commands]),
        Case("git:upload-pack-garbage", "git", [simple("POST", "/_git/git-upload-pack", os.urandom(4096), upload, git_ok),
             simple("POST", "/_git/git-upload-pack", pkt(b"want " + fake + b"\n") + b"0000" + pkt(b"done\n"), upload, git_ok),
             simple("POST", "/_git/git-upload-pack", os.urandom(512), upload + "Content-Encoding: gzip\r\n", git_ok),
             simple("POST", "/_git/git-upload-pack", b"0000", upload + "Git-Protocol: version=2\r\n", git_ok),
             simple("POST", "/_git/git-upload-pack", b"0000", "Content-Type: text/plain\r\n", git_ok),
             simple("POST", "/_git/git-receive-pack", b"0000", upload, git_ok),
             simple("POST", "/_git/info/refs?service=git-receive-pack", b"0000", receive, git_ok)]),
        Case("git:paths-and-services", "git", [simple("GET", p, allowed=git_ok) for p in (
             "/_git/info/refs?service=git-evil", "/_git/info/refs?service=%FF", "/_git/../../etc/passwd",
             "/_git/%2e%2e/%2e%2e/etc/passwd", "/_git/config", "/_git/hooks/pre-receive", "/_git/objects/info/packs",
             "/_git/HEAD", "/_git/info/refs", "/_git/git-receive-pack", "/_git/" + "a/" * 2000, "/_git/%00")]),
    ]
    return cases


def field_corpus() -> list[Case]:
    """The field cases of shared/cases/ that a hostile client can send (FC-003, -008, -009, -013)."""
    if CASES_FILE is None:
        return []
    ids = {case["id"] for case in json.loads(CASES_FILE.read_text())["cases"]}
    cases = []
    if "FC-003-names-git-refuses" in ids:
        for segment in ["v1.lock", "v1.", "%2e%2e", "a@%7B1", ".x", "a%20b", "a:b", "a%7Eb", "a%5Eb", "a%5Cb",
                        "a%00b", "a%07b", "v" * 300]:
            case = name_case(segment[:20], segment, b'{"map_digest": "x", "config_digest": "y"}')
            case.name, case.kind = f"FC-003:{segment[:20]}", "field"
            cases.append(case)
    if "FC-008-chunked-and-lengthless-bodies" in ids:
        for path in ("/blobs/upload", "/configs/upload"):
            cases.append(Case(f"FC-008:http10-no-length{path}", "field", [Exchange(
                [(b"PUT %s HTTP/1.0\r\nHost: x\r\n\r\nbody-bytes" % path.encode(), 0)], frozenset({411}), 1, "shutdown")]))
    if "FC-009-truncated-body" in ids:
        for path in ("/blobs/upload", "/configs/upload"):
            cases.append(Case(f"FC-009:truncated{path}", "field", [Exchange(
                [(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789" % path.encode(), 0)],
                frozenset({400}), 1, "shutdown")]))
    if "FC-013-framework-errors-not-json" in ids:
        for raw in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /v1 HTTP/1.1 extra\r\nHost: x\r\n\r\n",
                    b"POST /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"):
            cases.append(Case(f"FC-013:{raw[:16].decode().strip()}", "field", [Exchange([(raw, 0)], None, 1, "shutdown")]))
    return cases


# -- slow and idle clients --------------------------------------------------------

class Canary(threading.Thread):
    """GET /v1 and a small tag's tarball, each on a new connection, every 0.2 s."""

    def __init__(self, port: int, tarball: bytes):
        super().__init__(daemon=True)
        self.port, self.tarball = port, tarball
        self.samples: list[tuple[float, float]] = []  # (start, latency)
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for target, expected in (("/v1", None), ("/r/m/v1", self.tarball)):
                started = time.monotonic()
                try:
                    got = exchange(self.port, Exchange([(request("GET", target), 0)], frozenset({200})), CANARY_BOUND)
                    latency = time.monotonic() - started
                    if not got.responses or got.responses[0].status != 200:
                        self.failures.append(f"{target}: {got.ended} {[r.status for r in got.responses]}")
                    elif expected is not None and got.responses[0].body != expected:
                        self.failures.append(f"{target}: wrong bytes")
                except OSError as exc:
                    latency = time.monotonic() - started
                    self.failures.append(f"{target}: {exc!r}")
                if latency > CANARY_BOUND:
                    self.failures.append(f"{target}: {latency:.1f} s")
                self.samples.append((started, latency))

    def worst(self, since: float, until: float) -> float:
        """The slowest answer of those that were awaited between ``since`` and ``until``."""
        return max((lat for start, lat in self.samples if start <= until and start + lat >= since), default=0.0)


def slowloris(harness: Harness, connections: int, seconds: float) -> list[str]:
    """``connections`` clients each send a request head one byte a second (reconnecting when
    closed); the answers they get must be 408 JSON or nothing.  With --tls, what they send a
    byte a second is a TLS ClientHello (the answers are not read)."""
    head = client_hello() if TLS else b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000
    selector = selectors.DefaultSelector()
    socks: dict[socket.socket, list] = {}
    problems: list[str] = []
    answers: dict[int, int] = {}

    def open_one():
        sock = socket.create_connection(("127.0.0.1", harness.port), timeout=10)
        sock.setblocking(False)
        socks[sock] = [0, b""]
        selector.register(sock, selectors.EVENT_READ)

    def finish(sock, by_server=True):
        _, buf = socks.pop(sock)
        answers["closed"] = answers.get("closed", 0) + by_server
        selector.unregister(sock)
        sock.close()
        if buf:
            for reply in parse_close_delimited(buf) if not parse_responses(buf)[0] else parse_responses(buf)[0]:
                answers[reply.status] = answers.get(reply.status, 0) + 1
                problems.extend(problems_of(Outcome([reply], "closed", True), Exchange([], frozenset({408}))))

    for _ in range(connections):
        open_one()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic() + 1
        for sock, state in list(socks.items()):
            try:
                sock.send(head[state[0]:state[0] + 1])
                state[0] += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                finish(sock)
                open_one()
        while (left := tick - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data and not TLS:
                    socks[sock][1] += data
                else:
                    finish(sock)
                    open_one()
    for sock in list(socks):
        finish(sock, by_server=False)
    harness.figures.setdefault("slowloris_answers", {}).update({str(k): v for k, v in answers.items()})
    return sorted(set(problems))


def idle_flood(harness: Harness, fresh: int, kept: int, seconds: float) -> list[str]:
    """``fresh`` connections that never send a byte and ``kept`` ones idle after one request."""
    socks = [socket.create_connection(("127.0.0.1", harness.port), timeout=10) for _ in range(fresh)]
    problems = []
    for _ in range(kept):
        sock = connect(harness.port, 10)
        sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while not parse_responses(buf)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                problems.append("a kept-alive connection closed before its answer")
                break
            buf += chunk
        socks.append(sock)
    time.sleep(seconds)
    for sock in socks:
        sock.close()
    return problems


def slow_reader(harness: Harness, seconds: float) -> list[str]:
    """GET the big tarball reading 16 KiB every 0.1 s, then go away mid-body."""
    sock = connect(harness.port, HANG_BOUND)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.sendall(request("GET", "/r/big/v1"))
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        chunk = sock.recv(16 << 10)
        if not chunk:
            break
        got += chunk
        time.sleep(0.1)
    sock.close()
    head = got.partition(b"\r\n\r\n")[0]
    harness.figures["slow_reader_bytes"] = len(got)
    return [] if head.startswith(b"HTTP/1.1 200 ") else [f"slow reader got {head[:80]!r}"]


def byte_at_a_time(harness: Harness, seconds: float) -> list[str]:
    """A 1 MiB map upload sent a byte every 10 ms, then abandoned: nothing stored, no temporary left."""
    sock = connect(harness.port, HANG_BOUND)
    sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 20))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.sendall(b"x")
        time.sleep(0.01)
    sock.close()
    time.sleep(0.5)  # the server sees the close and cleans up
    return []


def slow_bodies(harness: Harness, connections: int, seconds: float) -> list[str]:
    """``connections`` map uploads at once, each sending a byte every 0.5 s, then abandoned.

    A body holds a worker while it arrives (the app streams it), so this stays below
    ``max_uploads``: the canary shows the workers left over still answer."""
    socks = []
    for _ in range(connections):
        sock = connect(harness.port, HANG_BOUND)
        sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 20))
        socks.append(sock)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in socks:
            sock.sendall(b"x")
        time.sleep(0.5)
    for sock in socks:
        sock.close()
    time.sleep(0.5)  # the server sees the closes and cleans up
    return []


def slow_corpus(short: bool, threads: int) -> list[Case]:
    n, s = (3 * threads, 3.5) if short else (400, 40)
    return [
        Case(f"slow:slowloris-{n}-connections", "slow", run=lambda h: slowloris(h, n, s)),
        Case(f"slow:idle-{2 * n}-fresh-{n // 2}-kept-alive", "slow", run=lambda h: idle_flood(h, 2 * n, n // 2, s / 4)),
        Case("slow:slow-reader-of-a-big-tarball", "slow", run=lambda h: slow_reader(h, 1 if short else 20)),
        Case("slow:body-a-byte-at-a-time", "slow", run=lambda h: byte_at_a_time(h, 1 if short else 15)),
        # Below max_uploads (threads less 4): beyond, uploads are refused with 503 (docs/api.md).
        Case(f"slow:{threads - 6}-slow-bodies", "slow", run=lambda h: slow_bodies(h, threads - 6, 1 if short else 15)),
    ]


# -- the harness ------------------------------------------------------------------

class Harness:
    def __init__(self, server: Server):
        self.server, self.port = server, server.port
        self.figures: dict = {}
        self.violations: list[dict] = []
        self.last_snapshot: dict | None = None

    def check(self, ex: Exchange) -> list[str]:
        try:
            outcome = exchange(self.port, ex)
        except OSError as exc:
            return [f"{ex.label}: cannot connect: {exc!r}"]
        return [f"{ex.label}: {p}" if ex.label else p for p in problems_of(outcome, ex)]

    def run_case(self, case: Case, canary: Canary) -> bool:
        before = self.last_snapshot or snapshot(self.server.data)  # the canary writes nothing
        started = time.monotonic()
        problems: list[str] = []
        if case.run is not None:
            problems += case.run(self)
        with ThreadPoolExecutor(4) as pool:  # a case's exchanges are independent: 4 clients at once
            for found in pool.map(self.check, case.exchanges):
                problems += found
        if case.kind == "slow":
            self.figures.setdefault("canary_worst_during_s", {})[case.name] = round(canary.worst(started, time.monotonic()), 3)
        if any(ex.then == "close" or (ex.then == "shutdown" and TLS) for ex in case.exchanges):
            time.sleep(0.3)  # the server sees the close and cleans up
        self.last_snapshot = snapshot(self.server.data)
        problems += differences(before, self.last_snapshot)
        log = self.server.new_log()
        if "Traceback" in log or re.search(r" 5\d\d \d+ [\d.]+ms ", log):
            problems.append("the server logged: " + log[log.find("Traceback"):][:2000] if "Traceback" in log
                            else "a 5xx in the access log")
        if self.server.proc.poll() is not None:
            problems.append(f"the server exited with {self.server.proc.returncode}")
        for problem in problems:
            self.violations.append({"case": case.name, "problem": problem})
        seconds = self.figures.setdefault("seconds_by_kind", {})
        seconds[case.kind] = round(seconds.get(case.kind, 0) + time.monotonic() - started, 2)
        return not problems


def seed(port: int, data: Path, big: int) -> bytes:
    """A tag r/m/v1 (small) and r/big/v1 (``big`` bytes of map); the small tag's tarball."""
    def call(method, target, body=b"", headers=""):
        got = exchange(port, Exchange([(request(method, target, body, headers), 0)], frozenset(range(200, 300))))
        assert got.responses and got.responses[0].status in (200, 201), (target, got)
        return got.responses[0]

    for repo, size in (("m", 64), ("big", big)):
        m = call("PUT", "/blobs/upload", os.urandom(size)).headers["wo-map-digest"]
        c = call("PUT", "/configs/upload", f"name: {repo}\n".encode()).headers["wo-config-digest"]
        call("PUT", f"/r/{repo}/v1", json.dumps({"map_digest": m, "config_digest": c}).encode())
    call("PUT", "/r/m/metadata", b"k=1", "Content-Type: text/plain\r\n")
    call("GET", "/r/big/v1")  # the download cache holds it from now on
    return call("GET", "/r/m/v1").body


def tls_arguments(directory: Path) -> tuple[str, ...]:
    """Make a certificate for 127.0.0.1, trust it (``TLS``), and say how to serve it."""
    global TLS
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    TLS = ssl.create_default_context(cafile=str(cert))
    return "--tls-cert", str(cert), "--tls-key", str(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="light slow-client phases, for CI (< 30 s)")
    parser.add_argument("--output", help="write the figures as JSON to this file")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (a self-signed certificate made with openssl)")
    args = parser.parse_args(argv)
    threads = 8 if args.short else 32
    env = {"WOGIT_TIMEOUT": "5", "WOGIT_HEADER_TIMEOUT": "1.5"} if args.short else {}
    with tempfile.TemporaryDirectory(prefix="wogit-hostile-") as tmp:
        server = Server(Path(tmp) / "registry.git", threads, env, tls_arguments(Path(tmp)) if args.tls else ())
        try:
            tarball = seed(server.port, server.data, (4 if args.short else 64) << 20)
            time.sleep(0.5)
            server.new_log()
            harness = Harness(server)
            tag_body = json.dumps({"map_digest": "sha256:" + hashlib.sha256(b"x").hexdigest(),
                                   "config_digest": "sha256:" + "0" * 64}).encode()
            cases = (names_corpus(tag_body) + framing_corpus() + writes_corpus() + field_corpus()
                     + slow_corpus(args.short, threads))
            if args.only:
                cases = [c for c in cases if args.only in c.name]
            rss_before = server.rss_kib()
            canary = Canary(server.port, tarball)
            canary.start()
            started = time.monotonic()
            passed = sum(harness.run_case(case, canary) for case in cases)
            canary.stopping.set()
            canary.join()
            rss_after = server.rss_kib()
            for failure in sorted(set(canary.failures)):
                harness.violations.append({"case": "canary", "problem": failure})
            if rss_after - rss_before > RSS_GROWTH_BOUND:
                harness.violations.append({"case": "memory", "problem": f"VmRSS grew by {rss_after - rss_before} KiB"})
            figures = {
                "cases": len(cases), "passed": passed, "violations": len(harness.violations),
                "requests": sum(len(c.exchanges) for c in cases), "canary_requests": len(canary.samples),
                "canary_worst_overall_s": round(canary.worst(0, float("inf")), 3), **harness.figures,
                "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_growth_kib": rss_after - rss_before,
                "seconds": round(time.monotonic() - started, 1), "threads": threads, "tls": args.tls,
                "violation_list": harness.violations,
            }
        finally:
            server.stop()
    print(f"cases {figures['cases']}, passed {figures['passed']}, violations {figures['violations']}, "
          f"requests {figures['requests']} (+{figures['canary_requests']} canary) in {figures['seconds']} s")
    for name, worst in figures.get("canary_worst_during_s", {}).items():
        print(f"  canary worst latency during {name}: {worst:.3f} s")
    print(f"  RSS {figures['rss_before_kib'] // 1024} MiB -> {figures['rss_after_kib'] // 1024} MiB "
          f"(growth {figures['rss_growth_kib'] / 1024:.1f} MiB)")
    for v in harness.violations[:50]:
        print(f"  VIOLATION {v['case']}: {v['problem']}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if harness.violations else 0


if __name__ == "__main__":
    sys.exit(main())
