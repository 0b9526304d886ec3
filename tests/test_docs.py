"""The documents say what the code does: the error table, the README's commands, CI."""

import os
import re
import subprocess
import sys

import requests
from conftest import ROOT, TEST_CONFIG, TEST_MAP, fsck, refs, sha256
from test_hooks import AUTHOR

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


# -- docs/git.md: the operator's commands, pasted as they are ---------------------------------------

def git_doc_block(heading: str) -> str:
    """The first ```sh block after ``heading`` in docs/git.md."""
    text = (ROOT / "docs" / "git.md").read_text()
    return re.search(r"```sh\n(.+?)\n```", text[text.index(heading):], re.S).group(1)


def run_sh(script: str, cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def test_git_doc_commands_write_mirror_back_up_and_restore(fresh_server, tmp_path):
    srv = fresh_server()
    srv.push("osm/old/v1", b"an old map", b"old: 1\n")
    env = {"R": srv.url, "DATA": str(srv.data), **AUTHOR}
    (tmp_path / "map.pbf").write_bytes(TEST_MAP.read_bytes())
    (tmp_path / "config.yaml").write_bytes(TEST_CONFIG.read_bytes())
    run_sh(f"git clone -q --mirror {srv.url}/_git registry.git", tmp_path, env)

    # Writing with git: the plumbing makes osm/city/v1, the API serves it.
    run_sh(git_doc_block("### Writing with git"), tmp_path, env)
    reply = requests.get(srv.url + "/osm/city/v1")
    assert reply.status_code == 200
    assert (reply.headers["Wo-Map-Digest"], reply.headers["Wo-Config-Digest"]) == (
        sha256(TEST_MAP.read_bytes()), sha256(TEST_CONFIG.read_bytes()))

    # Pushing a copy back: only what the registry lacks (here: a tag made in the copy).
    other = fresh_server()
    other.push("game/level/v1", b"level", b"level: 1\n")
    run_sh(f"git --git-dir registry.git fetch -q {other.url}/_git '+refs/wo/*:refs/wo/*'", tmp_path, env)
    run_sh(git_doc_block("### Pushing a copy back"), tmp_path, env)
    assert requests.get(srv.url + "/game/level/v1").status_code == 200
    assert refs(tmp_path / "registry.git").items() <= refs(srv.data).items()

    # Backup and restore, with /backup and /srv/wogit under this test's directory.
    backup = git_doc_block("## 7. Backup and restore").replace("/backup", str(tmp_path / "backup"))
    (tmp_path / "backup").mkdir()
    run_sh(backup, tmp_path, env)  # over HTTP, the incremental fetch, the bundle, the hooks
    fsck(tmp_path / "backup" / "registry.git")
    restore = git_doc_block("A push mirror (section 5)").replace("/backup", str(tmp_path / "backup")).replace(
        "/srv/wogit", str(tmp_path / "srv"))
    serve = restore.splitlines()[-1]
    assert serve.startswith("wogit serve --data ")
    run_sh("\n".join(restore.splitlines()[:-1]).replace("wogit init", f"{sys.executable} -m wogit init"),
           tmp_path, env)
    restored = fresh_server(tmp_path / "srv" / "registry.git")
    for path in ("osm/old/v1", "osm/city/v1", "game/level/v1"):
        assert requests.get(restored.url + "/" + path).content == requests.get(srv.url + "/" + path).content
    assert requests.put(restored.url + "/blobs/upload", data=b"an old map").status_code == 409
    assert "wogit-managed-hook" in (tmp_path / "srv" / "registry.git" / "hooks" / "pre-receive").read_text()
    # ... and from the bundle, the same refs
    run_sh(f"git clone -q --mirror {tmp_path}/backup/registry.bundle from-bundle.git", tmp_path, env)
    assert refs(tmp_path / "from-bundle.git") == refs(srv.data)
