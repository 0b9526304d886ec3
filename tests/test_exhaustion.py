"""Resource exhaustion: a full disk is 507 with nothing left behind, and the registry recovers as soon
as space is freed; uploads beyond max_uploads are 503 with Retry-After, at once.

The disk is a real small tmpfs of the server's own (a user and mount namespace), or, where those
are not allowed, a file-size limit on the server (RLIMIT_FSIZE): see reliability/exhaustion.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import pytest
import requests

from conftest import ROOT, sha256, status_of
from wogit import config, names
from wogit.client import Client
from wogit.settings import Settings

_spec = importlib.util.spec_from_file_location("exhaustion", ROOT / "reliability" / "exhaustion.py")
exhaustion = sys.modules.setdefault("exhaustion", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(exhaustion)
PAGE = exhaustion.PAGE


def _mode() -> str | None:
    if exhaustion.user_namespaces_work():
        return "tmpfs"
    return "rlimit" if exhaustion.rlimit_works() else None


MODE = _mode()
STRERROR = {"tmpfs": "No space left on device", "rlimit": "File too large"}.get(MODE)
FULL = {"msg": f"the registry's disk is full: {STRERROR}; nothing was stored, retry once space is freed"}
needs_a_disk = pytest.mark.skipif(MODE is None, reason="neither user namespaces (unshare) nor RLIMIT_FSIZE")
tmpfs_only = pytest.mark.skipif(MODE != "tmpfs", reason="needs a tmpfs of its own (user namespaces): "
                                                        "a file-size limit does not fill a disk")


@pytest.fixture(scope="module")
def tight():
    if MODE is None:
        pytest.skip("neither user namespaces (unshare) nor RLIMIT_FSIZE are available")
    srv = exhaustion.TightServer(MODE)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text, srv.log_text


@pytest.fixture
def disk(tight):
    """The tight server, its space given back after the test whatever happened."""
    yield tight
    tight.recover()


def upload(srv, kind: str, data: bytes, chunked: bool = False) -> requests.Response:
    path = "/blobs/upload" if kind == names.MAP else "/configs/upload"
    body = iter([data[i:i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
    return requests.put(srv.url + path, data=body, timeout=60)


def assert_full(reply: requests.Response) -> None:
    assert reply.status_code == 507, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == FULL


def assert_nothing_left(srv, refs_before: dict[str, str]) -> None:
    assert srv.leftovers() == []
    assert srv.refs() == refs_before
    assert srv.fsck() is None


def pushed(srv, unique: str) -> tuple[str, str]:
    map_data, config = os.urandom(4096), f"c: {unique}\n".encode()
    assert upload(srv, names.MAP, map_data).status_code == 201
    assert upload(srv, names.CONFIG, config).status_code == 201
    return sha256(map_data), sha256(config)


@needs_a_disk
@pytest.mark.parametrize("kind, chunked", [(names.MAP, False), (names.MAP, True), (names.CONFIG, False),
                                           (names.CONFIG, True)])
def test_an_upload_on_a_full_disk_is_507_stores_nothing_and_the_next_one_succeeds(disk, kind, chunked):
    data = os.urandom(256 << 10) if kind == names.MAP else b"key: %s\n" % os.urandom(8).hex().encode() * 4000
    before = disk.refs()
    disk.leave(0)
    assert_full(upload(disk, kind, data, chunked))
    assert_nothing_left(disk, before)
    disk.recover()  # no restart
    again = upload(disk, kind, data, chunked)
    assert (again.status_code, again.json()) == (201, {"digest": sha256(data)})
    got = requests.get(f"{disk.url}/{'blobs' if kind == names.MAP else 'configs'}/{sha256(data)}", timeout=30)
    assert (got.status_code, got.content) == (200, data)


@tmpfs_only
def test_readyz_on_a_full_disk_is_503_and_leaves_no_probe(disk):
    before = disk.refs()
    disk.leave(0)
    ready = requests.get(disk.url + "/readyz", timeout=30)
    assert (ready.status_code, ready.json()) == (503, {"msg": "cannot write in the repository's objects "
                                                             "directory: No space left on device"})
    assert_nothing_left(disk, before)


@needs_a_disk
def test_an_upload_the_disk_fills_under_halfway_leaves_no_temporary_object(disk):
    data = os.urandom(1 << 20)
    before = disk.refs()
    disk.leave(len(data) // 2)
    assert_full(upload(disk, names.MAP, data))
    assert_nothing_left(disk, before)


@needs_a_disk
def test_a_tag_whose_commit_does_not_fit_is_507_and_leaves_no_object(disk, unique):
    # With one page free the tag's tree is written and its commit is not: the tree's temporary
    # file was left behind (a fault the harness found).
    map_digest, config_digest = pushed(disk, unique)
    before = disk.refs()
    disk.leave(PAGE if MODE == "tmpfs" else 0)
    body = {"map_digest": map_digest, "config_digest": config_digest}
    assert_full(requests.put(f"{disk.url}/{unique}/area/v1", json=body, timeout=30))
    assert_nothing_left(disk, before)
    disk.recover()
    created = requests.put(f"{disk.url}/{unique}/area/v1", json=body, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["map_digest"] == map_digest


@needs_a_disk
def test_metadata_whose_second_value_does_not_fit_is_507_and_leaves_no_object(disk, unique):
    # The first value's object fits in the one free page, the second's does not: the first's
    # temporary file was left behind.
    map_digest, config_digest = pushed(disk, unique)
    base = f"{disk.url}/{unique}/area"
    assert requests.put(base + "/v1", json={"map_digest": map_digest, "config_digest": config_digest},
                        timeout=30).status_code == 201
    values = {"first": os.urandom(1200).hex(), "second": os.urandom(1200).hex()}
    text = " ".join(f"{key}={value}" for key, value in values.items())
    before = disk.refs()
    disk.leave(PAGE if MODE == "tmpfs" else 0)
    assert_full(requests.put(base + "/metadata", data=text, timeout=30))
    assert_nothing_left(disk, before)
    disk.recover()
    applied = requests.put(base + "/metadata", data=text, timeout=30)
    assert (applied.status_code, applied.json()) == (200, {"set": ["first", "second"], "ignored": []})
    assert requests.get(base + "/metadata/second", timeout=30).text == values["second"]


@tmpfs_only
def test_deleting_a_packed_tag_on_a_full_disk_is_507_and_keeps_it(disk, unique):
    # git rewrites packed-refs to delete a packed ref: with room for the deletion's commit and
    # the history ref but not for a new packed-refs (3 pages), git's "fatal: error writing to
    # packed-refs.new: No space left on device" was a 500; with less, git names the lock it could
    # not write, and that was taken for a contended lock (retried).
    map_digest, config_digest = pushed(disk, unique)
    tag = f"{disk.url}/{unique}/area/v1"
    assert requests.put(tag, json={"map_digest": map_digest, "config_digest": config_digest},
                        timeout=30).status_code == 201
    for n in range(80):  # a packed-refs of several pages
        assert upload(disk, names.CONFIG, f"{unique}: {n}\n".encode()).status_code == 201
    disk.git("pack-refs", "--all")
    assert os.path.getsize(os.path.join(disk.git_dir, "packed-refs")) > 2 * PAGE
    for free in (3 * PAGE, 2 * PAGE):
        before = disk.refs()
        disk.leave(free)
        assert_full(requests.delete(tag, timeout=30))
        assert_nothing_left(disk, before)
        disk.recover()
    assert requests.delete(tag, timeout=30).status_code == 200
    assert requests.get(tag, timeout=30).status_code == 404


@needs_a_disk
def test_a_download_while_the_disk_fills_is_whole_and_cached_once_space_is_back(disk, unique):
    # Stored blocks: a tarball of 16 MiB, cached on disk as it streams (more than the socket's
    # buffers take, so the server is still writing it when the disk fills).
    map_data = os.urandom(16 << 20)
    config = f"c: {unique}\n".encode()
    assert upload(disk, names.MAP, map_data).status_code == 201
    assert upload(disk, names.CONFIG, config).status_code == 201
    tag = f"{disk.url}/{unique}/area/v1"
    assert requests.put(tag, json={"map_digest": sha256(map_data), "config_digest": sha256(config)},
                        timeout=30).status_code == 201
    cache = os.path.join(disk.git_dir, "wogit-cache", "tarballs")
    cached_before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    with requests.get(tag, stream=True, timeout=60) as reply:
        chunks = reply.iter_content(65536)
        first = next(chunks)
        disk.leave(0)  # the cache's file is being written: its next writes fail
        content = first + b"".join(chunks)
        assert reply.status_code == 200
    deadline = time.monotonic() + 10
    while disk.leftovers() and time.monotonic() < deadline:  # the entry is abandoned, its file removed
        time.sleep(0.05)
    assert disk.leftovers() == []
    assert set(os.listdir(cache)) == cached_before
    disk.recover()
    again = requests.get(tag, timeout=60)
    assert (again.status_code, again.content) == (200, content)  # a reproducible tarball: the same bytes
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        assert tar.extractfile("map").read() == map_data
    while set(os.listdir(cache)) == cached_before and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert len(set(os.listdir(cache)) - cached_before) == 1


def _aged_unused_upload(srv) -> tuple[str, str]:
    data = os.urandom(8192)
    assert upload(srv, names.MAP, data).status_code == 201
    index = names.blob_ref(names.MAP, sha256(data))
    tree = srv.refs()[index]
    blob = srv.git("rev-parse", f"{tree}:map").stdout.strip()
    old = time.time() - 7200
    for oid in (tree, blob):
        os.utime(os.path.join(srv.git_dir, "objects", oid[:2], oid[2:]), (old, old))
    return sha256(data), index


def gc(srv) -> subprocess.CompletedProcess:
    return subprocess.run([*srv.enter, sys.executable, "-m", "wogit", "gc", "--data", srv.command_git_dir,
                           "--grace", "1m", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          preexec_fn=srv.limit_for_children())


@tmpfs_only
def test_gc_on_a_full_disk_sweeps_loose_refs(disk):
    digest, index = _aged_unused_upload(disk)
    disk.leave(0)
    result = gc(disk)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["problems"] == [] and [s["digest"] for s in report["swept"]] == [digest]
    assert index not in disk.refs() and disk.leftovers() == [] and disk.fsck() is None


@tmpfs_only
def test_gc_on_a_full_disk_names_what_it_could_not_sweep_and_sweeps_it_once_space_is_back(disk):
    # Deleting a packed ref rewrites packed-refs: on a full disk gc used to say it swept nothing,
    # exit 0, and not a word of why.
    digest, index = _aged_unused_upload(disk)
    disk.git("pack-refs", "--all")
    before = disk.refs()
    disk.leave(0)
    result = gc(disk)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["swept"] == [] and len(report["problems"]) == 1
    assert report["problems"][0].startswith(f"cannot sweep map {digest}: ")
    assert report["problems"][0].endswith(": No space left on device")
    assert_nothing_left(disk, before)
    disk.recover()
    again = gc(disk)
    assert again.returncode == 0, again.stderr
    assert [s["digest"] for s in json.loads(again.stdout)["swept"]] == [digest]
    assert index not in disk.refs()


# -- too many uploads at once -----------------------------------------------------------------------

def test_an_upload_beyond_max_uploads_is_503_with_retry_after_at_once_and_reads_go_on(fresh_server):
    srv = fresh_server(None, "--threads", "4", "--max-uploads", "1")
    held = exhaustion.SlowUpload(srv.url, os.urandom(1 << 20), 65536)
    try:
        deadline = time.monotonic() + 20
        plain = exhaustion._Plain(srv.url, srv.proc, str(srv.data))
        while plain.metric("wogit_uploads_in_progress") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plain.metric("wogit_uploads_in_progress") == 1
        for kind, chunked in ((names.CONFIG, False), (names.MAP, True)):
            refused = upload(srv, kind, b"x: 1\n" * 1000, chunked)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["Content-Type"] == "application/json"
            assert refused.headers["Connection"] == "close"  # its body was not read
            assert refused.json() == {"msg": "this registry takes 1 upload at once and as many are running; "
                                             "retry in 1 s"}
        assert requests.get(srv.url + "/v1", timeout=10).status_code == 200
        status, body = held.finish()
        assert (status, json.loads(body)) == (201, {"digest": sha256(held.data)})
    finally:
        held.close()
    while plain.metric("wogit_uploads_in_progress") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = upload(srv, names.CONFIG, b"after: 1\n")
    assert (after.status_code, after.json()) == (201, {"digest": sha256(b"after: 1\n")})


def test_refused_uploads_that_go_on_sending_hold_no_worker(fresh_server):
    """Each refused upload's connection drops what its client still sends for up to 5 s before
    it closes: not in a worker (5 here: 1 for the held upload, and 4 refused ones still sending)."""
    srv = fresh_server(None, "--threads", "5", "--max-uploads", "1")
    held = exhaustion.SlowUpload(srv.url, os.urandom(1 << 20), 65536)
    senders = []
    try:
        deadline = time.monotonic() + 20
        plain = exhaustion._Plain(srv.url, srv.proc, str(srv.data))
        while plain.metric("wogit_uploads_in_progress") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
            senders.append(sock)
        answers = []
        for sock in senders:  # each answered 503 while it keeps sending
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}\n"):
                sock.sendall(b"x" * 4096)
                answer += sock.recv(65536)
            answers.append(status_of(answer))
        assert answers == [503] * 4
        stop = threading.Event()

        def go_on_sending():  # a packet every 0.1 s: the server reads and drops them for 5 s
            while not stop.wait(0.1):
                for sock in senders:
                    try:
                        sock.sendall(b"x" * 4096)
                    except OSError:
                        pass

        sending = threading.Thread(target=go_on_sending)
        sending.start()
        try:
            time.sleep(0.3)
            assert requests.get(srv.url + "/v1", timeout=3).status_code == 200  # old: waited 5 s for a worker
        finally:
            stop.set()
            sending.join()
    finally:
        for sock in senders:
            sock.close()
        held.close()


@pytest.mark.parametrize("case", ["too large", "too many uploads"])
def test_a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer(fresh_server, case):
    """A refusal answered before the body is read: the client (requests: it reads only once it
    has sent all) gets the answer, not a reset, while the server drops the rest of the body."""
    srv = fresh_server(None, "--threads", "6", "--max-uploads", "1", "--max-map-size", "1M")
    held = exhaustion.SlowUpload(srv.url, os.urandom(1 << 20), 65536) if case == "too many uploads" else None
    try:
        if held is not None:
            deadline = time.monotonic() + 20
            plain = exhaustion._Plain(srv.url, srv.proc, str(srv.data))
            while plain.metric("wogit_uploads_in_progress") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        body = os.urandom(900 << 10) if held is not None else os.urandom(8 << 20)
        refused = requests.put(srv.url + "/blobs/upload", data=body, timeout=30)
        assert (refused.status_code, refused.headers["Connection"]) == ((503 if held else 413), "close")
        assert "msg" in refused.json()
    finally:
        if held is not None:
            held.close()


def test_the_client_sends_an_upload_again_after_retry_after(fresh_server, tmp_path):
    srv = fresh_server(None, "--threads", "4", "--max-uploads", "1")
    held = exhaustion.SlowUpload(srv.url, os.urandom(1 << 20), 65536)
    plain = exhaustion._Plain(srv.url, srv.proc, str(srv.data))
    deadline = time.monotonic() + 20
    while plain.metric("wogit_uploads_in_progress") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "map").write_bytes(b"the map")
    (tmp_path / "config").write_bytes(b"the: config\n")
    pushed = {}

    def push() -> None:
        with Client(srv.url) as client:
            pushed["result"] = client.push("osm", "area", "v1", tmp_path / "map", tmp_path / "config")
    pusher = threading.Thread(target=push)
    pusher.start()
    while (plain.metric('wogit_http_requests_total{method="PUT",route="/blobs/upload",status="503"}') is None
           and time.monotonic() < deadline + 30):
        time.sleep(0.05)  # refused at least once: then the held upload ends
    assert held.finish()[0] == 201
    pusher.join(60)
    assert pushed["result"].map_uploaded and pushed["result"].tag_created
    assert requests.head(srv.url + "/osm/area/v1", timeout=10).headers["Wo-Map-Digest"] == sha256(b"the map")


def test_max_uploads_defaults_to_the_threads_less_four(tmp_path):
    assert Settings().upload_slots == 28
    assert Settings(threads=3).upload_slots == 1
    assert Settings(threads=8, max_uploads=6).upload_slots == 6
    assert Settings.from_env({"WOGIT_MAX_UPLOADS": "7"}).max_uploads == 7
    file = tmp_path / "wogit.toml"
    file.write_text("[server]\nmax_uploads = 2\n")
    assert config.load(str(file)).server["max_uploads"] == 2
    file.write_text("[server]\nmax_uploads = -1\n")
    with pytest.raises(config.ConfigError, match="max_uploads"):
        config.load(str(file))
