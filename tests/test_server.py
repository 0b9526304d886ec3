"""Starting and stopping: data directory creation, settings, clean shutdown with requests in flight."""

import os
import signal
import socket
import subprocess
import sys
import time

import requests
from conftest import ROOT, Server, git, sha256, status_of


def test_first_start_creates_a_bare_repository(tmp_path):
    data = tmp_path / "deep" / "registry.git"
    srv = Server(data).start()
    try:
        assert requests.get(srv.url + "/v1").json()["api"] == "v1"
        assert git(data, "rev-parse", "--is-bare-repository").stdout == "true\n"
        assert git(data, "config", "core.fsync").stdout == "all\n"
    finally:
        srv.stop()


def test_environment_sets_data_and_port(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / "env.git"
    env = {**os.environ, "WOGIT_DATA": str(data), "WOGIT_PORT": str(port), "WOGIT_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "wogit", "serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.endswith(f"serving {data} on http://127.0.0.1:{port}\n"), line
        assert requests.get(f"http://127.0.0.1:{port}/v1").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_refuses_a_directory_that_is_not_a_registry(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 1
    assert f"{tmp_path} exists and is not a bare git repository" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_sigterm_finishes_the_upload_in_flight(tmp_path):
    srv = Server(tmp_path / "r.git").start()
    body = b"x" * 100_000
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body[:50_000])
        time.sleep(0.3)  # the request is in a worker thread now
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[50_000:])
        answer = sock.recv(65536)
    assert status_of(answer) == 201
    assert f"Wo-Map-Digest: {sha256(body)}".encode() in answer
    assert srv.proc.wait(30) == 0
    again = Server(tmp_path / "r.git").start()
    try:
        assert requests.put(again.url + "/blobs/upload", data=body).status_code == 409
    finally:
        again.stop()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path / "r.git"),
                                 "--port", str(port)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"wogit: cannot listen on 127.0.0.1:{port}: ")
    assert result.stderr.splitlines()[-1].endswith("(another server there? --port 0 picks a free one)")


def test_sigterm_stops_a_server_whose_output_is_gone(tmp_path):
    """`wogit serve ... | head -1`: stdout and stderr closed; SIGTERM must still stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "wogit", "serve", "--data", str(tmp_path / "r.git"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert b"serving" in proc.stdout.readline()
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
