"""Small requests with wrk: wogit against a hello-world Bottle app on cheroot (same threads, same
cheroot settings, same number of processes), runs interleaved, median of --runs.

    .venv/bin/python benchmarks/small_requests/run.py [--runs 3] [--duration 5] [--workers 2] [--only get_meta,...]

Scenarios: GET .../metadata/<key>, GET of a 4 KiB map's tarball, PUT .../metadata on one map,
PUT .../metadata spread over 32 maps, tag creation (unique names); at 8 and 32 keep-alive
connections (wrk -t2, --latency).  Prints req/s (median, min-max), p50 and p99 (ms, medians),
the ratio to hello-world and the server's CPU time per request (µs, all its processes).
Needs /usr/bin/wrk.
"""
import argparse, hashlib, json, os, re, signal, statistics, subprocess, sys, tempfile, time, uuid
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LOGS = []  # the servers' logs, removed at the end

def start(cmd, env=None, cwd=None):
    log = tempfile.NamedTemporaryFile("w", prefix="wogit-small-requests-", suffix=".log", delete=False)
    LOGS.append(log.name)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                         start_new_session=True)
    line = p.stdout.readline()
    m = re.search(r"(http://[\d.]+:\d+)", line)
    if not m:
        p.kill(); raise SystemExit(f"no start: {line!r} {open(log.name).read()}")
    return p, m.group(1)

def req(method, url, body=b"", headers=None):
    r = urllib.request.Request(url, data=body if method != "GET" else None, method=method, headers=headers or {})
    with urllib.request.urlopen(r) as resp:
        return resp.status, resp.read()

def populate(url):
    m = os.urandom(4096)
    c = b"name: small\n"
    req("PUT", url + "/blobs/upload", m)
    req("PUT", url + "/configs/upload", c)
    tag_body = json.dumps({"map_digest": "sha256:" + hashlib.sha256(m).hexdigest(),
                           "config_digest": "sha256:" + hashlib.sha256(c).hexdigest()})
    req("PUT", url + "/bench/small/v1", tag_body.encode(), {"Content-Type": "application/json"})
    req("PUT", url + "/bench/small/metadata", b"key=value")
    for i in range(32):
        req("PUT", url + f"/bench/m{i}/v1", tag_body.encode(), {"Content-Type": "application/json"})
    return tag_body

def cpu(pgid):
    """utime+stime seconds of every process in the group (the server and its workers)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pgid:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / os.sysconf("SC_CLK_TCK")

def wrk(url, path, conns, duration, script=None, env=None, pgid=None):
    cmd = ["/usr/bin/wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", os.path.join(HERE, script)]
    cmd.append(url + path)
    before = cpu(pgid)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    used = cpu(pgid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errs.group(1) if errs else "", "cpu_us": used / max(total, 1) * 1e6}

SCENARIOS = {
    "get_meta": ("/bench/small/metadata/key", None),
    "get_tarball": ("/bench/small/v1", None),
    "put_meta": ("/bench/small/metadata", "put_metadata.lua"),
    "put_tag": ("/bench/small/", "put_tag.lua"),
    "put_meta_spread": ("/bench/m0/metadata", "put_metadata_spread.lua"),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(HERE)), help="the wogit checkout (its .venv)")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", default="8,32")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--hello", default="hello.py")
    ap.add_argument("--extra", default="", help="extra wogit serve args")
    ap.add_argument("--no-hello", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    py = os.path.join(a.repo, ".venv/bin/python")
    data = tempfile.mkdtemp(prefix="wogit-small-requests-")
    procs = []
    try:
        extra = a.extra.split()
        if a.workers > 1:
            extra += ["--workers", str(a.workers)]
        wp, wurl = start([py, "-m", "wogit", "serve", "--data", data + "/r.git", "--port", "0", "--threads", str(a.threads), *extra], cwd=a.repo)
        procs.append(wp)
        if not a.no_hello:
            hp, hurl = start([py, os.path.join(HERE, a.hello), str(a.threads), str(a.workers)])
            procs.append(hp)
        tag_body = populate(wurl)
        results = {}
        for name in a.only.split(","):
            path, script = SCENARIOS[name]
            for conns in map(int, a.conns.split(",")):
                for run in range(a.runs):
                    env = {"TAG_BODY": tag_body, "RUN": uuid.uuid4().hex[:8]}
                    targets = [("wogit", wurl, wp.pid)] + ([] if a.no_hello else [("hello", hurl, hp.pid)])
                    if run % 2:
                        targets.reverse()
                    for who, url, pgid in targets:
                        r = wrk(url, path, conns, a.duration, script, env, pgid)
                        results.setdefault((name, conns, who), []).append(r)
                        print(name, conns, who, r, flush=True)
        print()
        print(f"{'scenario':12} {'conns':>5} {'who':6} {'req/s':>8} {'min-max':>15} {'p50ms':>7} {'p99ms':>8} {'ratio':>6} {'cpu_us':>7}")
        table = []
        for (name, conns, who), rs in results.items():
            rps = statistics.median(r["rps"] for r in rs)
            base = results.get((name, conns, "hello"))
            ratio = rps / statistics.median(r["rps"] for r in base) if base else float("nan")
            row = dict(scenario=name, conns=conns, who=who, rps=rps, min=min(r["rps"] for r in rs), max=max(r["rps"] for r in rs),
                       p50=statistics.median(r["p50"] for r in rs), p99=statistics.median(r["p99"] for r in rs), ratio=ratio,
                       non2xx=sum(r["non2xx"] for r in rs), cpu_us=statistics.median(r["cpu_us"] for r in rs))
            table.append(row)
            print(f"{name:12} {conns:5} {who:6} {rps:8.0f} {row['min']:7.0f}-{row['max']:<7.0f} {row['p50']:7.2f} {row['p99']:8.2f} {ratio:6.2f} {row['cpu_us']:7.0f} {row['non2xx'] or ''}")
        if a.out:
            json.dump(table, open(a.out, "w"), indent=1)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try: p.wait(40)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", data, *LOGS])

main()
