"""The crash-consistency harness's short run (reliability/crash.py --short): 5 kill -9s of a real
`wogit serve` over 150 operations, every acknowledged write checked after every restart."""

from __future__ import annotations

import shutil

from conftest import run_harness


def test_crash_short_run_has_no_violation(tmp_path):
    output = tmp_path / "crash.json"
    run, figures = run_harness("crash", output, "--seed", "3", "--keep", str(tmp_path / "work"), timeout=120)
    assert (run.returncode, figures["violations"], figures["violation_list"]) == (0, 0, []), run.stdout[-3000:]
    assert (figures["kills"], figures["restarts"]) == (5, 5)
    # the kinds of kill are drawn from the seed: for seed 3, one mid-upload, one mid-tarball, three in flight
    assert [figures[f"kills_{kind}"] for kind in ("mid_upload", "mid_tarball", "in_flight", "idle")] == [1, 1, 3, 0]
    assert figures["operations"] >= 150
    assert figures["acknowledged_writes"] > 100
    if shutil.which("strace"):  # one write of each kind under strace: synced before its 2xx
        assert (figures["durability_answers"], figures["durability_problems"]) == (8, [])
        assert figures["durability_publishes"] == 25  # objects, refs and packed-refs made visible
