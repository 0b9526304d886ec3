"""Resource exhaustion: full disks and too many uploads at once.

Disk full, for real (no mocks): the server runs on a small tmpfs of its own, mounted in a
user and mount namespace (``unshare --user --map-root-user --mount``: no privilege needed);
the harness reaches that file system through ``/proc/<server pid>/root``, fills it with a
filler file (``posix_fallocate``) so that exactly N bytes stay free, drives one write, checks
the answer and the repository, deletes the filler and checks the server recovers (the same
write succeeds, without a restart).  Where user namespaces are not allowed, each file the
server writes is limited to N bytes instead (``RLIMIT_FSIZE``, set on the running server with
``prlimit``; SIGXFSZ ignored, so writes fail with EFBIG).

Writes: map and config uploads (Content-Length and chunked), tag creation, metadata set and
delete, tag deletion (each at several fill levels: nothing free, half the body, all but the
last blocks, all but the ref update...), downloads whose tarball or inflated map is being
cached when the disk fills (the cache is disposable: the download must not fail), and
``wogit gc`` (loose and packed refs).  After each: the exact status (507, or a 2xx that is
then verified), a JSON ``{"msg": ...}`` body, nothing partial (no ``tmp_*`` objects, no
``*.lock``, no cache ``partial-*``, refs unchanged, ``git fsck --strict`` clean), and recovery.

Too many uploads: N slow uploads held open on a server with ``--max-uploads N``; the (N+1)th
must get 503 with ``Retry-After`` and a JSON msg at once while reads are still served; once
one finishes, a new upload succeeds; a flood of refused uploads keeps the server's memory
bounded.

    .venv/bin/python reliability/exhaustion.py [--short] [--output FILE]

Prints the figures (scenarios, 507s, 503s, violations) and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wogit import names  # noqa: E402

PAGE = 4096
TMPFS_SIZE = 192 << 20  # what a --short run stores (maps, tarballs cached), with room to spare
HEADROOM = 48 << 20  # free between scenarios (the rest is ballast): room for any one scenario
INFINITY = resource.RLIM_INFINITY


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a server on a disk that can be filled ---------------------------------------------------

def user_namespaces_work() -> bool:
    """Whether an unprivileged user and mount namespace can mount a tmpfs here."""
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="wogit-exhaust-probe-")
    try:
        result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                 f"mount -t tmpfs -o size=1m tmpfs {probe}"], capture_output=True, timeout=30)
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.rmdir(probe)


def rlimit_works() -> bool:
    return sys.platform.startswith("linux") and hasattr(resource, "prlimit")


class TightServer:
    """``wogit serve`` on a disk whose free space the harness sets.

    ``mode`` "tmpfs": a tmpfs of ``size`` bytes mounted in the server's own mount namespace;
    ``self.root`` is the mount seen from outside (``/proc/<pid>/root/<mount>``).  ``mode``
    "rlimit": an ordinary directory, each file the server (and the git it runs) writes limited
    to the "free" bytes (RLIMIT_FSIZE)."""

    def __init__(self, mode: str, *args: str, size: int = TMPFS_SIZE):
        self.mode = mode
        self.mount = tempfile.mkdtemp(prefix="wogit-exhaust-")
        self.log = open(os.path.join(tempfile.gettempdir(), os.path.basename(self.mount) + ".log"), "w+")
        serve = [sys.executable, "-m", "wogit", "serve", "--port", "0", *args]
        if mode == "tmpfs":
            data = os.path.join(self.mount, "registry.git")
            command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                       'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"', "sh", str(size),
                       self.mount, *serve, "--data", data]
            preexec = None
        else:
            command = [*serve, "--data", os.path.join(self.mount, "registry.git")]
            preexec = _ignore_sigxfsz
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                     preexec_fn=preexec)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://[\d.]+:\d+)", line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"the server did not start: {line}{self.log.read()}")
        self.url = match.group(1)
        self.root = f"/proc/{self.proc.pid}/root{self.mount}" if mode == "tmpfs" else self.mount
        self.git_dir = os.path.join(self.root, "registry.git")  # for this process's own file operations
        # git and libgit2 resolve /proc/<pid>/root away: commands run inside the server's namespaces
        self.enter = (["nsenter", f"--target={self.proc.pid}", "--user", "--mount", "--preserve-credentials"]
                      if mode == "tmpfs" else [])
        self.command_git_dir = os.path.join(self.mount, "registry.git")
        self.filler = os.path.join(self.root, "filler")
        self.ballast = os.path.join(self.root, "ballast")
        self.session = requests.Session()
        self.recover()  # the ballast: HEADROOM free

    # -- the disk ---------------------------------------------------------------------------

    def free(self) -> int:
        disk = os.statvfs(self.root)
        return disk.f_bavail * disk.f_frsize

    def leave(self, free: int) -> None:
        """Fill the disk so that ``free`` bytes (rounded down to pages) stay free."""
        self.recover()
        if self.mode == "rlimit":
            resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (free, INFINITY))
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            length = 0
            for _ in range(1000):  # the server may be writing meanwhile (a cache entry): measure again
                extra = self.free() - free // PAGE * PAGE
                if extra <= 0:
                    break
                try:
                    os.posix_fallocate(fd, length, extra)
                    length += extra
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if free == 0:  # whatever is left, a page at a time
                        while True:
                            try:
                                os.posix_fallocate(fd, length, PAGE)
                                length += PAGE
                            except OSError:
                                return
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Give the space back."""
        if self.mode == "rlimit":
            resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (INFINITY, INFINITY))
            return
        try:
            os.unlink(self.filler)
        except FileNotFoundError:
            pass
        self._keep_headroom()

    def _keep_headroom(self) -> None:
        """Keep ``HEADROOM`` free beside the ballast (a second filler, never removed): what the
        writes store meanwhile is taken from the ballast, and filling the disk for a scenario
        allocates no more than the headroom (fast, whatever the tmpfs' size)."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size, free = os.fstat(fd).st_size, self.free()
            if free > HEADROOM:
                os.posix_fallocate(fd, size, (free - HEADROOM) // PAGE * PAGE)
            elif free < HEADROOM:
                os.ftruncate(fd, max(0, size - (HEADROOM - free + PAGE - 1) // PAGE * PAGE))
        finally:
            os.close(fd)

    def limit_for_children(self):
        """A preexec_fn giving a command (wogit gc) the server's limit (rlimit mode)."""
        if self.mode != "rlimit":
            return None
        soft, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)

        def apply() -> None:
            _ignore_sigxfsz()
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return apply

    # -- the repository -----------------------------------------------------------------------

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, "git", "--git-dir", self.command_git_dir, *args], capture_output=True, text=True,
                              check=check, env={**os.environ, "LC_ALL": "C"})

    def refs(self) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)").stdout
        return dict(line.split(" ") for line in out.splitlines())

    def leftovers(self) -> list[str]:
        """Files a failed write must not leave: temporary objects, locks, partial cache entries."""
        found = []
        for folder, _, files in os.walk(self.git_dir):
            for name in files:
                if name.startswith(("tmp_", "partial-")) or name.endswith((".lock", ".new")):
                    found.append(os.path.relpath(os.path.join(folder, name), self.git_dir))
        return sorted(found)

    def fsck(self) -> str | None:
        result = self.git("fsck", "--strict", "--no-dangling", "--no-progress", check=False)
        problems = [line for line in (result.stdout + result.stderr).splitlines()
                    if line.strip() and not line.startswith("notice: ")]
        return None if result.returncode == 0 and not problems else "; ".join(problems) or f"exit {result.returncode}"

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def metric(self, name: str) -> float | None:
        for line in self.session.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def stop(self) -> None:
        self.session.close()
        _stop(self.proc)
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        os.unlink(self.log.name)
        if self.mode == "rlimit":
            shutil.rmtree(self.mount, ignore_errors=True)
        else:
            os.rmdir(self.mount)  # the tmpfs went with its namespace
        self.log_text = text


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (requests in flight finish), SIGKILL if the server is still there 30 s later."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ignore_sigxfsz() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past RLIMIT_FSIZE fail with EFBIG instead


# -- the checks ---------------------------------------------------------------------------------

@dataclass
class Figures:
    mode: str = ""
    scenarios: int = 0
    status_507: int = 0
    status_503: int = 0
    succeeded_2xx: int = 0  # writes that fitted in what was left, verified
    downloads_while_full: int = 0
    gc_runs: int = 0
    recoveries: int = 0
    flood_uploads: int = 0
    rss_growth_bytes: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Harness:
    def __init__(self, server: TightServer, figures: Figures, short: bool):
        self.srv = server
        self.figures = figures
        self.short = short
        self.rng = random.Random(7)
        self.counter = 0

    def violation(self, scenario: str, what: str) -> None:
        self.figures.violations.append(f"{scenario}: {what}")

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def check_error(self, scenario: str, reply: requests.Response | Exception, status: int) -> bool:
        """The exact status, JSON content type and a {"msg": str} body; False (a violation) if not."""
        if isinstance(reply, Exception):
            self.violation(scenario, f"no answer: {reply!r}")
            return False
        if reply.status_code != status:
            self.violation(scenario, f"status {reply.status_code}, not {status}: {reply.text[:200]}")
            return False
        if reply.headers.get("Content-Type") != "application/json":
            self.violation(scenario, f"Content-Type {reply.headers.get('Content-Type')!r}")
            return False
        try:
            body = reply.json()
        except ValueError:
            self.violation(scenario, f"not JSON: {reply.text[:200]!r}")
            return False
        if set(body) != {"msg"} or not isinstance(body["msg"], str) or not body["msg"]:
            self.violation(scenario, f"not {{'msg': ...}}: {body!r}")
            return False
        return True

    def check_clean(self, scenario: str, refs_before: dict[str, str] | None) -> None:
        """Nothing partial: no leftovers (waiting a little for background cache seals), fsck, refs."""
        deadline = time.monotonic() + 5
        while (left := self.srv.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            self.violation(scenario, f"left behind: {left}")
        problem = self.srv.fsck()
        if problem:
            self.violation(scenario, f"git fsck --strict: {problem}")
        if refs_before is not None:
            after = self.srv.refs()
            if after != refs_before:
                changed = sorted(set(after.items()) ^ set(refs_before.items()))
                self.violation(scenario, f"refs changed: {changed[:4]}")

    def attempt(self, scenario: str, free: int, send, must_fail: bool, ok_status: int, verify) -> None:
        """One write with ``free`` bytes left: 507 (nothing changed) or ``ok_status`` (verified);
        then the space is given back and the same write must succeed (unless it had)."""
        self.figures.scenarios += 1
        name = f"{scenario} @{free}B"
        before = self.srv.refs()
        self.srv.leave(free)
        try:
            try:
                reply = send()
            except requests.RequestException as exc:
                reply = exc
            if not isinstance(reply, Exception) and reply.status_code == ok_status and not must_fail:
                self.figures.succeeded_2xx += 1
                self.srv.recover()
                self.check_clean(name, None)
                verify(name, reply)
                return
            if self.check_error(name, reply, 507):
                self.figures.status_507 += 1
            self.check_clean(name, before)
        finally:
            self.srv.recover()
        again = send()
        if again.status_code != ok_status:
            self.violation(name, f"after the space came back: {again.status_code} {again.text[:200]}")
            return
        self.figures.recoveries += 1
        verify(name + " (recovered)", again)
        self.check_clean(name + " (recovered)", None)

    # -- writes -------------------------------------------------------------------------------

    def upload(self, kind: str, data: bytes, chunked: bool) -> requests.Response:
        path = "/blobs/upload" if kind == names.MAP else "/configs/upload"
        body = iter([data[i:i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
        return self.srv.session.put(self.srv.url + path, data=body, timeout=60)

    def verify_blob(self, kind: str, data: bytes):
        def verify(name: str, reply: requests.Response) -> None:
            if reply.json() != {"digest": _digest(data)}:
                self.violation(name, f"201 with {reply.text[:200]}")
            path = "/blobs/" if kind == names.MAP else "/configs/"
            got = self.srv.session.get(self.srv.url + path + _digest(data), timeout=60)
            if got.status_code != 200 or got.content != data:
                self.violation(name, f"stored {kind} reads back {got.status_code}, {len(got.content)} bytes")
        return verify

    def uploads(self) -> None:
        map_size = (1536 if self.short else 4096) << 10
        config_size = 96 << 10
        for kind, size in ((names.MAP, map_size), (names.CONFIG, config_size)):
            for chunked in (False, True):
                levels = [0, size // 2, size + 2 * PAGE]
                if chunked:  # spooled first: the body is on disk twice
                    levels += [size + size // 2]
                if not self.short:
                    levels += [size - PAGE, size - 64, size + PAGE, size + 8 * PAGE, 2 * size - PAGE,
                               2 * size + 4 * PAGE]
                for free in sorted(set(levels)):
                    if kind == names.MAP:
                        data = self.rng.randbytes(size)
                    else:
                        data = b"".join(b"key%d: %d\n" % (i, self.rng.randrange(10 ** 9))
                                        for i in range(size // 16))[:size]
                    scenario = f"upload {kind} {'chunked' if chunked else 'Content-Length'}"
                    self.attempt(scenario, free, lambda d=data: self.upload(kind, d, chunked),
                                 must_fail=free < size // 2, ok_status=201, verify=self.verify_blob(kind, data))

    def pushed(self, map_data: bytes | None = None) -> tuple[str, str, str, str]:
        """A map and a config uploaded (with room): their digests and a fresh repository/map name."""
        map_data = map_data or self.rng.randbytes(4096)
        config = b"c: %d\n" % self.rng.randrange(10 ** 12)
        for kind, data in ((names.MAP, map_data), (names.CONFIG, config)):
            reply = self.upload(kind, data, False)
            assert reply.status_code in (201, 409), reply.text
        return _digest(map_data), _digest(config), self.unique("repo"), "area"

    def small_levels(self) -> list[int]:
        return [0, 2 * PAGE] if self.short else [0, PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE, 6 * PAGE]

    def tags(self) -> None:
        for free in self.small_levels():
            map_digest, config_digest, repo, map_ = self.pushed()
            path = f"{self.srv.url}/{repo}/{map_}/v1"
            body = {"map_digest": map_digest, "config_digest": config_digest}

            def verify(name: str, reply: requests.Response, path=path, body=body) -> None:
                got = self.srv.session.head(path, timeout=30)
                if got.status_code != 200 or got.headers.get("Wo-Map-Digest") != body["map_digest"]:
                    self.violation(name, f"the tag reads back {got.status_code} {dict(got.headers)}")
            self.attempt("create tag", free, lambda p=path, b=body: self.srv.session.put(p, json=b, timeout=30),
                         must_fail=free == 0, ok_status=201, verify=verify)

    def metadata(self) -> None:
        map_digest, config_digest, repo, map_ = self.pushed()
        base = f"{self.srv.url}/{repo}/{map_}"
        assert self.srv.session.put(base + "/v1", json={"map_digest": map_digest, "config_digest": config_digest},
                                    timeout=30).status_code == 201
        for free in self.small_levels():
            key, value = self.unique("k"), "v" * self.rng.randrange(1, 3000)

            def verify(name: str, reply: requests.Response, key=key, value=value) -> None:
                got = self.srv.session.get(f"{base}/metadata/{key}", timeout=30)
                if got.status_code != 200 or got.text != value:
                    self.violation(name, f"metadata {key} reads back {got.status_code} {got.text[:80]!r}")
            self.attempt("set metadata", free, lambda k=key, v=value: self.srv.session.put(
                base + "/metadata", data=f"{k}={v}", headers={"Content-Type": "text/plain"}, timeout=30),
                must_fail=free == 0, ok_status=200, verify=verify)
        for free in self.small_levels()[:2]:
            key = self.unique("gone")
            assert self.srv.session.put(base + "/metadata", data=f"{key}=x", timeout=30).status_code == 200

            def verify(name: str, reply: requests.Response, key=key) -> None:
                got = self.srv.session.get(f"{base}/metadata/{key}", timeout=30)
                if got.status_code != 404:
                    self.violation(name, f"deleted key {key} reads back {got.status_code}")
            self.attempt("delete metadata", free, lambda k=key: self.srv.session.delete(
                f"{base}/metadata/{k}", timeout=30), must_fail=free == 0, ok_status=200, verify=verify)
        # packed: room for the deletion's commit and history ref, not for a new packed-refs
        for packed, free in [(False, level) for level in self.small_levels()[:2]] + [
                (True, level) for level in (0, 2 * PAGE, 3 * PAGE)]:
            tag = self.unique("t")
            assert self.srv.session.put(f"{base}/{tag}", json={"map_digest": map_digest,
                                        "config_digest": config_digest}, timeout=30).status_code == 201

            def verify(name: str, reply: requests.Response, tag=tag) -> None:
                got = self.srv.session.get(f"{base}/{tag}", timeout=30)
                if got.status_code != 404:
                    self.violation(name, f"deleted tag {tag} reads back {got.status_code}")
            if packed:  # as an operator's git gc leaves them: deleting one rewrites packed-refs
                while len(self.srv.refs()) < 100:  # a packed-refs of several pages
                    assert self.upload(names.CONFIG, b"n: %d\n" % self.rng.randrange(10 ** 12), False).status_code == 201
                self.srv.git("pack-refs", "--all")
            self.attempt(f"delete tag ({'packed' if packed else 'loose'} refs)", free,
                         lambda t=tag: self.srv.session.delete(f"{base}/{t}", timeout=30),
                         must_fail=free == 0, ok_status=200, verify=verify)

    # -- downloads being cached -------------------------------------------------------------------

    def downloads(self) -> None:
        """A tarball (and an inflated map) is cached while its first download streams: a disk that
        is full before, or fills during, the download must not fail it, and no partial entry stays."""
        # Stored blocks: a tarball of 16 MiB, cached on disk as it streams (more than the socket's
        # buffers take, so the server is still writing the cache's file when the disk fills).
        big = self.rng.randbytes(16 << 20)
        compressible = self.rng.randbytes(16 << 10) * 1024  # 16 MiB that git keeps compressed: inflated, cached
        map_digest, config_digest, repo, map_ = self.pushed(big)
        compressible_digest = self.pushed(compressible)[0]
        tag = f"{self.srv.url}/{repo}/{map_}/v1"
        assert self.srv.session.put(tag, json={"map_digest": map_digest, "config_digest": config_digest},
                                    timeout=30).status_code == 201
        cases = [("tarball", tag, "full before"), ("tarball", tag, "fills during"),
                 ("inflated map", f"{self.srv.url}/blobs/{compressible_digest}", "fills during")]
        if not self.short:
            cases.append(("inflated map", f"{self.srv.url}/blobs/{compressible_digest}", "full before"))
        for what, url, when in cases:
            self.figures.scenarios += 1
            self.figures.downloads_while_full += 1
            name = f"download {what}, disk {when}"
            if what == "tarball":  # a new metadata state: a new tarball, not in the cache yet
                assert self.srv.session.put(f"{tag.rsplit('/', 1)[0]}/metadata",
                                            data=f"round={self.unique('')}", timeout=30).status_code == 200
            else:
                shutil.rmtree(os.path.join(self.srv.git_dir, "wogit-cache", "blobs"), ignore_errors=True)
            before = self.srv.refs()
            namespace = "tarballs" if what == "tarball" else "blobs"
            cached_before = set(self._cached(namespace))
            if when == "full before":
                self.srv.leave(0)
            try:
                with self.srv.session.get(url, stream=True, timeout=60) as reply:
                    chunks = reply.iter_content(65536)
                    first = next(chunks, b"")
                    if when == "fills during":
                        self.srv.leave(0)
                    content = first + b"".join(chunks)
                    status = reply.status_code
            except requests.RequestException as exc:
                self.violation(name, f"the download failed: {exc!r}")
                self.srv.recover()
                continue
            self.check_clean(name, before)  # with the disk still full: no partial entry left
            if set(self._cached(namespace)) - cached_before:
                self.violation(name, "cached although the disk was full")
            self.srv.recover()
            if status != 200:
                self.violation(name, f"status {status}")
                continue
            if what == "tarball":
                self._check_tarball(name, content, big)
            elif content != compressible:
                self.violation(name, f"the map came back as {len(content)} other bytes")
            again = self.srv.session.get(url, timeout=60)
            if again.status_code != 200 or again.content != content:
                self.violation(name, f"after the space came back: {again.status_code}, other bytes")
                continue
            deadline = time.monotonic() + 10  # once there is room, the next download is cached
            while not set(self._cached(namespace)) - cached_before and time.monotonic() < deadline:
                time.sleep(0.05)
                self.srv.session.get(url, timeout=60).close()
            if not set(self._cached(namespace)) - cached_before:
                self.violation(name, f"nothing cached in {namespace} once the space came back")
            else:
                self.figures.recoveries += 1

    def _cached(self, namespace: str) -> list[str]:
        folder = os.path.join(self.srv.git_dir, "wogit-cache", namespace)
        try:
            return [n for n in os.listdir(folder) if not n.startswith("partial-")]
        except FileNotFoundError:
            return []

    def _check_tarball(self, name: str, content: bytes, map_data: bytes) -> None:
        try:
            with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
                got = tar.extractfile("map").read()
        except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
            self.violation(name, f"not a whole tarball: {exc!r}")
            return
        if got != map_data:
            self.violation(name, "the tarball's map is not the tag's")

    # -- wogit gc ---------------------------------------------------------------------------------

    def gc(self) -> None:
        for packed in ((False,) if self.short else (False, True)):
            self.figures.scenarios += 1
            self.figures.gc_runs += 1
            name = f"wogit gc, disk full, {'packed' if packed else 'loose'} refs"
            unused = self.rng.randbytes(8192)
            assert self.upload(names.MAP, unused, False).status_code == 201
            index = names.blob_ref(names.MAP, _digest(unused))
            tree = self.srv.refs()[index]
            blob = self.srv.git("rev-parse", f"{tree}:map").stdout.strip()
            old = time.time() - 7200  # untouched for two hours: past the grace period
            for oid in (tree, blob):
                os.utime(os.path.join(self.srv.git_dir, "objects", oid[:2], oid[2:]), (old, old))
            if packed:
                self.srv.git("pack-refs", "--all")
            self.srv.leave(0)
            try:
                result = self.run_gc()
                if "Traceback" in result.stderr or result.returncode not in (0, 1):
                    self.violation(name, f"exit {result.returncode}: {result.stderr[-400:]}")
                elif result.returncode == 0 and index in self.srv.refs():
                    self.violation(name, "exit 0, the unused upload not swept, and not a word why")
                elif result.returncode == 1 and not (json.loads(result.stdout or "{}").get("problems")
                                                     or result.stderr.startswith("wogit gc: ")):
                    self.violation(name, f"exit 1 without a problem named: {result.stdout[-300:]} {result.stderr[-300:]}")
                self.check_clean(name, None)
            finally:
                self.srv.recover()
            fsck = self.run_wogit("fsck")
            if fsck.returncode != 0:
                self.violation(name, f"wogit fsck after: {fsck.stdout[-400:]}{fsck.stderr[-400:]}")
            again = self.run_gc()
            if again.returncode != 0:
                self.violation(name, f"gc once the space came back: exit {again.returncode} {again.stderr[-300:]}")
            elif index in self.srv.refs():
                self.violation(name, "gc once the space came back did not sweep the unused upload")
            else:
                self.figures.recoveries += 1
            self.check_clean(name + " (recovered)", None)

    def run_gc(self) -> subprocess.CompletedProcess:
        return self.run_wogit("gc", "--grace", "1m", "--json")

    def run_wogit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.srv.enter, sys.executable, "-m", "wogit", args[0], "--data",
                               self.srv.command_git_dir, *args[1:]],
                              capture_output=True, text=True, cwd=ROOT, timeout=120,
                              preexec_fn=self.srv.limit_for_children())


# -- too many uploads ---------------------------------------------------------------------------------

class SlowUpload:
    """An upload whose body is sent only in part, held open, until ``finish``."""

    def __init__(self, url: str, data: bytes, sent: int):
        host, port = url.removeprefix("http://").split(":")
        self.data = data
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data)
                          + data[:sent])
        self.sent = sent

    def finish(self) -> tuple[int, bytes]:
        self.sock.sendall(self.data[self.sent:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        self.close()
        return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]

    def close(self) -> None:
        self.sock.close()


def _length(answer: bytes) -> int:
    match = re.search(rb"\r\nContent-Length: (\d+)\r\n", answer.partition(b"\r\n\r\n")[0] + b"\r\n", re.I)
    return int(match.group(1)) if match else 0


def flood(figures: Figures, short: bool, slots: int = 3, threads: int = 8) -> None:
    """N slow uploads held open; the (N+1)th is 503 at once; reads still served; after one
    finishes a new upload succeeds; a flood of refused uploads keeps memory bounded."""
    data_dir = tempfile.mkdtemp(prefix="wogit-exhaust-flood-")
    proc = None
    held: list[SlowUpload] = []
    rng = random.Random(11)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "wogit", "serve", "--data", os.path.join(data_dir, "r.git"),
                                 "--port", "0", "--threads", str(threads), "--max-uploads", str(slots)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        url = re.search(r"on (http://[\d.]+:\d+)", proc.stdout.readline()).group(1)
        srv = _Plain(url, proc, os.path.join(data_dir, "r.git"))
        harness = Harness(srv, figures, short)
        session = requests.Session()
        held = [SlowUpload(url, rng.randbytes(2 << 20), 65536) for _ in range(slots)]
        deadline = time.monotonic() + 20
        while srv.metric("wogit_uploads_in_progress") != slots and time.monotonic() < deadline:
            time.sleep(0.05)
        if srv.metric("wogit_uploads_in_progress") != slots:
            harness.violation("flood", f"the {slots} slow uploads are not all running")
            return
        rss_before = srv.rss()
        for kind, chunked in ((names.MAP, False), (names.MAP, True), (names.CONFIG, False)):
            figures.scenarios += 1
            figures.flood_uploads += 1
            name = f"upload {kind} {'chunked' if chunked else 'Content-Length'} beyond {slots} at once"
            started = time.monotonic()
            reply = harness.upload(kind, b"x: 1\n" * 100, chunked)
            if harness.check_error(name, reply, 503):
                figures.status_503 += 1
                if reply.headers.get("Retry-After") != "1":
                    harness.violation(name, f"Retry-After {reply.headers.get('Retry-After')!r}, not '1'")
                if time.monotonic() - started > 10:
                    harness.violation(name, "the 503 was not immediate (over 10 s)")
            read = session.get(url + "/v1", timeout=10)
            if read.status_code != 200:
                harness.violation(name, f"a read meanwhile: {read.status_code}")
        # Many refused uploads at once, each with a body of 1 MiB: memory stays flat.
        body = rng.randbytes(1 << 20)
        statuses: list[int] = []

        def refused() -> None:
            try:
                statuses.append(requests.put(url + "/blobs/upload", data=body, timeout=30).status_code)
            except requests.RequestException:
                statuses.append(-1)
        workers = [threading.Thread(target=refused) for _ in range(16 if short else 64)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        figures.flood_uploads += len(workers)
        figures.rss_growth_bytes = max(0, srv.rss() - rss_before)
        if set(statuses) != {503}:
            harness.violation("flood of refused uploads", f"statuses {sorted(set(statuses))}, not all 503")
        figures.status_503 += statuses.count(503)
        if figures.rss_growth_bytes > 64 << 20:
            harness.violation("flood of refused uploads", f"RSS grew by {figures.rss_growth_bytes >> 20} MiB")
        figures.scenarios += 1
        status, answer = held.pop(0).finish()
        if status != 201:
            harness.violation("a held upload finished", f"status {status}: {answer[:200]!r}")
        deadline = time.monotonic() + 10
        while srv.metric("wogit_uploads_in_progress") != slots - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        again = harness.upload(names.CONFIG, b"after: %d\n" % rng.randrange(10 ** 9), False)
        if again.status_code != 201:
            harness.violation("an upload once a slot is free", f"{again.status_code} {again.text[:200]}")
        else:
            figures.recoveries += 1
        for upload in held:
            upload.close()
        held = []
        harness.check_clean("flood (after the held uploads were dropped)", None)
    finally:
        for upload in held:
            upload.close()
        if proc is not None:
            _stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


class _Plain(TightServer):
    """A server on an ordinary disk (the flood needs no tight one)."""

    def __init__(self, url: str, proc: subprocess.Popen, git_dir: str):
        self.url, self.proc, self.git_dir, self.mode = url, proc, git_dir, "plain"
        self.enter, self.command_git_dir = [], git_dir
        self.session = requests.Session()


# -- the run ----------------------------------------------------------------------------------------

def run(short: bool = False, mode: str | None = None) -> Figures:
    started = time.monotonic()
    mode = mode or ("tmpfs" if user_namespaces_work() else "rlimit" if rlimit_works() else "")
    figures = Figures(mode=mode)
    if mode:
        srv = TightServer(mode, size=TMPFS_SIZE if short else 2 * TMPFS_SIZE)
        try:
            harness = Harness(srv, figures, short)
            harness.uploads()
            harness.tags()
            harness.metadata()
            harness.downloads()
            harness.gc()
        finally:
            srv.stop()
        if "Traceback" in srv.log_text:
            figures.violations.append("the server logged a traceback:\n" + srv.log_text[-2000:])
    flood(figures, short)
    figures.seconds = round(time.monotonic() - started, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="fewer fill levels and scenarios (the test suite's)")
    parser.add_argument("--mode", choices=["tmpfs", "rlimit"], help="how to fill the disk (default: tmpfs in a "
                                                                     "user namespace if allowed, else rlimit)")
    parser.add_argument("--output", help="write the figures as JSON to FILE")
    args = parser.parse_args(argv)
    if args.mode is None and not user_namespaces_work() and not rlimit_works():
        print("exhaustion: skipped: neither user namespaces (unshare) nor RLIMIT_FSIZE (prlimit) are available")
    figures = run(args.short, args.mode)
    print(f"exhaustion ({figures.mode or 'no disk-full mode'}{', short' if args.short else ''}): "
          f"{figures.scenarios} scenarios, {figures.status_507} answered 507, {figures.status_503} answered 503, "
          f"{figures.succeeded_2xx} writes fitted (verified), {figures.downloads_while_full} downloads with a "
          f"full disk, {figures.gc_runs} gc runs, {figures.recoveries} recoveries, RSS growth under a flood "
          f"{figures.rss_growth_bytes >> 20} MiB, {len(figures.violations)} violations, {figures.seconds} s")
    for violation in figures.violations:
        print("VIOLATION", violation)
    if args.output:
        Path(args.output).write_text(json.dumps(asdict(figures), indent=1) + "\n")
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
