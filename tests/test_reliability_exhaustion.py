"""The resource exhaustion harness, short: full disks (every kind of write at a few fill levels,
downloads being cached, wogit gc) and a flood of uploads, with no violation."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_short_exhaustion_harness_finds_no_violation(tmp_path):
    output = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, "reliability/exhaustion.py", "--short", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(output.read_text())
    assert figures["violations"] == []
    assert figures["mode"] in ("tmpfs", "rlimit"), "a Linux machine has one way to fill a disk at least"
    # Every kind of exhaustion was met: refused writes, refused uploads, downloads and gc on a full disk.
    assert figures["status_507"] >= 10 and figures["status_503"] >= 3
    assert figures["downloads_while_full"] == 3 and figures["gc_runs"] == 1 and figures["recoveries"] >= 10
