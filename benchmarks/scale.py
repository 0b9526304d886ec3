#!/usr/bin/env python3
"""Does wogit stay flat as the registry grows?  Per-tag operations, one map's tag listing,
start-up time and server memory in registries of 1,000, 100,000 and 1,000,000 tags.

    .venv/bin/python benchmarks/scale.py --quick      # 1,000 vs 100,000 tags, about a minute
    .venv/bin/python benchmarks/scale.py              # and 1,000,000 tags (the first run generates it)

Registries come from ``benchmarks/scale_registry.py`` (valid ones: ``wogit fsck`` accepts
them), cached by size under ``$WOGIT_SCALE_CACHE`` (default ``<workdir>/scale-cache``), and
each run serves a hard-linked copy (``cp -al``), so the cache stays as generated.

One ``wogit serve`` per size runs at the same time; each figure is the median of many
requests on one kept-alive connection, and the sizes are measured round by round, each
round every case on every size, so a round's ratio to the 1,000-tag registry compares
requests made within seconds of each other.  Start-up is process start to the first
answered ``GET /readyz``, on fresh processes; the first tag read after it is the cold
figure.  Each registry's pack and packed-refs are read once before (``warm_page_cache``): the
figures are wogit's work, not the disk's.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("scale_registry", Path(__file__).with_name("scale_registry.py"))
registry = sys.modules.setdefault("scale_registry", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(registry)

BASE = 1_000
FORMAT = 1  # bump when scale_registry.py changes what it writes: cached registries are remade
TARGET_RATIO = 1.5
STARTUP_MS = 2000.0


@dataclass
class Server:
    size: int
    data: str
    proc: subprocess.Popen
    port: int
    conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, ok: tuple[int, ...] = (200,),
                headers: dict | None = None) -> float:
        """One request on the kept-alive connection, read to its end: milliseconds.  A connection
        the server closed while it idled (its keep-alive timeout) is opened again, untimed."""
        for attempt in (1, 2):
            reused = self.conn is not None
            if not reused:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.conn.connect()
            started = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                answer = self.conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                self.conn = None
                if reused and attempt == 1:
                    continue
                raise
            data = answer.read()
            took = (time.perf_counter() - started) * 1000
            break
        if answer.status not in ok:
            raise RuntimeError(f"{method} {path} on the {self.size}-tag registry: {answer.status} {data[:300]!r}")
        if answer.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return took

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM, RssAnon, RssFile of the server process, in KiB."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                    out[key] = int(value.split()[0])
        return out

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- registries -----------------------------------------------------------------------------------------

def cached_registry(cache: Path, size: int, python: str, log) -> tuple[Path, dict]:
    """The generated registry of ``size`` tags (made now if the cache lacks it) and how it was made."""
    path = cache / f"registry-{size}-v{FORMAT}"
    info = cache / f"registry-{size}-v{FORMAT}.json"
    if path.is_dir() and info.is_file():
        made = json.loads(info.read_text())
        made["cached"] = True
        return path, made
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"partial-{size}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"generating a registry of {size:,} tags in {path}")
    made = registry.generate(str(partial), size, python=python)
    os.rename(partial, path)
    info.write_text(json.dumps(made))
    made["cached"] = False
    return path, made


def working_copy(source: Path, workdir: Path, size: int) -> Path:
    """A copy to serve and change: hard links (git replaces files, never rewrites them)."""
    copy = workdir / f"scale-run-{size}-{os.getpid()}"
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", str(source), str(copy)], check=True)
    return copy


def warm_page_cache(data: Path) -> None:
    """Read the registry's pack and packed-refs once, so every size is measured from memory: a
    machine whose page cache cannot hold a registry reads it from disk, at any speed (what is
    measured here is the work wogit does, not the disk)."""
    for path in [data / "packed-refs", *(data / "objects" / "pack").glob("*")]:
        with open(path, "rb") as file:
            while file.read(1 << 24):
                pass


def start(python: str, data: Path, size: int, log_path: Path) -> tuple[Server, float]:
    """``wogit serve`` on port 0, and the milliseconds from process start to its first ``/readyz`` 200."""
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python, "-m", "wogit", "serve", "--data", str(data), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=log, cwd=ROOT, text=True)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise RuntimeError(f"wogit serve did not start on the {size}-tag registry: {line!r} (see {log_path})")
    server = Server(size, str(data), proc, int(line.rsplit(":", 1)[1].strip().rstrip("/")))
    server.request("GET", "/readyz")
    return server, (time.perf_counter() - started) * 1000


# -- what is measured ---------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    run: object  # (server, round, i) -> milliseconds


def cases(plans: dict[int, list], rng_seed: int = 6) -> list[Case]:
    """The per-tag operations and listings, each on tags picked at random (the same number of
    distinct tags at every size), so a lookup is not always the same cached one."""
    picks = {}
    for size, plan in plans.items():
        rng = random.Random(rng_seed)
        maps = [p for p in plan if p.repository != "probe"]
        chosen = [rng.choice(maps) for _ in range(16)]
        picks[size] = [(p, registry.tag_name(rng.randrange(p.tags))) for p in chosen]

    def pick(server, i):
        return picks[server.size][i % len(picks[server.size])]

    def head_tag(server, r, i):
        p, tag = pick(server, i)
        return server.request("HEAD", f"/{p.repository}/{p.map}/{tag}")

    def get_tarball(server, r, i):
        p, tag = pick(server, i)
        return server.request("GET", f"/{p.repository}/{p.map}/{tag}")

    def get_key(server, r, i):
        p, _ = pick(server, i)
        return server.request("GET", f"/{p.repository}/{p.map}/metadata/region")

    def put_metadata(server, r, i):
        p, _ = pick(server, i)
        return server.request("PUT", f"/{p.repository}/{p.map}/metadata", f"bench=r{r}i{i}".encode(),
                              headers={"Content-Type": "text/plain"})

    def create_tag(server, r, i):
        p, tag = pick(server, i)
        body = json.dumps({"map_digest": _digest(registry._map_bytes(p.repository, p.map, tag)),
                           "config_digest": _digest(registry._config_bytes(p.repository, p.map))}).encode()
        return server.request("PUT", f"/{p.repository}/{p.map}/bench-r{r}-{i}", body, ok=(201,),
                              headers={"Content-Type": "application/json"})

    def list_tags(map: str):
        return lambda server, r, i: server.request("GET", f"/probe/{map}/_tags")

    def catalog(server, r, i):
        return server.request("GET", "/_catalog")

    return [
        Case("tag lookup: HEAD /<r>/<m>/<tag>", head_tag),
        Case("tarball GET of a small tag", get_tarball),
        Case("GET /<r>/<m>/metadata/<key>", get_key),
        Case("PUT /<r>/<m>/metadata (one key)", put_metadata),
        Case("tag creation: PUT /<r>/<m>/<tag>", create_tag),
        Case("GET /<r>/<m>/_tags of a 100-tag map", list_tags("hundred")),
        Case("GET /<r>/<m>/_tags of a 10-tag map", list_tags("ten")),
        Case("GET /_catalog (101 repositories at every size)", catalog),
    ]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ratios(values: list[float], base: list[float]) -> list[float]:
    """[median, min, max] of the round-by-round ratios (round i at this size over round i at 1,000)."""
    pairs = [v / b for v, b in zip(values, base)]
    return [round(statistics.median(pairs), 3), round(min(pairs), 3), round(max(pairs), 3)]


def row(case: str, size: int, values: list[float], base: list[float], target: str, met: bool | None,
        note: str = "", metric: str = "ms") -> dict:
    return {"section": "scale", "case": f"{case} ({size:,} tags)", "metric": metric,
            "wogit": [round(v, 3) for v in values], "baseline": f"{BASE:,} tags",
            "baseline_runs": [round(v, 3) for v in base], "ratio": ratios(values, base),
            "target": target, "met": met, "note": note}


def run(ctx) -> list[dict]:
    quick = bool(ctx.quick)
    workdir = Path(ctx.workdir)
    python = getattr(ctx, "python", None) or sys.executable
    log = getattr(ctx, "log", None) or (lambda msg: print(f"  [scale] {msg}", file=sys.stderr, flush=True))
    cache = Path(os.environ.get("WOGIT_SCALE_CACHE") or workdir / "scale-cache")
    sizes = [BASE, 100_000] if quick else [BASE, 100_000, 1_000_000]
    rounds, per_round, starts = (5, 12, 4) if quick else (7, 40, 9)
    made, copies, servers = {}, {}, {}
    server_log = workdir / "scale-servers.log"
    try:
        for size in sizes:
            source, made[size] = cached_registry(cache, size, python, log)
            copies[size] = working_copy(source, workdir, size)
        # Start-up, cold: fresh processes, one size after the other, round by round.
        startup = {size: [] for size in sizes}
        first = {size: [] for size in sizes}
        load = [os.getloadavg()[0]]
        plans = {size: registry.plan(size) for size in sizes}
        cold = {size: [p for p in plans[size] if p.repository != "probe"][-5:] for size in sizes}  # untouched elsewhere
        for size in sizes:
            warm_page_cache(copies[size])
        for _ in range(starts):
            for size in sizes:
                server, took = start(python, copies[size], size, server_log)
                try:
                    for p in cold[size]:
                        first[size].append(server.request("HEAD", f"/{p.repository}/{p.map}/{registry.tag_name(0)}"))
                finally:
                    server.stop()
                startup[size].append(took)
            load.append(os.getloadavg()[0])
        # Warm: one server per size, every case on every size in each round.
        for size in sizes:
            warm_page_cache(copies[size])
            servers[size], _ = start(python, copies[size], size, server_log)
        measured = cases(plans)
        medians = {(c.name, size): [] for c in measured for size in sizes}
        for r in range(rounds):
            for case in measured:
                order = sizes if r % 2 == 0 else sizes[::-1]
                for size in order:
                    server = servers[size]
                    for i in range(3):  # warm this case's path on this connection
                        case.run(server, r, 1000 + i)
                    times = [case.run(server, r, i) for i in range(per_round)]
                    medians[(case.name, size)].append(statistics.median(times))
            log(f"round {r + 1}/{rounds} done")
        memory = {size: servers[size].status() for size in sizes}
    finally:
        for server in servers.values():
            server.stop()
        for copy in copies.values():
            shutil.rmtree(copy, ignore_errors=True)
    rows = []
    n_note = f"median of {per_round} requests on a kept-alive connection, per round; {rounds} rounds"
    for case in measured:
        for size in sizes[1:]:
            values, base = medians[(case.name, size)], medians[(case.name, BASE)]
            ratio = ratios(values, base)
            if case.name.startswith("GET /_catalog"):  # not a per-tag operation: shown, no target
                rows.append(row(case.name, size, values, base, "report", None,
                                n_note + "; a look-up per repository (O(repositories x log refs))"))
            else:
                rows.append(row(case.name, size, values, base, f"<= {TARGET_RATIO}x", ratio[0] <= TARGET_RATIO,
                                n_note))
    for size in sizes[1:]:
        ratio = ratios(first[size], first[BASE])
        rows.append(row("first tag lookups after start-up (cold process)", size, first[size], first[BASE],
                        f"<= {TARGET_RATIO}x", ratio[0] <= TARGET_RATIO,
                        f"HEAD of 5 tags right after /readyz, on each of {starts} fresh processes"))
    for size in sizes[1:]:
        gen = made[size]
        note = (f"process start to the first GET /readyz 200; {starts} starts, load average "
                f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores; registry: {gen['refs']:,} refs, "
                f"{gen['objects']:,} objects, generated in {gen['seconds']:.1f} s"
                + (" (cached)" if gen.get("cached") else ""))
        rows.append(row("start-up", size, startup[size], startup[BASE], f"< {STARTUP_MS / 1000:g} s",
                        statistics.median(startup[size]) < STARTUP_MS, note))
    for size in sizes[1:]:
        mem, base = memory[size], memory[BASE]
        rows.append(row("server anonymous RSS (its own memory) after the warm rounds", size,
                        [mem["RssAnon"] / 1024], [base["RssAnon"] / 1024], f"<= {TARGET_RATIO}x",
                        mem["RssAnon"] <= TARGET_RATIO * base["RssAnon"],
                        f"peak RSS {mem['VmHWM'] / 1024:.0f} MiB (1,000 tags: {base['VmHWM'] / 1024:.0f}); "
                        f"{mem['Threads']} threads", metric="MiB"))
        rows.append(row("server file-backed RSS (mapped page cache) after the warm rounds", size,
                        [mem["RssFile"] / 1024], [base["RssFile"] / 1024], "report", None,
                        "libgit2 maps the pack index whole and the pack in windows: pages the server "
                        "touched, shared and clean, which the kernel reclaims", metric="MiB"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 vs 100,000 tags only")
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/wogit-scale",
                        help="working copies, server log and (without $WOGIT_SCALE_CACHE) the cache")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    ctx = argparse.Namespace(quick=args.quick, workdir=args.workdir, python=sys.executable)
    started = time.monotonic()
    rows = run(ctx)
    for r in rows:
        median = statistics.median(r["wogit"])
        base = statistics.median(r["baseline_runs"])
        print(f"{r['case']:<62} {median:9.2f} {r['metric']:<3} (1,000: {base:8.2f})  "
              f"ratio {r['ratio'][0]:.2f} ({r['ratio'][1]:.2f}-{r['ratio'][2]:.2f})  "
              f"{r['target']:<7} {({True: 'met', False: 'NOT MET', None: ''})[r['met']]}  {r['note']}")
    print(f"{time.monotonic() - started:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
