"""The hostile-clients harness, short: every case of the corpus against a real server, zero violations."""

from __future__ import annotations

from conftest import run_harness

#: names 54 + queries 2 + metadata, JSON, headers 3; framing 59; writes 7, git 3; field cases 21; slow clients 5.
CASES = 154


def test_hostile_short_has_no_violation(tmp_path):
    output = tmp_path / "hostile.json"
    result, figures = run_harness("hostile", output, timeout=120)
    assert figures["violation_list"] == [], result.stdout
    assert (result.returncode, figures["cases"], figures["passed"], figures["violations"]) == (0, CASES, CASES, 0)
    # Every slow head (3 per worker thread) was closed by the server, some with a 408 first; no other answer.
    assert set(figures["slowloris_answers"]) <= {"closed", "408"}
    assert figures["slowloris_answers"]["closed"] >= 3 * figures["threads"]
    assert figures["canary_requests"] > 0
