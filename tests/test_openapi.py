"""The OpenAPI document (wogit/openapi.json): every route of the app is in it and nothing else, it
is valid OpenAPI 3.1 and what wogit.openapi builds, GET /openapi.json serves it, and real answers
match the schemas it gives them."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import requests
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import sha256
from htpasswd_tool import htpasswd
from wogit import githttp, openapi
from wogit.access import Level
from wogit.api import create_app
from wogit.settings import Settings
from wogit.store import Store

DOCUMENT_BYTES = openapi.PATH.read_bytes()
DOCUMENT = json.loads(DOCUMENT_BYTES)
METHODS = ("get", "head", "put", "post", "delete", "options", "patch", "trace")

#: git's three smart-HTTP endpoints (wogit.githttp), each a route of its own.
GIT_ENDPOINTS = {("GET", "/_git/info/refs"), ("POST", "/_git/git-upload-pack"), ("POST", "/_git/git-receive-pack")}


def make_app(tmp_path, **settings):
    return create_app(Settings(data=str(tmp_path / "registry.git"), **settings), Store(str(tmp_path / "registry.git")))


def template(rule: str) -> str:
    """A Bottle rule as an OpenAPI path: ``<name>`` and ``<name:filter...>`` become ``{name}``."""
    return re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", rule)


def app_operations(app) -> set[tuple[str, str]]:
    """(method, path) of every route, as the document must list them: HEAD wherever there is a GET
    (Bottle answers HEAD with a GET route)."""
    pairs = {(route.method, template(route.rule)) for route in app.routes}
    return pairs | {("HEAD", path) for method, path in pairs if method == "GET"}


def document_operations(document) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


def operations(document=DOCUMENT):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


# -- the document is the app's -------------------------------------------------------------

def test_every_route_is_documented_and_every_documented_operation_is_a_route(tmp_path):
    served, documented = app_operations(make_app(tmp_path)), document_operations(DOCUMENT)
    missing = sorted(served - documented)
    extra = sorted(documented - served)
    assert not missing and not extra, (f"routes the document lacks: {missing}\n"
                                       f"documented operations no route serves: {extra}")


def test_the_git_endpoints_are_the_ones_git_http_serves(tmp_path):
    asked = {("GET", "/_git/info/refs"): githttp.service("info/refs", "service=git-upload-pack"),
             ("POST", "/_git/git-upload-pack"): githttp.service("git-upload-pack", ""),
             ("POST", "/_git/git-receive-pack"): githttp.service("git-receive-pack", "")}
    assert set(asked.values()) == set(githttp.SERVICES)
    assert set(asked) == GIT_ENDPOINTS <= app_operations(make_app(tmp_path))
    service = next(p for p in DOCUMENT["paths"]["/_git/info/refs"]["get"]["parameters"] if p["name"] == "service")
    assert set(service["schema"]["enum"]) == set(githttp.SERVICES)


class _Asked:
    """What a route's ``need`` function reads of a request to ``path`` (with ``query``)."""

    def __init__(self, path: str, query: str = ""):
        self.environ = {"PATH_INFO": path, "QUERY_STRING": query}


def route_needs(route, path: str) -> dict | None:
    need = route.config.get("need")
    if need is None:
        return None
    scope = route.config.get("scope", "repository")
    if callable(need):  # /_git: the level depends on the service asked for
        levels = [need(_Asked(path, f"service={s}" if path.endswith("/info/refs") else "")).word
                  for s in githttp.SERVICES]
        return {"level": " or ".join(dict.fromkeys(levels)), "scope": scope}
    return {"level": Level(need).word, "scope": scope}


@pytest.mark.parametrize("settings", [{}, {"health_access": "read", "metrics_access": "open"}])
def test_each_operation_declares_the_permission_its_route_checks(tmp_path, settings):
    documented = {}
    for method, path, operation in operations():
        needs = operation["x-wogit-needs"]
        if needs and "setting" in needs:  # the route needs it only with one value of the setting
            value = settings.get(needs["setting"], Settings.__dataclass_fields__[needs["setting"]].default)
            needs = {k: v for k, v in needs.items() if k != "setting"} if value == "read" else None
        documented[(method.upper(), path)] = needs
    for route in make_app(tmp_path, **settings).routes:
        method, path = route.method, template(route.rule)
        checked = route_needs(route, path)
        assert documented[(method, path)] == checked, f"{method} {path}: {documented[(method, path)]} != {checked}"
        if method == "GET":
            assert documented[("HEAD", path)] == checked, f"HEAD {path}"


# -- the document itself ---------------------------------------------------------------------

def test_the_committed_document_is_what_the_builder_writes():
    assert DOCUMENT_BYTES.decode("utf-8") == openapi.render(), "run: python -m wogit.openapi"


def test_the_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"] == "3.1.0"
    validate_openapi(DOCUMENT)


def resolve(pointer: str, document=DOCUMENT):
    assert pointer.startswith("#/"), pointer
    node = document
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs_in(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


def test_every_ref_resolves():
    found = set(refs_in(DOCUMENT))
    assert found
    for pointer in found:
        resolve(pointer)


def test_every_component_is_used():
    used = set(refs_in(DOCUMENT))
    for kind, components in DOCUMENT["components"].items():
        if kind == "securitySchemes":
            continue
        unused = [name for name in components if f"#/components/{kind}/{name}" not in used]
        assert not unused, (kind, unused)


def test_every_operation_has_a_unique_id_a_summary_and_says_who_may_call_it():
    ids = [operation.get("operationId") for _, _, operation in operations()]
    assert all(ids) and len(ids) == len(set(ids)), ids
    for method, path, operation in operations():
        assert operation["summary"] and "Needs" in operation["description"], (method, path)
        assert "security" in operation and "x-wogit-needs" in operation, (method, path)
        assert operation["responses"], (method, path)


def answers(operation):
    for code, answer in operation["responses"].items():
        yield code, resolve(answer["$ref"]) if "$ref" in answer else answer


def test_every_error_answer_is_the_error_schema_and_head_answers_have_no_body():
    for method, path, operation in operations():
        for code, answer in answers(operation):
            assert "X-Request-Id" in answer.get("headers", {}), (method, path, code)
            if method == "head":
                assert "content" not in answer, (method, path, code)
            elif code[0] in "45":
                assert answer["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}, \
                    (method, path, code)
    assert DOCUMENT["components"]["schemas"]["Error"] == {
        "type": "object", "description": DOCUMENT["components"]["schemas"]["Error"]["description"],
        "properties": {"msg": {"type": "string", "description": "what was wrong"}},
        "required": ["msg"], "additionalProperties": False}


def test_the_name_patterns_are_the_name_rules():
    from wogit import names

    samples = ["a", "a.b", "a..b", "a.lock", "a.", "metadata", "Metadata", "v1.0-rc_2", "-a", "a-", "a_b",
               "x" * 64, "x" * 65, "x" * 128, "x" * 129, "sha256:" + "a" * 64, "A", "a/b", ""]
    for sample in samples:
        assert (bool(re.search(openapi.NAME_PATTERN, sample)) and len(sample) <= 64) == names.is_repository(sample), \
            sample
        assert (bool(re.search(openapi.TAG_PATTERN, sample)) and len(sample) <= 128) == names.is_tag(sample), sample
        assert bool(re.search(openapi.KEY_PATTERN, sample)) == names.is_key(sample), sample


# -- served, and answers that match it ---------------------------------------------------------

def test_get_and_head_openapi_json_serve_the_file_without_credentials(fresh_server, tmp_path):
    users = tmp_path / "users.htpasswd"
    htpasswd("-c", "-B", "-C", "4", "-b", str(users), "alice", "Alice-pw-1")
    srv = fresh_server(None, "--auth-file", str(users))
    reply = requests.get(srv.url + "/openapi.json")
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/json"
    assert reply.content == DOCUMENT_BYTES
    head = requests.head(srv.url + "/openapi.json")
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Type"] == "application/json"
    refused = requests.get(srv.url + "/_catalog")
    Checker(srv.url).check(refused, "get", "/_catalog", 401)
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="wogit", charset="UTF-8"'


class Checker:
    """Checks real answers against the document: the status is documented for the operation, a
    JSON body matches its schema and documented headers that are present match theirs."""

    def __init__(self, url: str):
        self.url = url
        self.registry = Registry().with_resource("urn:wogit", Resource.from_contents(DOCUMENT, DRAFT202012))

    def schema_validator(self, pointer: str):
        return jsonschema.Draft202012Validator({"$ref": "urn:wogit" + pointer}, registry=self.registry,
                                               format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    def validate(self, value, schema: dict) -> None:
        if "$ref" in schema:
            self.schema_validator(schema["$ref"]).validate(value)
        else:
            jsonschema.Draft202012Validator({**schema, "$schema": "https://json-schema.org/draft/2020-12/schema"},
                                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
                                            ).validate(value)

    def check(self, reply: requests.Response, method: str, path: str, status: int):
        assert reply.status_code == status, (method, path, reply.status_code, reply.text)
        operation = DOCUMENT["paths"][path][method]
        assert str(status) in operation["responses"], (method, path, status)
        answer = operation["responses"][str(status)]
        answer = {**resolve(answer["$ref"]), **answer} if "$ref" in answer else answer
        for name, spec in answer.get("headers", {}).items():
            spec = resolve(spec["$ref"]) if "$ref" in spec else spec
            if name in reply.headers:
                self.validate(reply.headers[name], spec["schema"])
        assert "X-Request-Id" in reply.headers
        content = answer.get("content", {})
        if method == "head":
            assert not content and reply.content == b""
            return None
        if "application/json" in content:
            assert reply.headers["Content-Type"] == "application/json", reply.headers
            body = reply.json()
            self.validate(body, content["application/json"]["schema"])
            return body
        if content:
            media = reply.headers["Content-Type"].split(";")[0]
            assert media in content, (method, path, media, list(content))
        return None


def test_answers_match_their_schemas(server, unique):
    check = Checker(server.url).check
    url = server.url
    map_bytes, config = b"map of " + unique.encode(), b"name: " + unique.encode() + b"\n"

    check(requests.get(url + "/v1"), "get", "/v1", 200)
    check(requests.head(url + "/v1"), "head", "/v1", 200)
    check(requests.get(url + "/healthz"), "get", "/healthz", 200)
    check(requests.get(url + "/readyz"), "get", "/readyz", 200)
    check(requests.get(url + "/_status"), "get", "/_status", 200)
    check(requests.post(url + "/_replica/refresh"), "post", "/_replica/refresh", 404)
    check(requests.get(url + "/metrics"), "get", "/metrics", 200)

    uploaded = check(requests.put(url + "/blobs/upload", data=map_bytes), "put", "/blobs/upload", 201)
    assert uploaded == {"digest": sha256(map_bytes)}
    again = requests.put(url + "/blobs/upload", data=map_bytes)
    check(again, "put", "/blobs/upload", 409)
    assert again.headers["Wo-Map-Digest"] == sha256(map_bytes)
    check(requests.put(url + "/configs/upload", data=config), "put", "/configs/upload", 201)
    check(requests.put(url + "/configs/upload", data=b"\xff"), "put", "/configs/upload", 400)
    check(requests.put(url + "/blobs/upload", data=b"x", headers={"Wo-Map-Digest": "sha256:1"}),
          "put", "/blobs/upload", 400)

    tag_path = "/{repository}/{map}/{tag_id}"
    body = {"map_digest": sha256(map_bytes), "config_digest": sha256(config)}
    created = check(requests.put(f"{url}/{unique}/m/v1", json=body), "put", tag_path, 201)
    assert created["tag"] == "v1" and created["repository"] == unique
    check(requests.put(f"{url}/{unique}/m/v2", json=body), "put", tag_path, 201)
    check(requests.put(f"{url}/{unique}/m/v1", json=body), "put", tag_path, 409)
    check(requests.put(f"{url}/{unique}/m/v3", json={"map_digest": sha256(b"none"), "config_digest": "x"}),
          "put", tag_path, 404)
    check(requests.put(f"{url}/{unique}/m/v3", data=b"[1]"), "put", tag_path, 400)
    check(requests.put(f"{url}/{unique}/m/a..b", json=body), "put", tag_path, 400)
    tarball = requests.get(f"{url}/{unique}/m/v1")
    check(tarball, "get", tag_path, 200)
    check(requests.get(f"{url}/{unique}/m/v1", headers={"If-None-Match": tarball.headers["ETag"]}),
          "get", tag_path, 304)
    check(requests.head(f"{url}/{unique}/m/nope"), "head", tag_path, 404)

    check(requests.get(url + "/_catalog?n=1"), "get", "/_catalog", 200)
    check(requests.get(url + "/_catalog?n=0"), "get", "/_catalog", 400)
    maps = check(requests.get(f"{url}/_catalog/{unique}"), "get", "/_catalog/{repository}", 200)
    assert maps == {"maps": ["m"]}
    check(requests.get(f"{url}/_catalog/{unique}x"), "get", "/_catalog/{repository}", 404)
    first = requests.get(f"{url}/{unique}/m/_tags?n=1")
    tags = check(first, "get", "/{repository}/{map}/_tags", 200)
    assert [t["tag"] for t in tags["tags"]] == ["v1"] and 'rel="next"' in first.headers["Link"]
    check(requests.get(f"{url}/{unique}/m/_tags?sort=time"), "get", "/{repository}/{map}/_tags", 200)
    check(requests.get(f"{url}/{unique}/m/_tags?sort=size"), "get", "/{repository}/{map}/_tags", 400)
    check(requests.get(f"{url}/{unique}/nope/_tags"), "get", "/{repository}/{map}/_tags", 404)

    changed = check(requests.put(f"{url}/{unique}/m/metadata", data=b"a=1 b=2 c.d=3"),
                    "put", "/{repository}/{map}/metadata", 200)
    assert changed == {"set": ["a", "b"], "ignored": ["c.d"]}
    check(requests.put(f"{url}/{unique}/m/metadata", data=b"novalue"), "put", "/{repository}/{map}/metadata", 400)
    check(requests.put(f"{url}/{unique}/nope/metadata", data=b"a=1"), "put", "/{repository}/{map}/metadata", 404)
    check(requests.get(f"{url}/{unique}/m/metadata"), "get", "/{repository}/{map}/metadata", 200)
    check(requests.get(f"{url}/{unique}/m/metadata?at=yesterday"), "get", "/{repository}/{map}/metadata", 400)
    check(requests.get(f"{url}/{unique}/m/metadata/a"), "get", "/{repository}/{map}/metadata/{key}", 200)
    check(requests.delete(f"{url}/{unique}/m/metadata/a"), "delete", "/{repository}/{map}/metadata/{key}", 200)
    check(requests.delete(f"{url}/{unique}/m/metadata/a"), "delete", "/{repository}/{map}/metadata/{key}", 404)
    deleted = check(requests.delete(f"{url}/{unique}/m/v2"), "delete", tag_path, 200)
    assert deleted["tag"] == "v2"
    history = check(requests.get(f"{url}/{unique}/m/_history"), "get", "/{repository}/{map}/_history", 200)
    assert [c["action"] for c in history["history"]][:2] == ["delete-tag", "delete-metadata"]
    check(requests.get(f"{url}/{unique}/m/_history?last=x"), "get", "/{repository}/{map}/_history", 400)

    digest = sha256(map_bytes)
    check(requests.get(f"{url}/blobs/{digest}"), "get", "/blobs/{digest}", 200)
    check(requests.get(f"{url}/blobs/{digest}", headers={"Range": "bytes=1-2"}), "get", "/blobs/{digest}", 206)
    check(requests.get(f"{url}/blobs/{digest}", headers={"Range": "bytes=999-"}), "get", "/blobs/{digest}", 416)
    check(requests.head(f"{url}/configs/{sha256(config)}"), "head", "/configs/{digest}", 200)
    check(requests.get(f"{url}/blobs/sha256:nothex"), "get", "/blobs/{digest}", 400)
    users = check(requests.get(f"{url}/blobs/{digest}/_tags"), "get", "/blobs/{digest}/_tags", 200)
    assert [(t["repository"], t["tag"]) for t in users["tags"]] == [(unique, "v1")]
    check(requests.get(f"{url}/configs/{sha256(b'never')}/_tags"), "get", "/configs/{digest}/_tags", 404)

    check(requests.get(url + "/_git/info/refs?service=git-upload-pack"), "get", "/_git/info/refs", 200)
    check(requests.get(url + "/_git/info/refs"), "get", "/_git/info/refs", 404)


# -- what reliability/fuzz.py found the document did not say ------------------------------------

def test_request_bodies_say_what_the_server_refuses():
    paths = DOCUMENT["paths"]
    assert paths["/blobs/upload"]["put"]["requestBody"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "minLength": 1, "format": "binary"}}}
    assert paths["/configs/upload"]["put"]["requestBody"]["content"] == {
        "text/plain": {"schema": {"type": "string", "minLength": 1}}}
    assert paths["/{repository}/{map}/metadata"]["put"]["requestBody"]["content"] == {
        "text/plain": {"schema": {"type": "string", "pattern": openapi.METADATA_PATTERN}}}
    for service in githttp.SERVICES:
        operation = paths[f"/_git/{service}"]["post"]
        assert operation["requestBody"]["content"] == {
            f"application/x-{service}-request": {"schema": {"type": "string", "format": "binary"}}}
        assert operation["responses"]["415"] == {"$ref": "#/components/responses/UnsupportedMediaType"}


@pytest.mark.parametrize("body, valid", [
    ("", True), ("a=1 b.c=2\r\n", True), ("k=v=w\tx=", True), ("a=é\u00a0", True), ("a[0]=1", True),
    ("a", False), ("=1", False), ("a b=1", False), ("a=\x1c", False), ("a=\u2028", False), ("a=\x85", False),
    ("k" * 128 + "=1", True), ("k" * 129 + "=1", False), ("a." + "b" * 1022 + "=1", True),
    ("a." + "b" * 1023 + "=1", False), ("a/b=1", False)])
def test_the_metadata_body_pattern_is_what_put_metadata_accepts(server, unique, body, valid):
    assert (re.search(openapi.METADATA_PATTERN, body) is not None) is valid
    server.push(f"{unique}/m/v1")
    reply = requests.put(f"{server.url}/{unique}/m/metadata", data=body.encode("utf-8"))
    Checker(server.url).check(reply, "put", "/{repository}/{map}/metadata", 200 if valid else 400)


def test_an_empty_upload_and_a_git_request_of_another_type_are_documented(server):
    check = Checker(server.url).check
    assert check(requests.put(server.url + "/configs/upload", data=b""), "put", "/configs/upload", 400) == {
        "msg": "the config is empty"}
    assert check(requests.put(server.url + "/blobs/upload", data=b""), "put", "/blobs/upload", 400) == {
        "msg": "the map is empty"}
    assert check(requests.post(server.url + "/_git/git-upload-pack", data=b"0000"), "post",
                 "/_git/git-upload-pack", 415) == {
        "msg": "a git-upload-pack request has Content-Type application/x-git-upload-pack-request, not none"}


def test_every_link_names_an_operation_and_only_its_parameters():
    by_id = {operation["operationId"]: (path, operation) for _, path, operation in operations()}
    found = []
    for method, path, operation in operations():
        for code, answer in operation["responses"].items():
            for name, link in answer.get("links", {}).items():
                target_path, target = by_id[link["operationId"]]
                taken = {p["name"] for p in (resolve(r["$ref"]) if "$ref" in r else r for r in target["parameters"])}
                assert set(link["parameters"]) <= taken, (method, path, name)
                assert set(re.findall(r"{(\w+)}", target_path)) <= set(link["parameters"]), (method, path, name)
                found.append((method, path, code, link["operationId"]))
    assert ("put", "/{repository}/{map}/{tag_id}", "201", "getTag") in found
    assert ("delete", "/{repository}/{map}/{tag_id}", "200", "getTag") in found
    assert ("put", "/blobs/upload", "201", "getMap") in found and ("put", "/configs/upload", "201", "getConfigTags") in found
