"""The short run of reliability/races.py: every race kind twice across three `wogit serve`
processes (one of them with two workers) on one data directory, git pushes and `wogit gc`
included, with no violation and exactly one winner in each round that has one."""

from __future__ import annotations

from conftest import run_harness

RACERS = 4  # --short


def test_races_short(tmp_path):
    output = tmp_path / "races.json"
    run, figures = run_harness("races", output, "--keep", str(tmp_path / "work"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert figures["violation_list"] == []
    assert (figures["violations"], figures["lost_updates"], figures["orphaned_tags"], figures["fsck_failures"]) == \
        (0, 0, 0, 0)
    assert figures["rounds"] == {"tag": 2, "metadata": 2, "upload": 2, "gc": 2, "push": 2}
    assert figures["winners"] == {"tag": 2, "upload": 2, "push": 2}  # exactly one creator in each round
    # every other racer of a tag or upload round lost (409, or a rejected push); push rounds: 2 HTTP taggers and the push
    assert (figures["conflicts"]["tag"], figures["conflicts"]["upload"], figures["conflicts"]["push"]) == \
        (2 * RACERS, 2 * RACERS, 2 * 2)
    assert figures["gc_runs"] >= 2 and figures["metadata_writes_checked"] > 0
    assert "Traceback" not in run.stderr
