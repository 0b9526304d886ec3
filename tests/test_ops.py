"""Operations: /healthz, /readyz, /metrics, the access log and X-Request-Id, on real servers."""

from __future__ import annotations

import json
import re

import pytest
import requests
from conftest import json_body_of, raw_request, status_of
from prometheus_client.parser import text_string_to_metric_families
from test_access_control import assert_401, assert_403, basic, user_add

from wogit import config
from wogit.settings import Settings

TAG_ROUTE = "/<repository>/<map>/<tag_id>"
HEX32 = re.compile(r"[0-9a-f]{32}")


def scrape(session: requests.Session, url: str, **kwargs) -> dict[tuple, float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    reply = session.get(url + "/metrics", **kwargs)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text) for sample in family.samples}


def samples(metrics: dict[tuple, float], name: str) -> dict[tuple, float]:
    """The samples called ``name``, by their labels as a tuple of values (route, method[, status])."""
    order = ("route", "method", "status")
    return {tuple(dict(labels)[key] for key in order if key in dict(labels)): value
            for (sample, labels), value in metrics.items() if sample == name}


# -- /healthz and /readyz ---------------------------------------------------------------------------

def test_healthz_and_readyz_answer_ok_and_ready(fresh_server):
    srv = fresh_server()
    for path, body in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
        reply = requests.get(srv.url + path)
        assert (reply.status_code, reply.headers["Content-Type"], reply.json()) == (200, "application/json", body)
        head = requests.head(srv.url + path)
        assert (head.status_code, head.content) == (200, b"")
    assert sorted(p.name for p in (srv.data / "objects").iterdir()) == ["info", "pack"]  # the probe is gone


def test_readyz_is_503_when_the_objects_directory_cannot_be_written(fresh_server):
    srv = fresh_server()
    probe = srv.data / "objects" / "tmp_wogit_ready"
    probe.mkdir()  # the file readyz writes cannot be created, even by root
    reply = requests.get(srv.url + "/readyz")
    assert (reply.status_code, reply.headers["Content-Type"], reply.json()) == (
        503, "application/json", {"msg": "cannot write in the repository's objects directory: Is a directory"})
    assert requests.get(srv.url + "/healthz").json() == {"status": "ok"}  # alive all the same
    probe.rmdir()
    assert requests.get(srv.url + "/readyz").json() == {"status": "ready"}


def test_readyz_is_503_when_the_refs_cannot_be_read(fresh_server):
    srv = fresh_server()
    head = srv.data / "HEAD"
    saved = head.read_bytes()
    head.write_text("not a ref\n")
    try:
        reply = requests.get(srv.url + "/readyz")
        assert (reply.status_code, reply.json()) == (
            503, {"msg": f"cannot read the repository's refs: fatal: not a git repository: '{srv.data}'"})
    finally:
        head.write_bytes(saved)
    assert requests.get(srv.url + "/readyz").json() == {"status": "ready"}


# -- /metrics ---------------------------------------------------------------------------------------

def test_metrics_count_requests_bytes_and_what_the_registry_holds(fresh_server):
    srv = fresh_server()
    url = srv.url
    s = requests.Session()  # one kept-alive connection: each answer is observed before the next request
    for _ in range(3):
        assert s.get(url + "/v1").status_code == 200
    v1 = len(s.get(url + "/v1").content)
    assert s.head(url + "/healthz").status_code == 200
    missing = s.get(url + "/no/such")
    assert missing.status_code == 404
    assert s.request("BREW", url + "/v1").status_code == 405  # an unknown method is OTHER, not a label of its own
    map_a, map_b, conf = b"A" * 70_000, b"map B", b"name: m\n"
    uploads = [s.put(url + "/blobs/upload", data=map_a), s.put(url + "/blobs/upload", data=map_b),
               s.put(url + "/configs/upload", data=conf)]
    assert [r.status_code for r in uploads] == [201, 201, 201]
    tag_body = json.dumps({"map_digest": uploads[0].json()["digest"],
                           "config_digest": uploads[2].json()["digest"]}).encode()
    tagged = s.put(url + "/osm/city/v1", data=tag_body, headers={"Content-Type": "application/json"})
    assert tagged.status_code == 201
    tarball = s.get(url + "/osm/city/v1")
    assert tarball.status_code == 200 and tarball.headers["Content-Length"] == str(len(tarball.content))  # a small map's: built whole

    metrics = scrape(s, url)
    requests_by_label = {
        ("/v1", "GET", "200"): 4.0, ("/healthz", "HEAD", "200"): 1.0, ("unmatched", "GET", "404"): 1.0,
        ("unmatched", "OTHER", "405"): 1.0, ("/blobs/upload", "PUT", "201"): 2.0,
        ("/configs/upload", "PUT", "201"): 1.0, (TAG_ROUTE, "PUT", "201"): 1.0, (TAG_ROUTE, "GET", "200"): 1.0}
    assert samples(metrics, "wogit_http_requests_total") == requests_by_label
    per_route = {}
    for (route, method, _), count in requests_by_label.items():
        per_route[(route, method)] = per_route.get((route, method), 0.0) + count
    assert samples(metrics, "wogit_http_request_duration_seconds_count") == per_route
    assert samples(metrics, "wogit_http_request_body_bytes_total") == {
        **{key: 0.0 for key in per_route},
        ("/blobs/upload", "PUT"): float(len(map_a) + len(map_b)), ("/configs/upload", "PUT"): float(len(conf)),
        (TAG_ROUTE, "PUT"): float(len(tag_body))}
    assert samples(metrics, "wogit_http_response_body_bytes_total") == {
        ("/v1", "GET"): 4.0 * v1, ("/healthz", "HEAD"): 0.0, ("unmatched", "GET"): float(len(missing.content)),
        ("unmatched", "OTHER"): float(len(json.dumps({"msg": "BREW is not allowed on /v1; allowed: GET"}) + "\n")),
        ("/blobs/upload", "PUT"): float(len(uploads[0].content) + len(uploads[1].content)),
        ("/configs/upload", "PUT"): float(len(uploads[2].content)), (TAG_ROUTE, "PUT"): float(len(tagged.content)),
        (TAG_ROUTE, "GET"): float(len(tarball.content))}  # streamed: counted as it went
    holdings = {name: metrics[(name, ())] for name in ("wogit_maps", "wogit_configs", "wogit_tags")}
    assert holdings == {"wogit_maps": 2.0, "wogit_configs": 1.0, "wogit_tags": 1.0}

    # The holdings are counted at most every 5 s; the scrape itself is counted once answered.
    assert s.put(url + "/blobs/upload", data=b"map C").status_code == 201
    again = scrape(s, url)
    assert again[("wogit_maps", ())] == 2.0
    assert samples(again, "wogit_http_requests_total")[("/metrics", "GET", "200")] == 1.0
    assert samples(again, "wogit_http_requests_total")[("/blobs/upload", "PUT", "201")] == 3.0


def test_metrics_of_two_registries_are_their_own(fresh_server):
    one, two = fresh_server(), fresh_server()
    s = requests.Session()
    assert s.get(one.url + "/v1").status_code == 200
    assert samples(scrape(s, one.url), "wogit_http_requests_total") == {("/v1", "GET", "200"): 1.0}
    assert samples(scrape(s, two.url), "wogit_http_requests_total") == {}


# -- who may read /metrics and the health checks ----------------------------------------------------

@pytest.fixture
def users(tmp_path):
    path = tmp_path / "users.htpasswd"
    user_add(path, "alice", "Alice-pw-1")
    user_add(path, "bob", "Bob-pw-2")
    return path


def policy_config(tmp_path, users, server: str = "") -> str:
    path = tmp_path / "wogit.toml"
    path.write_text(f'[server]\n{server}\n[auth]\nhtpasswd = "{users}"\n\n[access]\n'
                    'alice = { "*" = "read" }\nbob = { "maps-*" = "admin" }\n"*" = { "public-*" = "read" }\n')
    return str(path)


def test_metrics_need_read_everywhere_by_default_and_health_is_open(fresh_server, tmp_path, users):
    srv = fresh_server(None, "--config", policy_config(tmp_path, users))
    anonymous = requests.get(srv.url + "/metrics")
    assert_401(anonymous, "anonymous /metrics")
    assert HEX32.fullmatch(anonymous.headers["X-Request-Id"])
    assert_403(requests.get(srv.url + "/metrics", headers=basic("bob", "Bob-pw-2")), "bob: not on every repository")
    assert "wogit_maps 0.0" in requests.get(srv.url + "/metrics", headers=basic("alice", "Alice-pw-1")).text.splitlines()
    assert requests.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert requests.get(srv.url + "/readyz").json() == {"status": "ready"}


def test_metrics_open_and_health_read_as_settings(fresh_server, tmp_path, users):
    srv = fresh_server(None, "--config", policy_config(tmp_path, users, 'health_access = "read"'),
                       "--metrics-access", "open")
    assert scrape(requests.Session(), srv.url)[("wogit_tags", ())] == 0.0
    for path in ("/healthz", "/readyz"):
        assert_401(requests.get(srv.url + path), f"anonymous {path}")
        assert requests.get(srv.url + path, headers=basic("alice", "Alice-pw-1")).status_code == 200
    env = fresh_server(None, "--config", policy_config(tmp_path, users), env={"WOGIT_METRICS_ACCESS": "open"})
    assert requests.get(env.url + "/metrics").status_code == 200


def test_the_new_settings_refuse_unknown_words(tmp_path):
    path = tmp_path / "wogit.toml"
    path.write_text('[server]\nport = 8080\nmetrics_access = "all"\n')
    with pytest.raises(config.ConfigError) as raised:
        config.load(str(path))
    assert str(raised.value) == f"{path} line 3: metrics_access must be 'read' or 'open', not 'all'"
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({"WOGIT_LOG_FORMAT": "xml"})
    assert str(stopped.value) == "wogit: log_format must be plain or json, not 'xml'"
    assert Settings.from_env({"WOGIT_LOG_FORMAT": "json"}).log_format == "json"


# -- X-Request-Id and the access log ----------------------------------------------------------------

SANE = {"given": "req-1.a:B_2", "longest": "x" * 128}
INSANE = {"absent": None, "too long": "x" * 129, "300 chars": "y" * 300, "a space": "a b", "a slash": "a/b",
          "non-ASCII": "caf\u00e9"}


def ids_sent(url: str) -> list[tuple[str | None, str]]:
    """One GET /v1 for each X-Request-Id of SANE and INSANE: (sent, answered)."""
    answered = []
    for sent in [*SANE.values(), *INSANE.values()]:
        headers = {} if sent is None else {"X-Request-Id": sent.encode("utf-8")}
        reply = requests.get(url + "/v1", headers=headers)
        assert reply.status_code == 200
        answered.append((sent, reply.headers["X-Request-Id"]))
    return answered


def check_ids(answered: list[tuple[str | None, str]]) -> None:
    for sent, rid in answered:
        if sent in SANE.values():
            assert rid == sent
        else:
            assert HEX32.fullmatch(rid), (sent, rid)
    assert len({rid for _, rid in answered}) == len(answered)


def test_plain_access_log_one_line_per_request_with_its_request_id(fresh_server):
    srv = fresh_server()
    answered = ids_sent(srv.url)
    check_ids(answered)
    v1 = len(requests.get(srv.url + "/v1").content)
    missing = requests.put(srv.url + "/v1", headers={"X-Request-Id": "put-1"})
    assert (missing.status_code, missing.headers["X-Request-Id"]) == (405, "put-1")
    srv.stop()
    lines = [line for line in srv.log_text().splitlines() if " wogit.access " in line]
    assert len(lines) == len(answered) + 2
    for line, (_, rid) in zip(lines, answered):
        assert re.fullmatch(rf"\S+ \S+ wogit\.access INFO 127\.0\.0\.1 - GET /v1 200 {v1} \d+\.\dms {rid}", line), line
    assert re.fullmatch(rf"\S+ \S+ wogit\.access INFO 127\.0\.0\.1 - PUT /v1 405 {len(missing.content)} \d+\.\dms put-1",
                        lines[-1]), lines[-1]


def test_json_access_log_has_exact_fields(fresh_server, tmp_path, users):
    srv = fresh_server(None, "--auth-file", str(users), "--log-format", "json")
    answered = ids_sent(srv.url)
    check_ids(answered)
    denied = requests.get(srv.url + "/m/n/t", headers={"X-Request-Id": "r-401"})
    assert denied.status_code == 401
    alice = requests.get(srv.url + "/m/n/t%0A%C3%A9", headers={**basic("alice", "Alice-pw-1"), "X-Request-Id": "r-404"})
    assert alice.status_code == 400  # the tag name is invalid; alice may read there
    srv.stop()
    records = [json.loads(line) for line in srv.log_text().splitlines()]  # every line is one JSON object
    for record in records:
        if record["logger"] != "wogit.access":
            assert sorted(record) == ["level", "logger", "msg", "time"], record
    lines = [record for record in records if record["logger"] == "wogit.access"]
    assert len(lines) == len(answered) + 2
    for record in lines:
        assert sorted(record) == ["address", "bytes", "duration_ms", "level", "logger", "method", "path",
                                  "request_id", "status", "time", "user"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    v1 = lines[0]["bytes"]
    for record, (_, rid) in zip(lines, answered):
        expected = {"address": "127.0.0.1", "method": "GET", "path": "/v1", "status": 200, "bytes": v1,
                    "user": None, "request_id": rid, "level": "INFO", "logger": "wogit.access"}
        assert {k: record[k] for k in expected} == expected
    assert {k: lines[-2][k] for k in ("method", "path", "status", "bytes", "user", "request_id")} == {
        "method": "GET", "path": "/m/n/t", "status": 401, "bytes": len(denied.content), "user": None,
        "request_id": "r-401"}
    assert {k: lines[-1][k] for k in ("method", "path", "status", "bytes", "user", "request_id")} == {
        "method": "GET", "path": "/m/n/t\n\u00e9", "status": 400, "bytes": len(alice.content), "user": "alice",
        "request_id": "r-404"}


def test_the_http_servers_own_errors_carry_a_request_id(fresh_server):
    srv = fresh_server()
    both = raw_request(srv.url, b"PUT /blobs/upload HTTP/1.1\r\nHost: x\r\nX-Request-Id: frame-1\r\n"
                                b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc")
    assert status_of(both) == 400
    assert b"\r\nX-Request-Id: frame-1\r\n" in both.partition(b"\r\n\r\n")[0]
    assert json_body_of(both) == {"msg": "a request may not carry both Content-Length and Transfer-Encoding"}
    garbage = raw_request(srv.url, b"NONSENSE\r\n\r\n")
    assert status_of(garbage) == 400
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", garbage.partition(b"\r\n\r\n")[0])
