"""Hostile and broken clients: framing tricks, huge declared bodies, idle connections, bad bytes."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time

import pytest
import requests
from conftest import git, json_body_of, raw_request, refs, status_of
from test_access_control import AnyServer, needs_openssl, self_signed


def responses_in(raw: bytes) -> list[int]:
    """The statuses of every response in what the server sent (bodies end in a newline)."""
    return [int(m.group(1)) for m in re.finditer(rb"(?:^|\n)HTTP/1\.1 (\d{3}) ", raw)]


def test_unread_chunked_body_of_a_success_is_never_run_as_a_request(server, unique):
    server.push(f"{unique}/m/v1")
    smuggled = (f"PUT /{unique}/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n"
                "Connection: close\r\n\r\nsmuggled=yes\n").encode()
    raw = raw_request(server.url, b"GET /v1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled)
    assert responses_in(raw) == [200]
    assert b"Connection: close" in raw
    assert requests.get(f"{server.url}/{unique}/m/metadata/smuggled").status_code == 404


def test_declared_body_of_a_success_is_not_drained(server):
    """A 2xx for a request whose body was not read closes at once instead of reading (and holding) it."""
    started = time.monotonic()
    raw = raw_request(server.url, b"GET /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n", 5)
    assert responses_in(raw) == [200]
    assert b"Connection: close" in raw
    assert time.monotonic() - started < 4


def test_fully_read_chunked_body_with_trailers_keeps_the_connection(server, unique):
    server.push(f"{unique}/m/v1")
    raw = raw_request(server.url, (
        f"PUT /{unique}/m/metadata HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nt=1\r\n0\r\nFoo: bar\r\n\r\n"
        "GET /v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode())
    assert responses_in(raw) == [200, 200]


@pytest.mark.parametrize("size", [b"0x3", b"+3", b"0_3", b" 3", b"-1", b"33333333333333333"])
def test_malformed_chunk_sizes_are_refused(server, size):
    raw = raw_request(server.url, b"PUT /configs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + size + b"\r\na=1\r\n0\r\n\r\n")
    assert status_of(raw) == 400
    assert b"Connection: close" in raw
    assert "msg" in json_body_of(raw)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 3\r\n",
    b"Content-Length : 5\r\n",
    b"Content-Length: 5\r\n folded\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Bad Name: x\r\nContent-Length: 5\r\n",
])
def test_ambiguous_headers_are_refused(server, headers):
    raw = raw_request(server.url, b"PUT /configs/upload HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nhello")
    assert status_of(raw) == 400
    assert responses_in(raw) == [400]
    assert "msg" in json_body_of(raw)


def test_one_huge_chunk_is_refused_at_the_limit_without_holding_it(fresh_server):
    srv = fresh_server(None, "--max-map-size", "1M")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (200 << 20))
        sent = 0
        try:
            while sent < 8 << 20:
                sock.sendall(b"\0" * (1 << 20))
                sent += 1 << 20
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = sock.recv(65536)
    assert status_of(answer) == 413
    assert refs(srv.data) == {}
    rss_kib = int(next(line.split()[1] for line in open(f"/proc/{srv.proc.pid}/status")
                        if line.startswith("VmHWM:")))
    assert rss_kib < 150 * 1024


def test_idle_connections_do_not_hold_the_workers(fresh_server):
    srv = fresh_server(None, "--threads", "4")
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
    try:
        started = time.monotonic()
        assert requests.get(srv.url + "/v1", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()


def test_deeply_nested_tag_json_is_400(server, unique):
    reply = requests.put(f"{server.url}/{unique}/m/v1", data="[" * 100_000 + "]" * 100_000)
    assert reply.status_code == 400
    assert reply.json()["msg"].startswith("the tag body is not JSON")


@pytest.mark.parametrize("path, header", [("/blobs/upload", "Wo-Map-Digest"), ("/configs/upload", "Wo-Config-Digest")])
def test_header_that_is_not_utf8_is_400(server, path, header):
    raw = raw_request(server.url, b"PUT %s HTTP/1.1\r\nHost: x\r\n%s: sha256:\xff\xfe\r\nContent-Length: 3\r\n\r\nabc"
                      % (path.encode(), header.encode()))
    assert status_of(raw) == 400
    assert json_body_of(raw) == {"msg": f"the {header} header is not valid UTF-8"}


@pytest.mark.parametrize("path", ["/{r}/m/v%ff2", "/o%c0sm/m/v1", "/{r}/m/metad%ffata", "/{r}/m/metadata/k%ffey"])
def test_path_that_is_not_utf8_is_400_and_creates_nothing(fresh_server, path):
    srv = fresh_server()
    m, c = srv.push("osm/m/v1")
    before = refs(srv.data)
    for method in ("PUT", "GET", "DELETE"):
        reply = requests.request(method, srv.url + path.format(r="osm"), json={"map_digest": m, "config_digest": c})
        assert (reply.status_code, reply.json()) == (400, {"msg": "the path is not valid UTF-8"})
    assert refs(srv.data) == before


def test_incompressible_map_tarball_is_identical_loose_packed_and_mirrored(fresh_server, tmp_path):
    """Level-0 deflate framing must not depend on how the map's bytes were read."""
    srv = fresh_server()
    srv.push("r/m/v1", map_data=os.urandom(3 << 20) + b"tail")
    loose = requests.get(srv.url + "/r/m/v1").content
    git(srv.data, "gc", "--quiet")
    assert not any((srv.data / "objects").glob("??/*"))  # everything is packed now
    packed = requests.get(srv.url + "/r/m/v1").content
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "--quiet", "--mirror", f"file://{srv.data}", str(mirror)], check=True)
    mirrored = requests.get(fresh_server(mirror).url + "/r/m/v1").content
    assert loose == packed == mirrored


@pytest.mark.parametrize("request_bytes, status, msg", [
    (b"PUT /configs/upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na=1\r\n0\r\n\r\n", 400,
     "Transfer-Encoding needs HTTP/1.1"),
    (b"PUT /configs/upload HTTP/1.1\r\nContent-Length: 3\r\n\r\na=1", 400, "an HTTP/1.1 request needs a Host header"),
    (b"PUT /configs/upload HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\na=1", 417,
     "cannot meet Expect: 200-ok"),
    (b"GET /v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YTpi\r\nAuthorization: Basic Yzpk\r\n\r\n", 400,
     "the header Authorization is repeated"),
    (b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nWo-Map-Digest: sha256:" + b"a" * 64 + b"\r\nWo-Map-Digest: sha256:"
     + b"b" * 64 + b"\r\nContent-Length: 3\r\n\r\nabc", 400, "the header Wo-Map-Digest is repeated"),
])
def test_requests_two_readers_could_read_differently_are_refused(fresh_server, request_bytes, status, msg):
    """A body that would be dropped unseen (HTTP/1.0 and chunked), a missing Host, an unknown
    expectation, a repeated credential or digest: refused, nothing stored."""
    srv = fresh_server()
    raw = raw_request(srv.url, request_bytes)
    assert status_of(raw) == status
    assert responses_in(raw) == [status]
    assert json_body_of(raw) == {"msg": msg}
    assert refs(srv.data) == {}


def test_the_access_log_cannot_be_forged(fresh_server):
    srv = fresh_server()
    forged = "2026-12-04 00:00:00,000 wogit.access INFO 10.0.0.9 alice PUT /osm/forged/v1 201"
    raw = raw_request(srv.url, b"GET /x%0a" + forged.replace(" ", "%20").encode() + b"%0a%1b[31mRED%00 HTTP/1.1\r\n"
                      b"Host: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 404
    srv.stop()
    lines = [line for line in srv.log_text().splitlines() if "wogit.access" in line]
    assert not [line for line in lines if line.startswith("2026-12-04 00:00:00,000")]
    assert re.search(r" 127\.0\.0\.1 - GET " + re.escape("/x%0A2026-12-04%2000:00:00,000%20wogit.access%20INFO%2010.0.0.9%20"
                     "alice%20PUT%20/osm/forged/v1%20201%0A%1B[31mRED%00") + r" 404 \d+ [\d.]+ms [0-9a-f]{32}$", lines[-1])


def test_slow_request_heads_hold_no_worker(fresh_server):
    """Slowloris: heads sent a byte at a time wait in the selector, not in a worker (2 here), so
    other clients are answered; a head still arriving after header_timeout gets 408 and a close."""
    srv = fresh_server(None, "--threads", "2", env={"WOGIT_HEADER_TIMEOUT": "1"})
    slow = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        assert requests.get(srv.url + "/v1", timeout=5).status_code == 200  # old: waited for a worker (30 s)
        trickling, silent = slow[0], slow[1]
        answer = b""
        for _ in range(40):  # a byte every 0.1 s until the answer (after 1 s)
            time.sleep(0.1)
            try:
                trickling.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        while chunk := trickling.recv(65536):
            answer += chunk
        assert status_of(answer) == 408
        assert b"\r\nConnection: close\r\n" in answer
        assert json_body_of(answer) == {"msg": "the request's head took longer than 1 s"}
        assert silent.recv(65536) == b""  # silent since: closed at the deadline, unanswered
    finally:
        for sock in slow:
            sock.close()


def test_a_pipelined_partial_head_holds_no_worker(fresh_server):
    """A whole request sent with the start of the next, then nothing: the partial head waits in
    the selector too (it took a worker, 2 here, for the 30 s timeout, and never met the deadline)."""
    srv = fresh_server(None, "--threads", "2", env={"WOGIT_HEADER_TIMEOUT": "1"})
    slow = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\nGET /v1 HTTP/1.1\r\nX-Slow: a")
        assert requests.get(srv.url + "/v1", timeout=5).status_code == 200
        answers = []
        for sock in slow:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            answers.append(answer)
        # each: the first answered, then, silent since, closed at the second head's deadline
        assert [responses_in(answer) for answer in answers] == [[200]] * 4
    finally:
        for sock in slow:
            sock.close()


def test_pipelined_requests_whole_and_in_pieces_are_all_answered(fresh_server):
    srv = fresh_server()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\nGET /v1 HTTP/1.1\r\nHost: x\r\n\r\nGET /v1 HT")
        time.sleep(0.2)
        sock.sendall(b"TP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert responses_in(answer) == [200, 200, 200]


def test_request_head_in_pieces_is_answered(fresh_server):
    srv = fresh_server()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        for piece in (b"GET /v1 HT", b"TP/1.1\r\nHo", b"st: x\r\nConnection: close\r", b"\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert responses_in(answer) == [200]
    assert json_body_of(answer)["api"] == "v1"


@pytest.mark.parametrize("first_line", [b"GET /v1\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x03\x01\x00\xa5\r\n"])
def test_a_first_line_that_is_not_http1_is_refused_without_waiting_for_headers(server, first_line):
    """HTTP/0.9, HTTP/2's preface, TLS on the plain port: refused as soon as the line is whole
    (not after header_timeout: the client may never send a blank line)."""
    raw = raw_request(server.url, first_line, read_timeout=5)
    assert status_of(raw) in (400, 505)
    assert "msg" in json_body_of(raw)


@pytest.mark.parametrize("coding", [b"chunked, identity", b"identity, chunked", b"xchunked", b"gzip", b"chunked, chunked"])
def test_transfer_encodings_other_than_chunked_are_400(fresh_server, coding):
    """Was 501 from cheroot (a 5xx for a client's error); RFC 9112 6.3: 400 when chunked is not last."""
    srv = fresh_server()
    srv.push("r/m/v1")
    before = refs(srv.data)
    smuggled = b"PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\nsmuggled=yes\n"
    raw = raw_request(srv.url, b"PUT /r/m/metadata HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding
                      + b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))
    assert responses_in(raw) == [400]
    assert json_body_of(raw) == {"msg": f"Transfer-Encoding must be chunked, not {coding.decode()!r}"}
    assert refs(srv.data) == before


@pytest.mark.parametrize("query", ["last=%FF", "sort=%C0%AF", "n=%ED%A0%80", "%FF=1", "a=%C3"])
def test_query_string_that_is_not_utf8_is_400_and_stores_nothing(fresh_server, query):
    """Bottle read it as Latin-1 ('?last=%ff' was 'ÿ', answered 200)."""
    srv = fresh_server()
    srv.push("r/m/v1")
    before = refs(srv.data)
    for method, path, body in (("GET", "/r/m/_tags", None), ("PUT", "/r/m/metadata", b"k=1")):
        reply = requests.request(method, f"{srv.url}{path}?{query}", data=body)
        assert (reply.status_code, reply.json()) == (400, {"msg": "the query string is not valid UTF-8"})
    assert refs(srv.data) == before


@needs_openssl
def test_slow_tls_handshakes_and_heads_hold_no_worker(tmp_path):
    """Over TLS too: the handshake and the head are gathered in the selector, not in a worker."""
    cert, key = self_signed(tmp_path)
    srv = AnyServer(tmp_path / "registry.git", "--threads", "2", "--tls-cert", str(cert), "--tls-key", str(key),
                    env={"WOGIT_HEADER_TIMEOUT": "1"}).start()
    port = srv.port
    context = ssl.create_default_context(cafile=str(cert))
    handshaking = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    heads = [context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="127.0.0.1") for _ in range(4)]
    try:
        for sock in handshaking:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        for sock in heads:
            sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        reply = requests.get(srv.url + "/v1", verify=str(cert), timeout=5)
        assert reply.status_code == 200
        answer = b""
        for _ in range(40):
            time.sleep(0.1)
            try:
                heads[0].sendall(b"a")
            except OSError:
                break
        try:
            while chunk := heads[0].recv(65536):
                answer += chunk
        except OSError:  # the close may come as a reset once the 408 is read
            pass
        assert status_of(answer) == 408
        assert json_body_of(answer) == {"msg": "the request's head took longer than 1 s"}
    finally:
        for sock in handshaking + heads:
            sock.close()
        srv.stop()


@needs_openssl
def test_tls_clients_that_go_away_mid_request_leave_no_traceback(tmp_path):
    """cheroot took a TLS EOF for a server failure: a 'socket.error 8' traceback on stderr (and a 500 tried)."""
    cert, key = self_signed(tmp_path)
    srv = AnyServer(tmp_path / "registry.git", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    context = ssl.create_default_context(cafile=str(cert))
    try:
        for path in (b"/blobs/upload", b"/configs/upload"):
            with context.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                                     server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789" % path)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # gone, without TLS's close_notify
        time.sleep(1)
        assert requests.get(srv.url + "/v1", verify=str(cert), timeout=5).status_code == 200
    finally:
        srv.stop()
    assert refs(srv.data) == {}
    assert "Traceback" not in srv.log_text() and "socket.error" not in srv.log_text(), srv.log_text()
