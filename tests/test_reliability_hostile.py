"""The hostile-clients harness, short: every case of the corpus against a real server, zero violations."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

#: names 54 + queries 2 + metadata, JSON, headers 3; framing 59; field cases 21; slow clients 4.
CASES = 143


def test_hostile_short_has_no_violation(tmp_path):
    output = tmp_path / "hostile.json"
    result = subprocess.run([sys.executable, "reliability/hostile.py", "--short", "--output", str(output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    figures = json.loads(output.read_text())
    assert figures["violation_list"] == [], result.stdout
    assert (result.returncode, figures["cases"], figures["passed"], figures["violations"]) == (0, CASES, CASES, 0)
    assert set(figures["slowloris_answers"]) == {"408"}  # every slow head answered 408 (none left to hang)
    assert figures["canary_requests"] > 0
