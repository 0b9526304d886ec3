#!/usr/bin/env python3
"""How soon a read replica serves a new tag, and how much read load one replica holds.

Starts real servers on 127.0.0.1 (fresh temporary data directories):

* a primary that notifies its replica (``--notify``), and that replica
  (``--replica-of``, ``--replica-interval 3600``: only notifications bring news);
* a second replica that only polls (``--replica-interval 1``).

Then:

1. **Staleness**: ``--tags`` times (default 20), a new tag is made on the primary
   and both replicas are polled every 5 ms until they serve it; the time from the
   primary's 201 to the replica's first 200 is recorded.
2. **Read load**: ``--clients`` threads (default 8) send ``GET
   /<repository>/<map>/metadata/<key>`` on kept-alive connections for
   ``--seconds`` (default 5) to the primary, then to a replica, then to a
   hello-world Bottle app on cheroot (the framework's ceiling, the baseline).

It prints a table and writes JSON to ``benchmarks/results/replication.json``.
Figures are medians with min-max; the load figures are ratios to the baseline
measured in the same run. Nothing here passes or fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HELLO = """
import sys, bottle
from cheroot import wsgi
app = bottle.Bottle()
@app.get("/<a>/<b>/metadata/<key>")
def hello(a, b, key):
    return "hello"
server = wsgi.Server(("127.0.0.1", 0), app, numthreads=int(sys.argv[1]))
server.prepare()
print("on http://127.0.0.1:%d" % server.bind_addr[1], flush=True)
server.serve()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    match = re.search(r"on (http://[\d.]+:\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"did not start: {' '.join(args)}: {line}{log.read_text()}")
    return proc, match.group(1)


def wogit(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "wogit", "serve", "--data", str(data), "--port", "0", *args]


def upload(url: str, path: str, data: bytes, header: str) -> str:
    reply = requests.put(url + path, data=data)
    assert reply.status_code in (201, 409), reply.text
    return reply.headers[header]


def staleness(primary: str, replicas: dict[str, str], tags: int) -> dict[str, list[float]]:
    config = upload(primary, "/configs/upload", b"bench: replication\n", "Wo-Config-Digest")
    delays: dict[str, list[float]] = {name: [] for name in replicas}
    for i in range(tags):
        m = upload(primary, "/blobs/upload", f"map {i} {time.time()}".encode(), "Wo-Map-Digest")
        reply = requests.put(f"{primary}/bench/replicated/t{i}", json={"map_digest": m, "config_digest": config})
        assert reply.status_code == 201, reply.text
        made = time.monotonic()
        waiting = dict(replicas)
        while waiting:
            for name, url in list(waiting.items()):
                if requests.head(f"{url}/bench/replicated/t{i}").status_code == 200:
                    delays[name].append(time.monotonic() - made)
                    del waiting[name]
            if time.monotonic() - made > 60:
                raise SystemExit(f"tag t{i} not on {list(waiting)} within 60 s")
            time.sleep(0.005)
    return delays


def load(url: str, clients: int, seconds: float) -> dict:
    path = "/bench/replicated/metadata/owner"
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    failures = []

    def client():
        session = requests.Session()
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            reply = session.get(url + path)
            mine.append(time.perf_counter() - started)
            if reply.status_code != 200:
                failures.append(reply.status_code)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"requests_per_second": round(len(latencies) / seconds, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "failures": len(failures)}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms  ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "replication.json")
    args = parser.parse_args()

    procs = []
    with tempfile.TemporaryDirectory(prefix="wogit-bench-") as work:
        work = Path(work)
        try:
            notified_port = free_port()
            notified_url = f"http://127.0.0.1:{notified_port}"
            primary, primary_url = start(wogit(work / "primary.git", "--notify", notified_url), work / "primary.log")
            procs.append(primary)
            notified, _ = start(wogit(work / "notified.git", "--port", str(notified_port), "--replica-of", primary_url,
                                      "--replica-interval", "3600"), work / "notified.log")
            procs.append(notified)
            polling, polling_url = start(wogit(work / "polling.git", "--replica-of", primary_url,
                                               "--replica-interval", "1"), work / "polling.log")
            procs.append(polling)
            hello, hello_url = start([sys.executable, "-c", HELLO, "32"], work / "hello.log")
            procs.append(hello)

            delays = staleness(primary_url, {"notified": notified_url, "polling (1 s)": polling_url}, args.tags)
            assert requests.put(primary_url + "/bench/replicated/metadata", data=b"owner=bench").status_code == 200
            deadline = time.monotonic() + 30
            while requests.get(notified_url + "/bench/replicated/metadata/owner").status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("metadata never reached the replica")
                time.sleep(0.01)
            loads = {name: load(url, args.clients, args.seconds) for name, url in
                     (("hello-world bottle+cheroot", hello_url), ("primary", primary_url), ("replica", notified_url))}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)

    baseline = loads["hello-world bottle+cheroot"]["requests_per_second"]
    print(f"\nA new tag on the primary, until a replica serves it ({args.tags} tags; median, min-max):")
    for name, values in delays.items():
        print(f"  {name:16s} {summary(values)}")
    print(f"\nGET of one metadata value, {args.clients} clients, {args.seconds:g} s each:")
    print(f"  {'server':28s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs hello':>9s}")
    for name, figures in loads.items():
        print(f"  {name:28s} {figures['requests_per_second']:8.0f} {figures['p50_ms']:8.2f} "
              f"{figures['p99_ms']:8.2f} {figures['requests_per_second'] / baseline:9.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count()},
        "staleness_seconds": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                              for name, v in delays.items()},
        "load": loads, "clients": args.clients, "seconds": args.seconds}, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
