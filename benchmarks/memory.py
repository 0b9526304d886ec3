#!/usr/bin/env python3
"""How much memory and time a real `wogit serve` needs for big maps, next to plain tools.

For each size (``--size-mib``, default 1024; give several to see whether memory
grows with size) this starts `python -m wogit serve` on a fresh temporary data
directory and port 0, writes two maps of that size (random bytes, and
compressible text), and for each map:

* uploads it with ``curl -T - < file`` (chunked) and ``curl -T file``
  (Content-Length) to ``PUT /blobs/upload``, uploads a small config, tags them,
  downloads the tag's tarball with curl to a file;
* verifies every digest (upload answers, download headers, the tarball's
  ``map`` and ``config`` members against the files);
* reads the server's peak RSS (``VmHWM`` in ``/proc/<pid>/status``) after each
  phase, resetting it before each phase (``/proc/<pid>/clear_refs``) so each
  figure is that phase's own peak, and measures throughput in MiB/s;
* runs baselines on the same file in the same run: ``sha256sum``,
  ``git hash-object -w`` into a scratch repository, ``cat file > /dev/null``.

It prints a table and writes JSON to ``benchmarks/results/memory.json``.
Ratios, not pass/fail: the only failures are wrong digests or statuses.
Needs Linux (/proc), curl, git, sha256sum, cat, and ``requests``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MiB = 1 << 20
CHUNK = 4 * MiB
CONFIG = b"map:\n  format: benchmark\nrouting:\n  profile: driving\n"


# -- measurements -------------------------------------------------------------

@dataclass
class Measure:
    """One timed step: a server phase or a baseline tool."""
    name: str
    seconds: float
    mib_s: float | None
    peak_rss_kib: int  # the server's VmHWM during the phase, or the tool's own max RSS
    status: int | None = None
    rss_after_kib: int | None = None  # the server's VmRSS after the phase
    note: str = ""


@dataclass
class FileResult:
    kind: str
    size_bytes: int
    sha256: str
    phases: list[Measure] = field(default_factory=list)
    baselines: list[Measure] = field(default_factory=list)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)


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


def run_tool(argv: list[str], stdin=None, stdout=None) -> tuple[float, int, bytes]:
    """Run a command; its wall time, its own peak RSS (KiB) and its stdout. Fails on exit != 0.

    The peak is the child's VmHWM, sampled every millisecond until it exits (the last
    sample is kept: VmHWM only grows).  ``wait4``'s ``ru_maxrss`` cannot be used: Linux
    carries the forking Python process's high-water mark over ``exec`` into it.
    Popen returns only once the child has exec'd, so every sample is the tool's own.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout if stdout is not None else out, stderr=err)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, proc_status(proc.pid).get("VmHWM", 0))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.001)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.read().decode(errors='replace')}")
        out.seek(0)
        return seconds, peak, out.read()


# -- test data ----------------------------------------------------------------

def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(os.urandom(n))
            left -= n


def write_text(path: Path, size: int) -> None:
    """OSM-XML-like lines with varying numbers: compresses about 5:1 with zlib level 1."""
    with open(path, "wb") as out:
        left, node = size, 0
        while left:
            lines = []
            for _ in range(8192):
                node += 1
                lines.append(f'  <node id="{node}" lat="{60 + (node * 7919 % 100000) / 1e5:.7f}" '
                             f'lon="{24 + (node * 104729 % 100000) / 1e5:.7f}" version="1" '
                             f'user="mapper{node % 97}"/>\n')
            block = "".join(lines).encode()[:left]
            out.write(block)
            left -= len(block)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# -- the server -----------------------------------------------------------------

class Server:
    def __init__(self, data: Path, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://[\d.]+:\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}; see {log}")
        self.url = match.group(1)
        self.pid = self.proc.pid
        requests.get(self.url + "/v1", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def curl(args: list[str], headers_file: Path, stdin=None) -> tuple[float, int]:
    """Run curl; wall seconds and the final HTTP status."""
    argv = ["curl", "-sS", "-D", str(headers_file), "-w", "%{http_code}", *args]
    seconds, _, out = run_tool(argv, stdin=stdin)
    return seconds, int(out.decode().strip()[-3:])


def header(headers_file: Path, name: str) -> str | None:
    value = None
    for line in headers_file.read_text("latin-1").splitlines():
        key, _, rest = line.partition(":")
        if key.strip().lower() == name.lower():
            value = rest.strip()
    return value


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"memory.py: MISMATCH: {what}")


# -- one size ---------------------------------------------------------------------

def bench_file(server: Server, kind: str, path: Path, size: int, work: Path) -> FileResult:
    mib = size / MiB
    hdrs = work / f"{kind}.headers"

    def phase(name: str, action, note: str = "") -> Measure:
        reset_peak(server.pid)
        seconds, status = action()
        stat = proc_status(server.pid)
        measure = Measure(name, round(seconds, 3), round(mib / seconds, 1) if seconds else None,
                          stat["VmHWM"], status, stat["VmRSS"], note)
        result.phases.append(measure)
        return measure

    # Baselines first: they also compute the reference digest.
    seconds, rss, out = run_tool(["sha256sum", str(path)])
    digest = "sha256:" + out.split()[0].decode()
    result = FileResult(kind, size, digest)
    result.baselines.append(Measure("sha256sum", round(seconds, 3), round(mib / seconds, 1), rss))
    scratch = work / f"scratch-{kind}.git"
    subprocess.run(["git", "init", "-q", "--bare", str(scratch)], check=True)
    seconds, rss, _ = run_tool(["git", "--git-dir", str(scratch), "hash-object", "-w", str(path)])
    result.baselines.append(Measure("git hash-object -w", round(seconds, 3), round(mib / seconds, 1), rss))
    shutil.rmtree(scratch)
    with open(path, "rb") as stdin:
        seconds, rss, _ = run_tool(["cat"], stdin=stdin, stdout=subprocess.DEVNULL)
    result.baselines.append(Measure("cat > /dev/null", round(seconds, 3), round(mib / seconds, 1), rss))

    # Uploads: chunked from stdin, then with Content-Length (the second finds the map stored: 409,
    # but the server still reads, hashes and writes the whole body before it knows).
    def upload_chunked():
        with open(path, "rb") as stdin:
            return curl(["-T", "-", server.url + "/blobs/upload"], hdrs, stdin=stdin)

    m = phase("upload chunked (curl -T - < file)", upload_chunked)
    check(m.status in (201, 409), f"{kind}: chunked upload answered {m.status}")
    check(header(hdrs, "Wo-Map-Digest") == digest, f"{kind}: chunked upload digest {header(hdrs, 'Wo-Map-Digest')}")

    m = phase("upload Content-Length (curl -T file)",
              lambda: curl(["-T", str(path), server.url + "/blobs/upload"], hdrs))
    check(m.status in (201, 409), f"{kind}: Content-Length upload answered {m.status}")
    check(header(hdrs, "Wo-Map-Digest") == digest,
          f"{kind}: Content-Length upload digest {header(hdrs, 'Wo-Map-Digest')}")

    reply = requests.put(server.url + "/configs/upload", data=CONFIG + kind.encode() + b"\n", timeout=60)
    check(reply.status_code in (201, 409), f"{kind}: config upload answered {reply.status_code}")
    config_digest = reply.headers["Wo-Config-Digest"]
    check(config_digest == "sha256:" + hashlib.sha256(CONFIG + kind.encode() + b"\n").hexdigest(),
          f"{kind}: config digest {config_digest}")
    reply = requests.put(f"{server.url}/bench/{kind}/v1", timeout=60,
                         json={"map_digest": digest, "config_digest": config_digest})
    check(reply.status_code == 201, f"{kind}: tag answered {reply.status_code}: {reply.text}")

    tarball = work / f"{kind}.tar.gz"
    m = phase("download tarball (curl -o file)",
              lambda: curl(["-o", str(tarball), f"{server.url}/bench/{kind}/v1"], hdrs))
    m.note = f"tarball {tarball.stat().st_size / MiB:.1f} MiB"
    check(m.status == 200, f"{kind}: download answered {m.status}")
    check(header(hdrs, "Wo-Map-Digest") == digest, f"{kind}: download Wo-Map-Digest {header(hdrs, 'Wo-Map-Digest')}")
    check(header(hdrs, "Wo-Config-Digest") == config_digest, f"{kind}: download Wo-Config-Digest")

    # The tarball's members, hashed as they stream out of it.
    members = {}
    with tarfile.open(tarball, mode="r|gz") as tar:
        for member in tar:
            check(member.isreg(), f"{kind}: tarball member {member.name} is not a regular file")
            digest_of = hashlib.sha256()
            stream = tar.extractfile(member)
            while chunk := stream.read(CHUNK):
                digest_of.update(chunk)
            members[member.name] = "sha256:" + digest_of.hexdigest()
    check(list(members) == ["map", "metadata", "config"], f"{kind}: tarball members {list(members)}")
    check(members["map"] == digest, f"{kind}: tarball map has {members['map']}, not {digest}")
    check(members["config"] == config_digest, f"{kind}: tarball config has {members['config']}")
    check(members["metadata"] == "sha256:" + hashlib.sha256(b"").hexdigest(), f"{kind}: metadata not empty")
    tarball.unlink()

    # Ratios: server throughput as a fraction of each baseline's; server peak RSS over each tool's.
    for p in result.phases:
        result.ratios[p.name] = {}
        for b in result.baselines:
            result.ratios[p.name][f"speed vs {b.name}"] = round(p.mib_s / b.mib_s, 3)
            result.ratios[p.name][f"peak RSS vs {b.name}"] = round(p.peak_rss_kib / b.peak_rss_kib, 2)
    return result


def bench_size(size_mib: int, workdir: Path | None) -> dict:
    size = size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix=f"wogit-bench-{size_mib}-", dir=workdir))
    try:
        files = {"random": work / "random.bin", "text": work / "text.osm"}
        print(f"\n== {size_mib} MiB: writing test files in {work}", flush=True)
        write_random(files["random"], size)
        write_text(files["text"], size)
        server = Server(work / "registry.git", work / "server.log")
        try:
            idle = proc_status(server.pid)
            can_reset = reset_peak(server.pid)
            results = []
            for kind, path in files.items():
                print(f"   {kind}: baselines, uploads, download ...", flush=True)
                results.append(bench_file(server, kind, path, size, work))
        finally:
            server.stop()
        objects = sum(f.stat().st_size for f in (work / "registry.git" / "objects").rglob("*") if f.is_file())
        return {
            "size_mib": size_mib,
            "server_idle_rss_kib": idle["VmRSS"],
            "server_idle_peak_kib": idle["VmHWM"],
            "peak_reset_per_phase": can_reset,
            "registry_objects_mib": round(objects / MiB, 1),
            "files": [asdict(r) for r in results],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- reporting --------------------------------------------------------------------

def print_run(run: dict) -> None:
    print(f"\n{run['size_mib']} MiB maps; server idle RSS {run['server_idle_rss_kib'] / 1024:.1f} MiB"
          + ("" if run["peak_reset_per_phase"] else " (VmHWM could not be reset: peaks are cumulative)"))
    head = f"  {'':38} {'status':>6} {'s':>8} {'MiB/s':>8} {'peak RSS MiB':>13} {'RSS after':>9}  " \
           f"{'speed/sha256sum':>15} {'speed/git':>9} {'speed/cat':>9}"
    for f in run["files"]:
        print(f"\n  {f['kind']} ({f['sha256'][:19]}...)")
        print(head)
        for p in f["phases"]:
            r = f["ratios"][p["name"]]
            print(f"  {p['name']:38} {p['status']:>6} {p['seconds']:>8.2f} {p['mib_s']:>8.1f} "
                  f"{p['peak_rss_kib'] / 1024:>13.1f} {p['rss_after_kib'] / 1024:>9.1f}  "
                  f"{r['speed vs sha256sum']:>15.3f} "
                  f"{r['speed vs git hash-object -w']:>9.3f} {r['speed vs cat > /dev/null']:>9.3f}"
                  + (f"  {p['note']}" if p["note"] else ""))
        for b in f["baselines"]:
            print(f"  {'baseline: ' + b['name']:38} {'':>6} {b['seconds']:>8.2f} {b['mib_s']:>8.1f} "
                  f"{b['peak_rss_kib'] / 1024:>13.1f}")


def growth(runs: list[dict]) -> list[dict]:
    """Per phase: the server's peak RSS at each size, and its growth per GiB of map."""
    if len(runs) < 2:
        return []
    small, big = runs[0], runs[-1]
    rows = []
    for fs, fb in zip(small["files"], big["files"]):
        for ps, pb in zip(fs["phases"], fb["phases"]):
            delta = pb["peak_rss_kib"] - ps["peak_rss_kib"]
            per_gib = delta / ((big["size_mib"] - small["size_mib"]) / 1024)
            rows.append({"file": fs["kind"], "phase": ps["name"],
                         f"peak_rss_kib_{small['size_mib']}": ps["peak_rss_kib"],
                         f"peak_rss_kib_{big['size_mib']}": pb["peak_rss_kib"],
                         "growth_kib": delta, "growth_kib_per_gib": round(per_gib)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, nargs="+", default=[1024],
                        help="map size in MiB; several sizes (e.g. 256 1024) show whether memory grows with size")
    parser.add_argument("--workdir", type=Path, help="where to put the temporary files (default: $TMPDIR)")
    parser.add_argument("--output", type=Path, default=RESULTS / "memory.json", help="the JSON report")
    args = parser.parse_args(argv)
    for tool in ("curl", "git", "sha256sum", "cat"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on the PATH")
    if not Path("/proc/self/status").exists():
        parser.error("needs Linux: the server's memory is read from /proc/<pid>/status")

    runs = [bench_size(size, args.workdir) for size in sorted(set(args.size_mib))]
    for run in runs:
        print_run(run)
    rows = growth(runs)
    if rows:
        a, b = runs[0]["size_mib"], runs[-1]["size_mib"]
        print(f"\n  server peak RSS, {a} MiB vs {b} MiB maps")
        for row in rows:
            print(f"  {row['file']:7} {row['phase']:38} {row[f'peak_rss_kib_{a}'] / 1024:8.1f} "
                  f"{row[f'peak_rss_kib_{b}'] / 1024:8.1f} MiB  {row['growth_kib'] / 1024:+6.1f} MiB "
                  f"({row['growth_kib_per_gib'] / 1024:+.1f} MiB per GiB of map)")

    report = {
        "benchmark": "wogit server memory and throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
        "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "runs": runs,
        "growth": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
