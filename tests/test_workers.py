"""`wogit serve --workers N`: N forked processes serving one port on one data directory.

Which worker serves a connection is read from the kernel (/proc): the server side of the
connection is a socket open in exactly one worker.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, Server, fsck, git, refs

from test_concurrency import assert_linear


def worker_pids(server: Server) -> list[int]:
    """The children of the `wogit serve` process."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.proc.pid:
                found.append(int(entry))
    return sorted(found)


def serving_pid(server: Server, conn: http.client.HTTPConnection, pids: list[int]) -> int:
    """The worker holding the server side of ``conn``."""
    client_port = conn.sock.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as file:
        for line in file.readlines()[1:]:
            fields = line.split()
            local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
            if local == server.port and remote == client_port:
                inode = fields[9]
    assert inode is not None
    holders = [pid for pid in pids for fd in os.listdir(f"/proc/{pid}/fd")
               if _link(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"]
    assert len(holders) == 1, holders
    return holders[0]


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def connections_on_each_worker(server: Server, pids: list[int], each: int) -> dict[int, list]:
    """Open connections (answered once each) until every worker holds ``each`` of them."""
    held: dict[int, list] = {pid: [] for pid in pids}
    for _ in range(400):
        if all(len(conns) >= each for conns in held.values()):
            break
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v1")
        reply = conn.getresponse()
        assert reply.status == 200
        reply.read()
        pid = serving_pid(server, conn, pids)
        if len(held[pid]) < each:
            held[pid].append(conn)
        else:
            conn.close()
    assert all(len(conns) >= each for conns in held.values()), {pid: len(c) for pid, c in held.items()}
    return held


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    conn.request(method, path, body=body)
    reply = conn.getresponse()
    return reply.status, reply.read()


def test_two_workers_serve_one_port(fresh_server):
    server = fresh_server(None, "--workers", "2")
    ready = server.log  # the ready line was read by Server.start; the log has the rest
    pids = worker_pids(server)
    assert len(pids) == 2 and server.proc.pid not in pids
    held = connections_on_each_worker(server, pids, 2)
    for pid, conns in held.items():
        for conn in conns:
            assert request(conn, "GET", "/v1")[0] == 200
            assert serving_pid(server, conn, pids) == pid  # a kept-alive connection stays with its worker
            conn.close()
    assert "Traceback" not in ready.read_text()


def test_writes_through_both_workers_lose_nothing(fresh_server):
    server = fresh_server(None, "--workers", "2")
    server.push("race/m/v1")
    pids = worker_pids(server)
    held = connections_on_each_worker(server, pids, 4)
    conns = [conn for conns in held.values() for conn in conns]
    rounds = 5
    answers: list = []
    barrier = threading.Barrier(len(conns))

    def write(i: int, conn) -> None:
        barrier.wait(timeout=30)
        for n in range(rounds):
            answers.append(request(conn, "PUT", "/race/m/metadata", f"k{i}-{n}=v{n}".encode()))
            answers.append(request(conn, "PUT", f"/race/m/t{i}-{n}", json.dumps(
                {"map_digest": tag["map_digest"], "config_digest": tag["config_digest"]}).encode()))

    tag = json.loads(request(conns[0], "GET", "/race/m/_tags")[1])["tags"][0]
    threads = [threading.Thread(target=write, args=(i, conn)) for i, conn in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(status for status, _ in answers) == [200] * (len(conns) * rounds) + [201] * (len(conns) * rounds)
    for conn in conns:
        conn.close()
    expected = {f"k{i}-{n}": f"v{n}" for i in range(len(conns)) for n in range(rounds)}
    text = git(server.data, "ls-tree", "refs/wo/_metadata/race/m").stdout
    assert sorted(line.split("\t")[1] for line in text.splitlines()) == sorted(expected)
    assert_linear(server.data, "refs/wo/_metadata/race/m", len(expected))
    tags = {ref for ref in refs(server.data) if ref.startswith("refs/wo/race/m/")}
    assert tags == {"refs/wo/race/m/v1"} | {f"refs/wo/race/m/t{i}-{n}" for i in range(len(conns)) for n in range(rounds)}
    fsck(server.data)


def test_sigterm_stops_every_worker(fresh_server):
    server = fresh_server(None, "--workers", "3")
    pids = worker_pids(server)
    assert len(pids) == 3
    assert server.stop() == 0
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
    log = server.log_text()
    assert log.count("shutting down") == 1 and "Traceback" not in log


def test_a_worker_that_dies_stops_the_server(fresh_server):
    server = fresh_server(None, "--workers", "2")
    pids = worker_pids(server)
    os.kill(pids[0], signal.SIGKILL)
    assert server.proc.wait(30) == 1
    assert f"worker {pids[0]} exited unexpectedly (killed by signal 9)" in server.log_text()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pids[1]}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pids[1]}")


@pytest.mark.parametrize("args", [["--push-mirror", "/nowhere.git"], ["--replica-of", "http://127.0.0.1:9"]])
def test_workers_refuse_duties_that_run_once(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path / "r.git"), "--port", "0",
                             "--workers", "2", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "wogit: a replica (--replica-of) and push mirrors (--push-mirror) run in one process: they need --workers 1")
    assert result.stdout == ""


def test_workers_from_the_config_file(fresh_server, tmp_path):
    config = tmp_path / "wogit.toml"
    config.write_text("[server]\nworkers = 2\n")
    server = fresh_server(None, "--config", str(config))
    assert len(worker_pids(server)) == 2
    config.write_text("[server]\nworkers = 0\n")
    result = subprocess.run([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path / "r.git"), "--port", "0",
                             "--config", str(config)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "workers must be at least 1" in result.stderr
