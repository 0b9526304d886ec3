"""The fuzzing harness's short run (reliability/fuzz.py --short): schemathesis against a real
server's GET /openapi.json, through the gate as admin; every answer conforms to the document,
none is a 5xx or shows a traceback, every error is {"msg": ...}. The full run is the harness's
own command (docs/reliability.md)."""

from __future__ import annotations

from conftest import run_harness


def test_the_short_fuzz_run_finds_nothing(tmp_path):
    output = tmp_path / "fuzz.json"
    run, result = run_harness("fuzz", output, "--workdir", str(tmp_path / "work"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert (result["total_failures"], result["failures"], result["errors"], result["server_problems"]) == (0, [], [], [])
    assert result["requests"] >= 500
    assert result["operations_covered"] == result["operations_documented"] == 45
    statuses = {int(code): count for code, count in result["statuses"].items()}
    assert statuses.get(200, 0) > 0 and statuses.get(201, 0) > 0  # the seed data is reached, and written to
    assert statuses.get(400, 0) > 0 and statuses.get(404, 0) > 0 and statuses.get(405, 0) > 0
    assert not [code for code in statuses if code >= 500]
    assert run.stdout.startswith("fuzz (short, seed 1): ") and "total failures: 0" in run.stdout
