#!/usr/bin/env python3
"""wogit's benchmarks: every figure next to a baseline measured in the same run, on the same file.

    .venv/bin/python benchmarks/run.py --quick             # 32 MiB maps, 1 s load runs: under 3 minutes on 2 quiet cores, 6 on busy ones
    .venv/bin/python benchmarks/run.py                     # the issue's sizes: 1 GiB (memory also 4 GiB)
    .venv/bin/python benchmarks/run.py --only upload,requests --markdown docs/performance.md

Sections: upload, tarball, blob, requests, scale, memory (each a module with run(ctx) -> rows).
Prints a table, writes JSON (default benchmarks/results/latest.json) and, with --markdown FILE,
rewrites the part of FILE between <!-- bench:start --> and <!-- bench:end -->.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import GiB, MiB, ROOT, Context  # noqa: E402

SECTIONS = {  # section name -> module in benchmarks/
    "upload": "upload",
    "tarball": "tarball",
    "blob": "blob",
    "requests": "small_requests",
    "scale": "scale",
    "memory": "memory",
}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
QUICK_MIB = 32  # the big maps of --quick: upload, tarball and blob of both kinds, 5 runs each
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes ({QUICK_MIB} MiB maps, 1 s load runs, smaller scale): 4.5-6 minutes on 2 busy cores")
    parser.add_argument("--only", type=sections, default=list(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--workdir", type=Path, help="where the temporary files go (default: $TMPDIR); "
                        "full mode needs about 12 GiB there, and 1 GiB of /dev/shm when it has room")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report")
    parser.add_argument("--markdown", type=Path, help="rewrite the generated table of this file (between "
                        f"{START} and {END})")
    parser.add_argument("--runs", type=int, help="runs of each figure (default 5)")
    parser.add_argument("--size-mib", type=int, help="size of the big maps (default 1024, quick 32)")
    parser.add_argument("--load", choices=["wrk", "python"],
                        help="load generator for small requests (default: wrk when on the PATH)")
    return parser.parse_args(argv)


def sections(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {','.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]  # always in the table's order


def make_context(args: argparse.Namespace, workdir: Path) -> Context:
    size = (args.size_mib * MiB) if args.size_mib else (QUICK_MIB * MiB if args.quick else GiB)
    return Context(
        quick=args.quick, workdir=workdir, runs=args.runs or 5, size=size,
        memory_sizes=(size,) if args.quick else (size, 4 * size),
        duration=1 if args.quick else 5,
        load=args.load or ("wrk" if shutil.which("wrk") else "python"),
    )


# -- the machine -----------------------------------------------------------------------------------

def first_line(argv: list[str], cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd).stdout.strip().split("\n")[0]
    except OSError:
        return ""


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    head = first_line(["git", "rev-parse", "--short=12", "HEAD"])
    code = first_line(["git", "log", "-1", "--format=%h", "--abbrev=12", "--", "wogit"])  # wogit/'s last change
    dirty = first_line(["git", "status", "--porcelain", "--untracked-files=no", "--", "wogit"])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram / GiB, 1), "kernel": platform.release(),
        "python": platform.python_version(), "git": first_line(["git", "--version"]),
        "curl": first_line(["curl", "--version"]), "wrk": first_line(["wrk", "--version"]) if shutil.which("wrk") else "",
        "wogit_commit": code + (" + uncommitted changes" if dirty else ""), "checkout": head,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- the table ----------------------------------------------------------------------------------------

def num(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def runs_cell(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    if len(values) == 1:
        return num(median)
    return f"{num(median)} ({num(ordered[0])}-{num(ordered[-1])})"


def ratio_cell(ratio: list[float] | None) -> str:
    if not ratio:
        return "-"
    median, low, high = ratio
    return f"{num(median)}x ({num(low)}-{num(high)})"


def met_cell(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


COLUMNS = ("section", "case", "metric", "wogit median (min-max)", "baseline", "baseline median (min-max)",
           "ratio", "target", "met", "note")


def cells(row: dict) -> list[str]:
    return [row["section"], row["case"], row["metric"], runs_cell(row["wogit"]), row["baseline"] or "-",
            runs_cell(row["baseline_runs"]) if row["baseline"] else "-", ratio_cell(row["ratio"]),
            row["target"] or "", met_cell(row["met"]), row["note"] or ""]


def render_table(rows: list[dict]) -> str:
    """Plain text, aligned columns (the note last, not padded)."""
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
        if n == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(text.rstrip() for text in out)


def render_markdown(report: dict) -> str:
    def md(cell: str) -> str:
        return cell.replace("|", "\\|")

    m = report["machine"]
    checkout = f" (checkout `{m['checkout']}`)" if m.get("checkout") and m["checkout"] != m["wogit_commit"] else ""
    lines = [f"Generated by `{report['command']}` on {m['date']}, wogit/ at commit `{m['wogit_commit']}`{checkout}, "
             f"in {report['seconds']:.0f} s.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
             f"Python {m['python']}, {m['git']}, {m['curl'].split(' (')[0]}"
             + (f", {m['wrk'].split(' [')[0]}" if m.get("wrk") else "") + f"; load generator: {report['load']}"
             + (". Load average (1 min) at the start and the end: {:.1f}, {:.1f} (other work on the machine)."
                .format(*m["loadavg_start_end"]) if m.get("loadavg_start_end") else "."),
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in report["rows"]:
        lines.append("| " + " | ".join(md(c) for c in cells(r)) + " |")
    return "\n".join(lines)


def rewrite_markdown(path: Path, report: dict) -> None:
    text = path.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"run.py: {path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{render_markdown(report)}\n{END}{tail}")


# -- running -----------------------------------------------------------------------------------------

def run_section(name: str, ctx: Context) -> tuple[list[dict], str | None]:
    """A section's rows, or a row saying why it did not run (and the error, if it failed)."""
    try:
        module = importlib.import_module(SECTIONS[name])
        return list(module.run(ctx)), None
    except Exception as exc:  # a wrong status or digest, a crashed server: the section failed, not fast
        if isinstance(exc, ModuleNotFoundError) and exc.name == SECTIONS[name]:
            return [skipped(name, f"skipped: benchmarks/{SECTIONS[name]}.py is not there yet")], None
        traceback.print_exc()
        return [skipped(name, f"FAILED: {type(exc).__name__}: {exc}".splitlines()[0][:300], met=False)], str(exc)


def skipped(section: str, note: str, met: bool | None = None) -> dict:
    return {"section": section, "case": "-", "metric": "", "wogit": [], "baseline": None, "baseline_runs": [],
            "ratio": None, "target": "", "met": met, "note": note}


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    try:
        python = os.path.relpath(sys.executable, ROOT)
    except ValueError:
        python = sys.executable
    return shlex.join([python if not python.startswith("../") else sys.executable, "benchmarks/run.py", *args])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"run.py: {tool} is not on the PATH")
    if not Path("/proc/self/status").exists():
        raise SystemExit("run.py: needs Linux (/proc)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (kill servers, remove files) on SIGTERM

    workdir = Path(tempfile.mkdtemp(prefix="wogit-bench-", dir=args.workdir))
    ctx = make_context(args, workdir)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows, failures, timings = [], {}, {}
    try:
        for name in args.only:
            print(f"== {name}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            got, error = run_section(name, ctx)
            timings[name] = round(time.perf_counter() - t0, 1)
            if error:
                failures[name] = error
            for r in got:
                r.setdefault("section", name)
            rows.extend(got)
            print(render_table(got), file=sys.stderr, flush=True)
    finally:
        ctx.cleanup()
    report = {
        "command": command_line(argv), "quick": args.quick, "runs": ctx.runs, "size_mib": ctx.size // MiB,
        "load": ctx.load, "machine": {**machine(), "loadavg_start_end": [load_before, os.getloadavg()[0]]}, "seconds": round(time.perf_counter() - started, 1),
        "section_seconds": timings, "failures": failures, "rows": rows,
    }
    print()
    print(render_table(rows))
    print(f"\n{report['seconds']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    if args.markdown:
        rewrite_markdown(args.markdown, report)
        print(f"rewrote the table in {args.markdown}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
