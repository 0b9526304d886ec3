"""Kept-alive connections: many clients each keep theirs (cheroot alone closes a connection after
its answer once 10 others wait idle, so every client beyond ten would reconnect per request)."""

from __future__ import annotations

import http.client
import time


def test_twenty_idle_connections_do_not_close_the_next_one(fresh_server):
    server = fresh_server()
    idle = []
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v1")
        reply = conn.getresponse()
        assert reply.status == 200 and reply.getheader("Connection") is None
        reply.read()
        idle.append(conn)
    for conn in idle:  # each still open: its next request goes on the same socket
        sock = conn.sock
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        assert (reply.status, reply.read(), reply.getheader("Connection")) == (200, b'{"status": "ok"}\n', None)
        assert conn.sock is sock
        conn.close()


def test_beyond_the_limit_a_connection_closes_after_its_answer(fresh_server, tmp_path):
    config = tmp_path / "wogit.toml"
    config.write_text("[server]\nmax_idle_connections = 2\n")
    server = fresh_server(None, "--config", str(config))
    conns = []

    def ask() -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v1")
        reply = conn.getresponse()
        reply.read()
        conns.append((conn, reply.getheader("Connection")))
        return reply.getheader("Connection")

    try:
        assert [ask(), ask(), ask()][:2] == [None, None]
        # The kept-alive ones are counted once the selector has them back, a moment after their
        # answers: a fourth (or, on a busy machine, a later one) is answered with a close.
        deadline = time.monotonic() + 10
        while ask() != "close" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conns[-1][1] == "close"
    finally:
        for conn, _ in conns:
            conn.close()
