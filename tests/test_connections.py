"""Kept-alive connections: many clients each keep theirs (cheroot alone closes a connection after
its answer once 10 others wait idle, so every client beyond ten would reconnect per request)."""

from __future__ import annotations

import http.client


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
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v1")
        reply = conn.getresponse()
        reply.read()
        conns.append((conn, reply.getheader("Connection")))
    assert [header for _, header in conns[:2]] == [None, None]
    assert [header for _, header in conns[3:]] == ["close"]
    for conn, _ in conns:
        conn.close()
