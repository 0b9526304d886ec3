"""The documents say what the code does: the error table, the README's commands, CI."""

import re

from conftest import ROOT

from wogit import errors


def test_error_table_in_api_doc_is_the_catalogue():
    assert errors.markdown_table() in (ROOT / "docs" / "api.md").read_text()


def test_every_error_code_is_declared_once():
    names = [code.name for code in errors.CATALOGUE]
    assert len(names) == len(set(names))
    assert all(400 <= code.status < 600 for code in errors.CATALOGUE)


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_run_then_test_command():
    run, test = readme_commands()[:2]
    assert run.endswith("wogit serve")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert readme_commands()[1] in ci.splitlines()
