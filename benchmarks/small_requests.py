"""Small requests: throughput and p50/p99 latency at 8 and 32 kept-alive connections, 1 and 2 processes.

GET a metadata key, GET the tarball of a small map (4 KiB), PUT metadata (a new value each
time), PUT a new tag (a new name each time), each against a hello-world Bottle app on cheroot
with the same number of threads per process (the framework's ceiling), measured run by run
beside it. The writes are also set beside the disk's limit for a durable write (baselines.py
durable: a file written, fsync'd, renamed, its directory fsync'd, per request; one process, a
thread per connection): no target, it says how far the fsyncs alone allow. Two processes: `wogit serve --workers 2` when wogit has that flag; the hello-world
app runs two processes on one port (SO_REUSEPORT). The load comes from wrk (with
benchmarks/wrk/bench.lua) or, without wrk, from benchmarks/loadgen.py; every answer's status is
checked, and a run with a wrong status or a socket error is a failure, left out of the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess

from benchlib import (BENCH, CONFIG, BenchError, check, json_request, paired_ratio, row, server_flags,
                      settle)

SECTION = "requests"
SMALL_MAP = bytes(range(256)) * 16  # 4 KiB
CONNECTIONS = (8, 32)


def cases(digests: tuple[str, str]) -> list[tuple[str, dict]]:
    """(name, the load generator's environment) of each kind of request."""
    tag_body = json.dumps({"map_digest": digests[0], "config_digest": digests[1]})
    return [
        ("GET metadata key", {"BENCH_KIND": "static", "BENCH_PATH": "/bench/small/metadata/license",
                              "BENCH_EXPECT": "200"}),
        ("GET tarball (4 KiB map)", {"BENCH_KIND": "static", "BENCH_PATH": "/bench/small/v1", "BENCH_EXPECT": "200"}),
        ("PUT metadata", {"BENCH_KIND": "metadata", "BENCH_PATH": "/bench/small/metadata",
                          "BENCH_CONTENT_TYPE": "text/plain", "BENCH_EXPECT": "200"}),
        ("PUT new tag", {"BENCH_KIND": "tag", "BENCH_PATH": "/bench/small/t", "BENCH_BODY": tag_body,
                         "BENCH_CONTENT_TYPE": "application/json", "BENCH_EXPECT": "201"}),
    ]


HELLO = {"BENCH_KIND": "static", "BENCH_PATH": "/hello", "BENCH_EXPECT": "200"}
DURABLE = {"BENCH_KIND": "metadata", "BENCH_PATH": "/durable", "BENCH_EXPECT": "200"}  # PUT, a new body each time
DURABLE_NAME = "durable write (write+fsync+rename+fsync dir)"
WRITES = ("PUT metadata", "PUT new tag")


def load(ctx, server, env: dict, conns: int, seconds: int) -> dict:
    """One load run: req/s, p50 and p99 in ms, and ``errors`` (wrong statuses, socket errors).

    Then waits for the server to be idle: what the load left in flight must not slow the next run.
    """
    env, url = {**os.environ, **env}, server.url
    if ctx.load == "wrk":
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "--latency",
                "-s", str(BENCH / "wrk" / "bench.lua"), url]
    else:
        argv = [ctx.python, str(BENCH / "loadgen.py"), url, str(conns), str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    settle(server)
    match = re.search(r"^BENCH (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise BenchError(f"{argv[0]} failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(match.group(1))
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    errors = []
    if r["bad"]:
        errors.append(f"{r['bad']} answers not {env['BENCH_EXPECT']} (e.g. {r['first_bad']})")
    if socket_errors:
        errors.append(f"{socket_errors} socket errors")
    if not r["requests"]:
        errors.append(f"no answer within {seconds} s")
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
            "errors": "; ".join(errors)}


def prepare(server) -> tuple[str, str]:
    """A small map tagged bench/small/v1 with one metadata key; its digests."""
    map_digest = json_request(server.url + "/blobs/upload", "PUT", data=SMALL_MAP, expect=201).headers["Wo-Map-Digest"]
    config_digest = json_request(server.url + "/configs/upload", "PUT", data=CONFIG, expect=201).headers["Wo-Config-Digest"]
    check(map_digest == "sha256:" + hashlib.sha256(SMALL_MAP).hexdigest(), f"small map digest {map_digest}")
    json_request(server.url + "/bench/small/v1", "PUT", json={"map_digest": map_digest, "config_digest": config_digest},
                 expect=201)
    json_request(server.url + "/bench/small/metadata", "PUT", data=b"license=ODbL-1.0", expect=200)
    check(json_request(server.url + "/bench/small/metadata/license").text == "ODbL-1.0", "metadata key")
    return map_digest, config_digest


def default_threads(ctx) -> int:
    match = re.search(r"--threads THREADS\s+.*?default (\d+)", server_flags(ctx), re.S)
    return int(match.group(1)) if match else 32


def connections(ctx, procs: int) -> tuple[int, ...]:
    """8 and 32; --quick measures two processes at 32 only (where the p99 target is), to stay short."""
    return CONNECTIONS[-1:] if ctx.quick and procs > 1 else CONNECTIONS


def measure(ctx, process_counts: tuple[int, ...], threads: int) -> tuple[dict, dict, dict]:
    """{(procs, conns, case): [runs]} for wogit, {(procs, conns): [runs]} for hello-world and
    {conns: [runs]} for the durable-write baseline.

    Every server runs from the start: within one run every process count takes its turn, so
    "2 processes vs 1" compares runs made seconds apart, like every other ratio.
    """
    servers, hellos, kinds = {}, {}, {}
    durable = ctx.baseline("durable", "--dir", str(ctx.tempdir("durable-writes")), name="durable")
    try:
        for procs in process_counts:
            servers[procs] = ctx.wogit(*(["--workers", str(procs)] if procs > 1 else []), name=f"requests-{procs}p")
            hellos[procs] = ctx.baseline("hello", "--threads", str(threads), "--processes", str(procs),
                                         name=f"hello-{procs}p")
            kinds[procs] = cases(prepare(servers[procs]))
            load(ctx, hellos[procs], HELLO, 8, 1)  # warm-up, not counted
            load(ctx, servers[procs], kinds[procs][0][1], 8, 1)
        wogit, baseline, writes = {}, {}, {}
        for conns in CONNECTIONS:
            counts = [procs for procs in process_counts if conns in connections(ctx, procs)]
            ctx.log(f"requests, {conns} connections, {'/'.join(map(str, counts))} process(es): {ctx.runs} x "
                    f"{len(counts)} x ({1 + len(kinds[1])} x {ctx.duration} s), {ctx.load}, and the durable-write baseline")
            for n in range(ctx.runs):
                for procs in counts:
                    baseline.setdefault((procs, conns), []).append(load(ctx, hellos[procs], HELLO, conns, ctx.duration))
                    if procs == 1:
                        writes.setdefault(conns, []).append(load(ctx, durable, DURABLE, conns, ctx.duration))
                    for name, env in kinds[procs]:
                        if env["BENCH_KIND"] == "tag":
                            env = {**env, "BENCH_PATH": f"{env['BENCH_PATH']}{procs}p{conns}c{n}-"}
                        wogit.setdefault((procs, conns, name), []).append(
                            load(ctx, servers[procs], env, conns, ctx.duration))
        return wogit, baseline, writes
    finally:
        for proc in [*servers.values(), *hellos.values(), durable]:
            proc.stop()


def clean_pairs(values: list[dict], baseline: list[dict], key: str) -> tuple[list[float], list[float]]:
    """The runs where neither side had an error, as two lists of ``key``."""
    pairs = [(v[key], b[key]) for v, b in zip(values, baseline) if not v["errors"] and not b["errors"]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def failures(values: list[dict], baseline: list[dict]) -> str:
    bad = [f"wogit: {v['errors']}" for v in values if v["errors"]] + [f"baseline: {b['errors']}" for b in baseline
                                                                       if b["errors"]]
    return f"FAILED {len(bad)} run(s): {bad[0]}" if bad else ""


def rows_for(procs: int, threads: int, wogit: dict, baseline: dict, load_name: str) -> list[dict]:
    rows = []
    name = f"hello-world ({threads} threads x {procs})"
    for (p, conns, case), runs in wogit.items():
        if p != procs:
            continue
        label = f"{case}, {conns} conns, {procs} proc"
        hello = baseline[(procs, conns)]
        failed = failures(runs, hello)
        w, b = clean_pairs(runs, hello, "rps")
        ratio = paired_ratio(w, b)
        rows.append(row(SECTION, label, "req/s", w, name, b, ratio, ">= 0.5x",
                        False if failed or not ratio else ratio[0] >= 0.5, failed or load_name))
        w99, b99 = clean_pairs(runs, hello, "p99")
        w50, b50 = clean_pairs(runs, hello, "p50")
        p99 = statistics.median(w99) if w99 else None
        note = f"p50 {statistics.median(w50):.2f} ms (hello {statistics.median(b50):.2f} ms)" if w50 else ""
        target = "< 20 ms" if conns == 32 else ""
        rows.append(row(SECTION, label, "p99 ms", w99, name, b99, paired_ratio(w99, b99), target,
                        (False if failed or p99 is None else p99 < 20) if target else None, failed or note))
    return rows


def durable_rows(wogit: dict, writes: dict) -> list[dict]:
    """The writes of one process beside the durable-write baseline, run by run (no target)."""
    rows = []
    for (procs, conns, case), runs in wogit.items():
        if procs != 1 or case not in WRITES:
            continue
        failed = failures(runs, writes[conns])
        w, b = clean_pairs(runs, writes[conns], "rps")
        p50 = clean_pairs(runs, writes[conns], "p50")[1]
        rows.append(row(SECTION, f"{case}, {conns} conns, 1 proc", "req/s", w, DURABLE_NAME, b, paired_ratio(w, b),
                        note=failed or (f"the fsyncs' limit; its p50 {statistics.median(p50):.2f} ms" if p50 else "")))
    return rows


def scaling_rows(wogit: dict, baseline: dict) -> list[dict]:
    """2 processes over 1, run by run, for what both measured."""
    rows = []
    for (procs, conns, case), runs in wogit.items():
        if procs != 2:
            continue
        one = wogit[(1, conns, case)]
        failed = failures(runs, one)
        w, b = clean_pairs(runs, one, "rps")
        ratio = paired_ratio(w, b)
        h2, h1 = clean_pairs(baseline[(2, conns)], baseline[(1, conns)], "rps")
        hello = paired_ratio(h2, h1)
        rows.append(row(SECTION, f"{case}, {conns} conns, 2 vs 1 proc", "req/s", w, "wogit, 1 process", b, ratio,
                        ">= 1.6x", False if failed or not ratio else ratio[0] >= 1.6,
                        failed or (f"hello-world: {hello[0]:.2f}x" if hello else "")))
    return rows


def run(ctx) -> list[dict]:
    threads = default_threads(ctx)
    load_name = "wrk" if ctx.load == "wrk" else "Python load generator (no wrk)"
    workers = "--workers" in server_flags(ctx)
    wogit, baseline, writes = measure(ctx, (1, 2) if workers else (1,), threads)
    rows = rows_for(1, threads, wogit, baseline, load_name) + durable_rows(wogit, writes)
    if not workers:
        return rows + [row(SECTION, "2 processes", "req/s", [], target=">= 1.6x",
                           note="not measured: `wogit serve --help` lists no --workers")]
    return rows + rows_for(2, threads, wogit, baseline, load_name) + scaling_rows(wogit, baseline)
