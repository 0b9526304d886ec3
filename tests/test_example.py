"""examples/push_and_pull.sh against a real, freshly started registry."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import subprocess

import pytest
import requests

from conftest import ROOT, TEST_CONFIG, TEST_MAP, sha256

SCRIPT = ROOT / "examples" / "push_and_pull.sh"
MAP_DIGEST = sha256(TEST_MAP.read_bytes())
CONFIG_DIGEST = sha256(TEST_CONFIG.read_bytes())
METADATA = b"license=ODbL-1.0\nregion=test-area\nsource=openstreetmap\n"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "curl", "sha256sum", "tar")),
    reason="the example needs bash, curl, sha256sum and tar")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "WOGIT_REGISTRY"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**environ, **(env or {})})


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.splitlines()


def test_example_passes_twice_against_a_fresh_registry(fresh_server):
    srv = fresh_server()

    first = run(srv.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stderr == ""
    out = lines(first)
    assert f"registry: {srv.url}" in out
    assert f"map:      {MAP_DIGEST} (201 uploaded)" in out
    assert f"config:   {CONFIG_DIGEST} (201 uploaded)" in out
    assert "tag:      osm/test-area/v1 (201 created)" in out
    assert "metadata: license=ODbL-1.0 region=test-area source=openstreetmap" in out
    assert out[-1] == "OK: map, config and metadata match what was pushed"

    second = run(srv.url)
    assert second.returncode == 0, second.stdout + second.stderr
    out = lines(second)
    assert f"map:      {MAP_DIGEST} (409 already uploaded)" in out
    assert f"config:   {CONFIG_DIGEST} (409 already uploaded)" in out
    assert "tag:      osm/test-area/v1 (409 already existed, same map and config)" in out
    assert out[-1] == "OK: map, config and metadata match what was pushed"

    # What the script left in the registry, seen by another client.
    reply = requests.get(f"{srv.url}/osm/test-area/v1")
    assert reply.status_code == 200
    assert reply.headers["Wo-Map-Digest"] == MAP_DIGEST
    assert reply.headers["Wo-Config-Digest"] == CONFIG_DIGEST
    assert requests.get(f"{srv.url}/osm/test-area/metadata/license").text == "ODbL-1.0"


def test_registry_and_tag_from_environment_and_arguments(fresh_server):
    srv = fresh_server()
    result = run("", "2024-06.1", env={"WOGIT_REGISTRY": srv.url + "/"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tag:      osm/test-area/2024-06.1 (201 created)" in lines(result)
    assert "pulled:   osm-test-area-2024-06.1.tar.gz" in result.stdout
    assert requests.get(f"{srv.url}/osm/test-area/v1").status_code == 404


def test_existing_tag_with_other_content_fails(fresh_server):
    srv = fresh_server()
    other_map, _ = srv.push("osm/test-area/v1", b"not the example map", TEST_CONFIG.read_bytes())
    result = run(srv.url)
    assert result.returncode != 0
    assert "FAILED: tag /osm/test-area/v1 already exists with other content" in result.stderr
    assert other_map in result.stderr
    assert "OK:" not in result.stdout


def test_extra_metadata_is_a_mismatch(fresh_server):
    srv = fresh_server()
    assert run(srv.url).returncode == 0
    reply = requests.put(f"{srv.url}/osm/test-area/metadata", data=b"maintainer=someone")
    assert reply.status_code == 200, reply.text
    result = run(srv.url)
    assert result.returncode != 0
    assert "FAILED: metadata file in the tarball" in result.stderr
    assert "maintainer=someone" in result.stderr


def test_unreachable_registry_fails_clearly(fresh_server):
    srv = fresh_server()
    url = srv.url
    srv.stop()
    result = run(url)
    assert result.returncode != 0
    assert f"FAILED: GET {url}/v1: cannot connect (is the registry running?" in result.stderr


def test_invalid_tag_is_refused_before_any_request():
    result = run("http://127.0.0.1:1", "no spaces")
    assert result.returncode != 0
    assert "FAILED: invalid tag 'no spaces'" in result.stderr


def test_pulled_tarball_matches_the_files(fresh_server):
    """The archive the script checked: exactly map, metadata, config, byte for byte."""
    srv = fresh_server()
    assert run(srv.url).returncode == 0
    archive = requests.get(f"{srv.url}/osm/test-area/v1").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getnames() == ["map", "metadata", "config"]
        assert all(member.isreg() for member in tar.getmembers())
        assert tar.extractfile("map").read() == TEST_MAP.read_bytes()
        assert tar.extractfile("config").read() == TEST_CONFIG.read_bytes()
        assert tar.extractfile("metadata").read() == METADATA
