#!/usr/bin/env python3
"""A keep-alive HTTP load generator, for when wrk is not on the PATH.

    BENCH_KIND=static BENCH_METHOD=GET BENCH_PATH=/x BENCH_EXPECT=200 loadgen.py URL CONNECTIONS SECONDS

The same environment as benchmarks/wrk/bench.lua, the same last line: ``BENCH {json}``.
Connections are spread over one process per core, one thread per connection, each on its own
kept-alive http.client connection. It is Python: on a small machine it, not the server, may be
the limit, which the ratio to the baseline measured with it in the same run accounts for.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import sys
import threading
import time
from urllib.parse import urlsplit


def spec() -> dict:
    env = os.environ
    return {"kind": env.get("BENCH_KIND", "static"), "method": env.get("BENCH_METHOD", "GET"),
            "path": env.get("BENCH_PATH", "/"), "body": env.get("BENCH_BODY"),
            "content_type": env.get("BENCH_CONTENT_TYPE"), "expect": int(env.get("BENCH_EXPECT", "200"))}


def connection(host: str, port: int, s: dict, deadline: float, name: str, out: dict) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": s["content_type"]} if s["content_type"] else {}
    counter = 0
    while time.perf_counter() < deadline:
        counter += 1
        method, path, body = s["method"], s["path"], s["body"]
        if s["kind"] == "metadata":
            method, body = "PUT", f"bench={name}-{counter}"
        elif s["kind"] == "tag":
            method, path = "PUT", f"{path}{name}-{counter}"
        start = time.perf_counter()
        try:
            conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
            reply = conn.getresponse()
            reply.read()
        except OSError:
            out["read"] += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
            continue
        out["latencies"].append(time.perf_counter() - start)
        if reply.status != s["expect"]:
            out["bad"] += 1
            out["first_bad"] = out["first_bad"] or reply.status
    conn.close()


def process(url: str, conns: int, seconds: float, start_at: float, index: int, queue) -> None:
    parts = urlsplit(url)
    s = spec()
    outs = [{"latencies": [], "bad": 0, "first_bad": 0, "read": 0} for _ in range(conns)]  # one per thread
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    deadline = started + seconds
    threads = [threading.Thread(target=connection, args=(parts.hostname, parts.port, s, deadline, f"{index}x{n}", out))
               for n, out in enumerate(outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put({"latencies": [x for o in outs for x in o["latencies"]], "bad": sum(o["bad"] for o in outs),
               "first_bad": next((o["first_bad"] for o in outs if o["first_bad"]), 0),
               "read": sum(o["read"] for o in outs),
               "elapsed": time.perf_counter() - started})  # past the deadline: requests then in flight count


def main() -> None:
    url, conns, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    procs = max(1, min(conns, os.cpu_count() or 1))
    queue = multiprocessing.Queue()
    start_at = time.time() + 0.5  # every process has started its threads by then
    workers = [multiprocessing.Process(target=process, args=(url, conns // procs + (n < conns % procs), seconds,
                                                             start_at, n, queue)) for n in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(x for r in results for x in r["latencies"])

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6) if latencies else 0

    print("BENCH " + json.dumps({
        "requests": len(latencies), "duration_us": int(max(r["elapsed"] for r in results) * 1e6), "p50_us": pct(50), "p99_us": pct(99),
        "bad": sum(r["bad"] for r in results), "first_bad": next((r["first_bad"] for r in results if r["first_bad"]), 0),
        "connect": 0, "read": sum(r["read"] for r in results), "write": 0, "timeout": 0, "status": 0}))


if __name__ == "__main__":
    main()
