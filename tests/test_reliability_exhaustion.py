"""The resource exhaustion harness, short: full disks (every kind of write at a few fill levels,
downloads being cached, wogit gc) and a flood of uploads, with no violation."""

from __future__ import annotations

from conftest import run_harness


def test_the_short_exhaustion_harness_finds_no_violation(tmp_path):
    output = tmp_path / "figures.json"
    run, figures = run_harness("exhaustion", output, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert figures["violations"] == []
    assert figures["mode"] in ("tmpfs", "rlimit"), "a Linux machine has one way to fill a disk at least"
    # Every kind of exhaustion was met: refused writes, refused uploads, downloads and gc on a full disk.
    assert figures["status_507"] >= 10 and figures["status_503"] >= 3
    assert figures["downloads_while_full"] == 3 and figures["gc_runs"] == 1 and figures["recoveries"] >= 10
