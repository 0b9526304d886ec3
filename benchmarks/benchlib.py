"""What every benchmark section shares: the run's context, servers, test maps, curl, rows.

A section is a module with ``run(ctx) -> list[dict]``; each dict is a row (see ``row``).
Every figure is measured next to a baseline in the same run, on the same file, interleaved
run by run, so the ratio of a run's pair is the number to read on a noisy shared machine.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB
CONFIG = b"map:\n  format: benchmark\nrouting:\n  profile: driving\n"
KINDS = ("random", "text")  # incompressible (os.urandom) and OSM-XML-like text (~5:1 with zlib level 1)


class BenchError(RuntimeError):
    """A wrong status, digest or byte: the run stops, it is never reported as a figure."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise BenchError(what)


# -- the run's context ------------------------------------------------------------------------------

@dataclass
class Context:
    """What a section gets: the mode, where to put files, which Python, helpers to start servers.

    ``workdir`` is this run's own temporary directory (removed at the end, with every file in it);
    every process started through ``start`` is killed by its PID at the end if still running.
    """
    quick: bool
    workdir: Path
    python: str = sys.executable
    root: Path = ROOT
    runs: int = 5
    size: int = 1 * GiB  # the big maps of upload, tarball, blob and memory
    memory_sizes: tuple[int, ...] = (1 * GiB, 4 * GiB)
    duration: int = 5  # seconds of each load-generator run (small requests)
    load: str = "wrk"  # "wrk" or "python"
    processes: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)  # (kind, phase, size) -> [peak RSS growth, MiB], see peak_growth
    peak_reset: bool = True  # False if /proc/PID/clear_refs was refused: peaks are then cumulative
    _maps: dict = field(default_factory=dict)
    _nonce: itertools.count = field(default_factory=lambda: itertools.count(1))

    def log(self, msg: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def tempdir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix + "-", dir=self.workdir))

    @property
    def downloads(self) -> Path:
        """Where downloads go: tmpfs when it has room (no writeback competing with the server's fsyncs)."""
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 3 * self.size + GiB:
            path = shm / f"{self.workdir.name}-downloads"
        else:
            path = self.workdir / "downloads"
        path.mkdir(exist_ok=True)
        return path

    def cleanup(self) -> None:
        for proc in self.processes:
            proc.stop()
        shm = Path("/dev/shm") / f"{self.workdir.name}-downloads"
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the test maps, written once per run and shared by the sections ---------------------------

    def map_file(self, kind: str, size: int | None = None) -> Path:
        size = self.size if size is None else size
        key = (kind, size)
        if key not in self._maps:
            path = self.workdir / "maps" / f"{kind}-{size // MiB}MiB.{'bin' if kind == 'random' else 'osm'}"
            path.parent.mkdir(exist_ok=True)
            self.log(f"writing the {kind} map of {size // MiB} MiB")
            (write_random if kind == "random" else write_text)(path, size)
            self._maps[key] = path
        return self._maps[key]

    def drop_map(self, kind: str, size: int) -> None:
        path = self._maps.pop((kind, size), None)
        if path is not None:
            path.unlink(missing_ok=True)

    def refresh(self, path: Path, digest: bool = True) -> str | None:
        """Make ``path`` new bytes (a unique first line) and return its sha256 digest (if asked).

        Every upload that is measured then really stores something: the same file, a few bytes
        changed, so no server (nor git) can answer "already there" without writing.
        """
        mark = b"<!-- %010d -->\n" % next(self._nonce)
        with open(path, "r+b") as f:
            f.write(mark)
        return sha256_file(path) if digest else None

    # -- processes ----------------------------------------------------------------------------------

    def start(self, argv: list[str], name: str, ready: str = r"on (http://[\d.]+:\d+)",
              env: dict[str, str] | None = None) -> Process:
        proc = Process(argv, name, self.tempdir(name) / "log", ready, env)
        self.processes.append(proc)
        return proc

    def wogit(self, *flags: str, name: str = "wogit") -> Process:
        """`python -m wogit serve` on a fresh data directory and port 0, with the defaults."""
        data = self.tempdir(name) / "registry.git"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WOGIT_")}  # measure the defaults
        proc = self.start([self.python, "-m", "wogit", "serve", "--data", str(data), "--port", "0", *flags],
                          name, env=env)
        proc.data, proc.flags = data, flags
        return proc

    def roomy(self, server: Process, size: int) -> Process:
        """``server``, or a fresh one (same flags) when ``size`` more bytes would take its data past
        4 GiB: the disk is shared, and 1 GiB maps uploaded run after run add up."""
        if tree_bytes(server.data) + size <= 4 * GiB:
            return server
        server.stop()
        self.processes.remove(server)
        return self.wogit(*server.flags, name=server.name)

    def baseline(self, *args: str, name: str) -> Process:
        """A server of benchmarks/baselines.py (minimal upload, sendfile, hello-world)."""
        return self.start([self.python, str(BENCH / "baselines.py"), *args], name)


class Process:
    """A server process: started, its URL read from its ready line, stopped by its PID."""

    def __init__(self, argv: list[str], name: str, log: Path, ready: str, env: dict[str, str] | None):
        self.name = name
        self.log = log
        self.data: Path | None = None  # a wogit server's data directory, and its flags
        self.flags: tuple[str, ...] = ()
        with open(log, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                         env=env, start_new_session=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        match = re.search(ready, line)
        if not match:
            self.stop()
            raise BenchError(f"{name} did not start: {line!r}\n{log.read_text()[-2000:]}")
        self.url = match.group(1)
        self.ready_line = line.strip()
        # Nobody reads the rest of its stdout: drain it, a full pipe would block the server.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGTERM to its PID (and its own children: its session), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.pid, signal.SIGKILL)  # children it left behind, if any (same session)
        except (ProcessLookupError, PermissionError):
            pass
        if self.data is not None:
            shutil.rmtree(self.data.parent, ignore_errors=True)


# -- test data ----------------------------------------------------------------------------------------

def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(os.urandom(n))
            left -= n


def text_block(first_node: int, lines: int = 8192) -> bytes:
    out = []
    for node in range(first_node, first_node + lines):
        out.append(f'  <node id="{node}" lat="{60 + (node * 7919 % 100000) / 1e5:.7f}" '
                   f'lon="{24 + (node * 104729 % 100000) / 1e5:.7f}" version="1" '
                   f'user="mapper{node % 97}"/>\n')
    return "".join(out).encode()


def write_text(path: Path, size: int) -> None:
    """OSM-XML-like lines with varying numbers: compresses about 5:1 with zlib level 1.

    Blocks of 64 MiB are written again with their numbers shifted (a cheap edit of one byte
    per line): zlib's 32 KiB window sees no repetition, and writing a GiB takes seconds.
    """
    block = bytearray()
    node = 1
    while len(block) < 64 * MiB and len(block) < size:
        block += text_block(node)
        node += 8192
    with open(path, "wb") as out:
        left, shift = size, 0
        while left:
            piece = block if shift == 0 else block.replace(b'version="1"', b'version="%d"' % (shift % 9 + 1))
            piece = bytes(piece[:left])
            out.write(piece)
            left -= len(piece)
            shift += 1


def tree_bytes(path: Path) -> int:
    """The bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def tar_members(path: Path) -> dict[str, str]:
    """name -> sha256 digest of each member of a .tar.gz, in order, streamed."""
    members = {}
    with tarfile.open(path, mode="r|gz") as tar:
        for member in tar:
            check(member.isreg(), f"tarball member {member.name} is not a regular file")
            digest = hashlib.sha256()
            stream = tar.extractfile(member)
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
            members[member.name] = "sha256:" + digest.hexdigest()
    return members


# -- curl and tools --------------------------------------------------------------------------------

@dataclass
class Transfer:
    status: int
    seconds: float  # curl's time_total: the transfer, without curl's start-up
    headers: dict[str, str]
    size_download: int


def curl(ctx: Context, *args: str, stdin=None) -> Transfer:
    """Run curl; its status, its own time_total and the last response's headers (lower-case names)."""
    headers = ctx.workdir / "curl.headers"
    out = subprocess.run(["curl", "-sS", "-D", str(headers), "-w", "%{http_code} %{time_total} %{size_download}",
                          *args], stdin=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"curl {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
    status, seconds, size = out.stdout.split()[-3:]
    found = {}
    for line in headers.read_text("latin-1").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            found[key.strip().lower()] = value.strip()
    return Transfer(int(status), float(seconds), found, int(float(size)))


def upload(ctx: Context, url: str, path: Path, chunked: bool = False) -> Transfer:
    """``curl -T file`` (Content-Length), or ``curl -T - < file`` (chunked)."""
    body = str(ctx.workdir / "curl.body")
    if not chunked:
        return curl(ctx, "-o", body, "-T", str(path), url)
    with open(path, "rb") as stdin:
        return curl(ctx, "-o", body, "-T", "-", url, stdin=stdin)


def download(ctx: Context, url: str, name: str) -> tuple[Transfer, Path]:
    """``curl -o file URL`` into the downloads directory."""
    path = ctx.downloads / name
    return curl(ctx, "-o", str(path), url), path


def against_sendfile(ctx: Context, server: Process, url: str, expected: str, sendfile: Process, digest: str,
                     kind: str, phase: str, size: int) -> tuple[list[float], list[float]]:
    """``ctx.runs`` pairs, in MiB/s of ``size``: ``url`` from wogit (the sha256 of what it sends must be
    ``expected``; its peak RSS growth recorded as ``phase``), then the raw map from ``sendfile``
    (``digest``)."""
    wogit, raw = [], []
    for _ in range(ctx.runs):
        with peak_growth(ctx, server, kind, phase, size):
            t, got = download(ctx, url, f"{kind}-{phase.replace(' ', '-')}")
        check(t.status == 200, f"GET {url} answered {t.status}")
        check(sha256_file(got) == expected, f"GET {url}: not the bytes expected ({expected})")
        got.unlink()
        wogit.append(mib_s(size, t.seconds))

        t, got = download(ctx, sendfile.url + "/map", f"{kind}-sendfile")
        check(t.status == 200 and sha256_file(got) == digest, "the sendfile server sent other bytes")
        got.unlink()
        raw.append(mib_s(size, t.seconds))
    return wogit, raw


def timed(argv: list[str], stdout=None) -> float:
    """Wall seconds of a command (start-up included); fails on a non-zero exit."""
    start = time.perf_counter()
    out = subprocess.run(argv, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()}")
    return seconds


def git(git_dir: Path, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(["git", "--git-dir", str(git_dir), *args], input=input, capture_output=True)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout.decode().strip()


def scratch_repo(ctx: Context, name: str) -> Path:
    repo = ctx.tempdir(name) / "scratch.git"
    git(repo.parent, "init", "-q", "--bare", str(repo))
    return repo


def json_request(url: str, method: str = "GET", data=None, json=None, expect: int | tuple = 200):
    import requests

    reply = requests.request(method, url, data=data, json=json, timeout=120)
    expected = expect if isinstance(expect, tuple) else (expect,)
    check(reply.status_code in expected, f"{method} {url} answered {reply.status_code}: {reply.text[:300]}")
    return reply


# -- /proc ---------------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, ... of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def server_flags(ctx: Context) -> str:
    """`wogit serve --help`, to see which flags this wogit has."""
    if not hasattr(ctx, "_help"):
        ctx._help = subprocess.run([ctx.python, "-m", "wogit", "serve", "--help"], capture_output=True,
                                   text=True, cwd=ROOT, env={"COLUMNS": "200", **os.environ}).stdout
    return ctx._help


# -- rows ----------------------------------------------------------------------------------------------

def spread(values: list[float]) -> list[float] | None:
    """[median, min, max] of some runs."""
    if not values:
        return None
    return [statistics.median(values), min(values), max(values)]


def paired_ratio(values: list[float], baseline: list[float]) -> list[float] | None:
    """[median, min, max] of run i's value over run i's baseline (runs are interleaved)."""
    pairs = [v / b for v, b in zip(values, baseline) if b]
    return spread(pairs)


def row(section: str, case: str, metric: str, wogit: list[float], baseline: str | None = None,
        baseline_runs: list[float] | None = None, ratio: list[float] | None = None, target: str = "",
        met: bool | None = None, note: str = "", **extra) -> dict:
    """One line of the table (the keys every section, scale.py too, uses)."""
    return {"section": section, "case": case, "metric": metric, "wogit": [round(v, 3) for v in wogit],
            "baseline": baseline, "baseline_runs": [round(v, 3) for v in baseline_runs or []],
            "ratio": [round(v, 3) for v in ratio] if ratio else None, "target": target, "met": met,
            "note": note, **extra}


def mib_s(size: int, seconds: float) -> float:
    return size / MiB / seconds if seconds > 0 else float("inf")


# -- server memory -------------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """A process and its descendants (a server may hand requests to worker processes)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except OSError:
            pass
    return pids


@contextmanager
def peak_growth(ctx: Context, server: Process, kind: str, phase: str, size: int):
    """Record the server's peak RSS growth during the block: VmHWM after - VmRSS before, in MiB.

    The peak is reset first (``/proc/PID/clear_refs``), so the figure is this transfer's own;
    with worker processes, their sum.  Stored in ``ctx.memory[(kind, phase, size)]`` for the
    memory section, which reuses what the other sections measured on the way.
    """
    pids = process_tree(server.pid)
    if not all(reset_peak(p) for p in pids):
        ctx.peak_reset = False
    before = sum(proc_status(p)["VmRSS"] for p in pids)
    yield
    peak = 0
    for p in pids:
        try:
            peak += proc_status(p)["VmHWM"]
        except OSError:
            pass
    ctx.memory.setdefault((kind, phase, size), []).append((peak - before) / 1024)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def open_connections(port: int) -> int:
    """Server-side TCP connections of a local port still open (ESTABLISHED or CLOSE_WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "08"):
                        count += 1
        except OSError:
            pass
    return count


def settle(server: Process, limit: float = 60.0) -> float:
    """Wait until the server has finished what a load generator left in flight when it stopped
    (its side of every connection closed) and is idle (under 10% of a core for 100 ms): that
    work must not slow the next run down. The seconds waited."""
    start = time.perf_counter()
    while open_connections(server.port) and time.perf_counter() - start < limit:
        time.sleep(0.05)
    pids = process_tree(server.pid)
    while time.perf_counter() - start < limit:
        before = cpu_seconds(pids)
        time.sleep(0.1)
        if cpu_seconds(pids) - before < 0.01:
            break
    return time.perf_counter() - start
