"""Reading, listing, deleting and history (issue 5, part 2), against a real server:
/blobs and /configs by digest with Range, /_catalog, _tags, _history, ?at=, DELETE of a tag.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from conftest import fsck, git, refs, sha256
from htpasswd_tool import htpasswd

MiB = 1 << 20


def tag_body(m: str, c: str) -> dict:
    return {"map_digest": m, "config_digest": c}


def described(repository, map_name, tag, m, c, created: str) -> dict:
    return {"repository": repository, "map": map_name, "tag": tag, "map_digest": m, "config_digest": c,
            "created": created}


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# -- /blobs/<digest> and /configs/<digest> -------------------------------------------------------

@pytest.fixture(scope="module")
def big(server):
    """A 3 MiB map (crosses the 1 MiB read chunks) and its digest."""
    data = os.urandom(3 * MiB + 12345)
    return data, server.upload("map", data)


def test_blob_get_and_head(server, big):
    data, digest = big
    reply = requests.get(f"{server.url}/blobs/{digest}")
    assert reply.status_code == 200
    assert reply.content == data
    expected = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                "ETag": f'"{digest}"', "Accept-Ranges": "bytes", "Wo-Map-Digest": digest}
    assert {k: reply.headers[k] for k in expected} == expected
    head = requests.head(f"{server.url}/blobs/{digest}")
    assert (head.status_code, head.content) == (200, b"")
    assert {k: head.headers[k] for k in expected} == expected


def test_config_get_is_text(server):
    config = "name: área\nzoom: 3\n".encode()
    digest = server.upload("config", config)
    reply = requests.get(f"{server.url}/configs/{digest}")
    assert (reply.status_code, reply.content) == (200, config)
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["Wo-Config-Digest"] == digest
    # A config's digest is not a map's (and the other way round).
    wrong = requests.get(f"{server.url}/blobs/{digest}")
    assert (wrong.status_code, wrong.json()) == (
        404, {"msg": f"digest {digest} names no uploaded map that you may read"})


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-9", 0, 9),
    ("bytes=1048570-2097160", 1048570, 2097160),  # across chunk boundaries
    ("bytes=3000000-", 3000000, 3 * MiB + 12344),
    ("bytes=-5", 3 * MiB + 12340, 3 * MiB + 12344),
    ("bytes=5-99999999", 5, 3 * MiB + 12344),  # clipped to the end
    ("bytes=-99999999", 0, 3 * MiB + 12344),
])
def test_range(server, big, spec, first, last):
    data, digest = big
    reply = requests.get(f"{server.url}/blobs/{digest}", headers={"Range": spec})
    size = len(data)
    whole = (first, last) == (0, size - 1)  # a range of everything is answered as the whole body
    assert (reply.status_code, "Content-Range" in reply.headers) == ((200, False) if whole else (206, True))
    assert reply.content == data[first:last + 1]
    assert reply.headers["Content-Length"] == str(last - first + 1)
    if reply.status_code == 206:
        assert reply.headers["Content-Range"] == f"bytes {first}-{last}/{size}"


@pytest.mark.parametrize("spec", [f"bytes={3 * MiB + 12345}-", "bytes=99999999-", "bytes=-0"])
def test_range_not_satisfiable(server, big, spec):
    data, digest = big
    reply = requests.get(f"{server.url}/blobs/{digest}", headers={"Range": spec})
    assert reply.status_code == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(data)}"
    assert reply.headers["Content-Type"] == "application/json"
    assert "msg" in reply.json()


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=x-", "bytes=-"])
def test_ranges_not_served_answer_the_whole_body(server, big, spec):
    data, digest = big
    reply = requests.get(f"{server.url}/blobs/{digest}", headers={"Range": spec})
    assert (reply.status_code, len(reply.content), "Content-Range" in reply.headers) == (200, len(data), False)
    assert sha256(reply.content) == digest


def test_if_range_and_if_none_match(server, big):
    data, digest = big
    url = f"{server.url}/blobs/{digest}"
    same = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": f'"{digest}"'})
    assert (same.status_code, same.content) == (206, data[10:20])
    other = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": '"sha256:other"'})
    assert (other.status_code, len(other.content)) == (200, len(data))
    cached = requests.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert (cached.status_code, cached.content, cached.headers["ETag"]) == (304, b"", f'"{digest}"')


@pytest.mark.parametrize("path, status, msg", [
    ("/blobs/sha256:" + "0" * 64, 404, "digest sha256:" + "0" * 64 + " names no uploaded map that you may read"),
    ("/configs/sha256:" + "0" * 64, 404, "digest sha256:" + "0" * 64 + " names no uploaded config that you may read"),
    ("/blobs/sha256:ABC", 400, "invalid digest 'sha256:ABC': must be sha256: followed by 64 lowercase hex digits"),
    ("/blobs/md5:00", 400, "invalid digest 'md5:00': must be sha256: followed by 64 lowercase hex digits"),
    ("/blobs/upload", 405, "GET is not allowed on /blobs/upload; allowed: PUT"),  # the upload's path
    ("/blobs/uploads", 400, "invalid digest 'uploads': must be sha256: followed by 64 lowercase hex digits"),
])
def test_blob_errors(server, path, status, msg):
    reply = requests.get(server.url + path)
    assert (reply.status_code, reply.json()) == (status, {"msg": msg})


# -- lists ---------------------------------------------------------------------------------------

def follow(url: str, **params) -> tuple[list[list], list[str]]:
    """Every page of a list (as [items of page 1, page 2, ...]) and the Link URLs followed."""
    base = url.split("/", 3)
    root = f"{base[0]}//{base[2]}"
    pages, links = [], []
    reply = requests.get(url, params=params)
    while True:
        assert reply.status_code == 200, reply.text
        body = reply.json()
        (items,) = body.values()
        pages.append(items)
        if "Link" not in reply.headers:
            return pages, links
        link = reply.headers["Link"]
        assert link.startswith("</") and link.endswith('>; rel="next"'), link
        links.append(link[1:-len('>; rel="next"')])
        reply = requests.get(root + links[-1])


def test_catalog_and_maps(fresh_server):
    srv = fresh_server()
    for path in ("b/m2/v1", "a/m1/v1", "c/m1/v1", "b/m1/v1", "b/m1/v2"):
        srv.push(path)
    assert requests.get(srv.url + "/_catalog").json() == {"repositories": ["a", "b", "c"]}
    pages, links = follow(srv.url + "/_catalog", n=2)
    assert (pages, links) == ([["a", "b"], ["c"]], ["/_catalog?n=2&last=b"])
    assert requests.get(srv.url + "/_catalog/b").json() == {"maps": ["m1", "m2"]}
    assert follow(srv.url + "/_catalog/b", n=1) == ([["m1"], ["m2"]], ["/_catalog/b?n=1&last=m1"])
    # A token past the end, or of a name that no longer exists, still works.
    assert requests.get(srv.url + "/_catalog", params={"last": "bb"}).json() == {"repositories": ["c"]}
    reply = requests.get(srv.url + "/_catalog", params={"last": "c"})
    assert (reply.json(), "Link" in reply.headers) == ({"repositories": []}, False)
    # An exact page: no Link.
    reply = requests.get(srv.url + "/_catalog", params={"n": 3})
    assert (reply.json(), "Link" in reply.headers) == ({"repositories": ["a", "b", "c"]}, False)


@pytest.mark.parametrize("query, msg", [
    ("n=0", "n must be a whole number from 1 to 1000, not '0'"),
    ("n=1001", "n must be a whole number from 1 to 1000, not '1001'"),
    ("n=-1", "n must be a whole number from 1 to 1000, not '-1'"),
    ("n=abc", "n must be a whole number from 1 to 1000, not 'abc'"),
])
def test_page_size_errors(server, query, msg):
    reply = requests.get(f"{server.url}/_catalog?{query}")
    assert (reply.status_code, reply.json()) == (400, {"msg": msg})


def test_unknown_repository_and_map(server):
    reply = requests.get(server.url + "/_catalog/nothing-here")
    assert (reply.status_code, reply.json()) == (404, {"msg": "repository nothing-here holds no map"})
    reply = requests.get(server.url + "/_catalog/Bad_Name")
    assert reply.status_code == 400
    reply = requests.get(server.url + "/nothing-here/m/_tags")
    assert (reply.status_code, reply.json()) == (404, {"msg": "map nothing-here/m does not exist"})
    assert requests.get(server.url + "/nothing-here/m/_history").status_code == 404


def test_tags_by_name_paginated(server, unique):
    m, c = server.push(f"{unique}/m/v1")
    names = ["v1", "v10", "v2", "a", "B", "rc-1"]
    for tag in names[1:]:
        assert server.tag(f"{unique}/m/{tag}", m, c).status_code == 201
    reply = requests.get(f"{server.url}/{unique}/m/_tags")
    tags = reply.json()["tags"]
    assert [t["tag"] for t in tags] == ["B", "a", "rc-1", "v1", "v10", "v2"]  # byte order
    assert all(t.keys() == {"tag", "map_digest", "config_digest", "created"} for t in tags)
    assert {(t["map_digest"], t["config_digest"]) for t in tags} == {(m, c)}
    pages, links = follow(f"{server.url}/{unique}/m/_tags", n=4)
    assert [[t["tag"] for t in p] for p in pages] == [["B", "a", "rc-1", "v1"], ["v10", "v2"]]
    assert links == [f"/{unique}/m/_tags?n=4&last=v1"]


def pushed_tag(srv, data_dir: Path, work: Path, path: str, m: str, c: str, when: int) -> str:
    """Create a tag whose commit time is ``when`` with git itself, pushed through the hooks."""
    mirror = work / "mirror.git"
    if not mirror.exists():
        git(work, "init", "-q", "--bare", str(mirror))
    git(mirror, "fetch", "-q", str(data_dir), "+refs/wo/*:refs/wo/*")
    blob = {kind: git(mirror, "rev-parse", f"refs/wo/_{kind}s/sha256/{d[7:]}:{kind}").stdout.strip()
            for kind, d in (("map", m), ("config", c))}
    tree = subprocess.run(["git", "--git-dir", str(mirror), "mktree"], check=True, capture_output=True, text=True,
                          input=f"100644 blob {blob['config']}\tconfig\n100644 blob {blob['map']}\tmap\n").stdout.strip()
    env = {**os.environ, "GIT_COMMITTER_DATE": f"{when} +0000", "GIT_AUTHOR_DATE": f"{when} +0000",
           "GIT_AUTHOR_NAME": "wogit", "GIT_AUTHOR_EMAIL": "wogit@localhost",
           "GIT_COMMITTER_NAME": "wogit", "GIT_COMMITTER_EMAIL": "wogit@localhost"}
    message = f"tag {path}\n\nmap_digest: {m}\nconfig_digest: {c}\n"
    commit = subprocess.run(["git", "--git-dir", str(mirror), "commit-tree", tree, "-m", message], env=env,
                            check=True, capture_output=True, text=True).stdout.strip()
    git(mirror, "push", "-q", str(data_dir), f"{commit}:refs/wo/{path}")
    return commit


def test_tags_by_time_newest_first(fresh_server, tmp_path):
    srv = fresh_server()
    m, c = srv.push("r/m/first")
    created = {"t1": 1_000_000_000, "t2": 1_000_003_000, "t3": 1_000_002_000, "t4": 1_000_003_000}
    for tag, when in created.items():
        pushed_tag(srv, srv.data, tmp_path, f"r/m/{tag}", m, c, when)
    pages, links = follow(srv.url + "/r/m/_tags", sort="time", n=2)
    assert [[t["tag"] for t in p] for p in pages] == [["first", "t2"], ["t4", "t3"], ["t1"]]
    assert links == ["/r/m/_tags?sort=time&n=2&last=1000003000%2Ct2", "/r/m/_tags?sort=time&n=2&last=1000002000%2Ct3"]
    assert pages[2][0]["created"] == "2001-09-09T01:46:40Z"
    for bad in ("t1", "abc,t1", "1000,", "1000,../x"):
        reply = requests.get(srv.url + "/r/m/_tags", params={"sort": "time", "last": bad})
        assert reply.status_code == 400, bad
    reply = requests.get(srv.url + "/r/m/_tags", params={"sort": "size"})
    assert (reply.status_code, reply.json()) == (400, {"msg": "sort must be 'name' or 'time', not 'size'"})


# -- DELETE and history -------------------------------------------------------------------------

def test_delete_tag(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1", b"the map", b"k: 1\n")
    assert srv.tag("osm/area/v2", m, c).status_code == 201
    assert requests.put(srv.url + "/osm/area/metadata", data=b"license=ODbL").status_code == 200
    v1 = requests.get(srv.url + "/osm/area/_tags").json()["tags"][0]
    reply = requests.delete(srv.url + "/osm/area/v1")
    assert (reply.status_code, reply.json()) == (200, described("osm", "area", "v1", m, c, v1["created"]))
    again = requests.delete(srv.url + "/osm/area/v1")
    assert (again.status_code, again.json()) == (404, {"msg": "tag osm/area/v1 does not exist"})
    assert requests.get(srv.url + "/osm/area/v1").status_code == 404
    assert [t["tag"] for t in requests.get(srv.url + "/osm/area/_tags").json()["tags"]] == ["v2"]
    stored = refs(srv.data)
    assert "refs/wo/osm/area/v1" not in stored and "refs/wo/osm/area/v2" in stored
    # The map and config stay (by digest) until gc; the metadata stays.
    assert requests.get(f"{srv.url}/blobs/{m}").content == b"the map"
    # Deleting the last tag keeps the map, its metadata and its history.
    assert requests.delete(srv.url + "/osm/area/v2").status_code == 200
    assert requests.get(srv.url + "/osm/area/metadata").text == "license=ODbL\n"
    assert requests.get(srv.url + "/_catalog/osm").json() == {"maps": ["area"]}
    assert requests.get(srv.url + "/osm/area/_tags").json() == {"tags": []}
    assert requests.put(srv.url + "/osm/area/metadata", data=b"state=retired").status_code == 200
    log = git(srv.data, "log", "--format=%s", "refs/wo/_metadata/osm/area").stdout.splitlines()
    assert log == ["set state", "delete-tag v2", "delete-tag v1", "set license"]
    fsck(srv.data)
    check = subprocess.run([os.sys.executable, "-m", "wogit", "fsck", "--data", str(srv.data)],
                           capture_output=True, text=True)
    assert (check.returncode, check.stdout) == (
        0, "checked 1 maps, 1 configs, 0 tags and 1 metadata histories: no problems\n")


def test_delete_tag_of_a_map_without_metadata(server, unique):
    m, c = server.push(f"{unique}/m/v1")
    assert requests.delete(f"{server.url}/{unique}/m/v1").status_code == 200
    history = requests.get(f"{server.url}/{unique}/m/_history").json()["history"]
    assert [(h["action"], h["tag"]) for h in history] == [("delete-tag", "v1"), ("create-tag", "v1")]
    assert requests.get(f"{server.url}/{unique}/m/metadata").text == ""
    # A new tag of the same name is a new tag.
    assert server.tag(f"{unique}/m/v1", m, c).status_code == 201


@pytest.mark.parametrize("path, status", [("/r/m/a..b", 400), ("/r/M/v1", 400), ("/r/m/metadata", 405),
                                          ("/r/m/x.lock", 400), ("/r/m/_v1", 400), ("/_r/m/v1", 400),
                                          ("/r/m/_tags", 405), ("/r/m/_history", 405), ("/_git/info/refs", 405)])
def test_delete_bad_names(server, path, status):
    reply = requests.delete(server.url + path)
    assert reply.status_code == status
    assert "msg" in reply.json()


USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
ACCESS = '''
[access]
alice = { "*" = "admin" }
bob   = { "osm" = "delete" }
carol = { "osm" = "read", "robots" = "write" }
dave  = { "secret" = "read" }
'''


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A registry with users: alice admin, bob delete on osm, carol read on osm and write on
    robots, dave read on secret. Holds osm/area/v1 (map A), secret/s/v1 (map S), and an untagged map U."""
    from conftest import Server

    base = tmp_path_factory.mktemp("guarded")
    users = base / "users.htpasswd"
    for index, (name, password) in enumerate(USERS.items()):
        htpasswd(*(["-c"] if index == 0 else []), "-B", "-C", "4", "-b", str(users), name, password)
    config = base / "wogit.toml"
    config.write_text(f'[auth]\nhtpasswd = "{users}"\n' + ACCESS)
    srv = Server(base / "registry.git", "--config", str(config)).start()
    alice = ("alice", USERS["alice"])
    digests = {}
    for name, data in (("A", b"map A"), ("S", b"map S"), ("U", b"map U")):
        digests[name] = requests.put(srv.url + "/blobs/upload", data=data, auth=alice).json()["digest"]
    digests["C"] = requests.put(srv.url + "/configs/upload", data=b"c: 1\n", auth=alice).json()["digest"]
    for path, name in (("osm/area/v1", "A"), ("secret/s/v1", "S")):
        reply = requests.put(f"{srv.url}/{path}", json=tag_body(digests[name], digests["C"]), auth=alice)
        assert reply.status_code == 201, reply.text
    yield srv, digests
    srv.stop()
    assert "Traceback" not in srv.log_text()


@pytest.mark.parametrize("who, blob, status", [
    ("alice", "A", 200), ("alice", "S", 200), ("alice", "U", 200),
    ("carol", "A", 200), ("carol", "S", 404), ("carol", "U", 200),  # carol writes on robots: untagged ok
    ("dave", "A", 404), ("dave", "S", 200), ("dave", "U", 404),
    ("bob", "A", 200), ("bob", "U", 200), (None, "A", 401),
])
def test_reading_by_digest_needs_a_readable_tag(guarded, who, blob, status):
    srv, digests = guarded
    auth = (who, USERS[who]) if who else None
    reply = requests.get(f"{srv.url}/blobs/{digests[blob]}", auth=auth)
    assert reply.status_code == status, reply.text
    if status == 404:  # the same answer as for a digest that was never uploaded
        assert reply.json() == {"msg": f"digest {digests[blob]} names no uploaded map that you may read"}
        never = "sha256:" + "1" * 64
        assert requests.get(f"{srv.url}/blobs/{never}", auth=auth).json() == {
            "msg": f"digest {never} names no uploaded map that you may read"}


def test_lists_show_only_what_a_user_may_read(guarded):
    srv, digests = guarded
    carol, dave = ("carol", USERS["carol"]), ("dave", USERS["dave"])
    assert requests.get(srv.url + "/_catalog", auth=carol).json() == {"repositories": ["osm"]}
    assert requests.get(srv.url + "/_catalog", auth=dave).json() == {"repositories": ["secret"]}
    assert requests.get(srv.url + "/_catalog", auth=("alice", USERS["alice"])).json() == {
        "repositories": ["osm", "secret"]}
    assert requests.get(srv.url + "/_catalog").status_code == 401
    assert requests.get(srv.url + "/_catalog/secret", auth=carol).status_code == 403
    assert requests.get(srv.url + "/secret/s/_tags", auth=carol).status_code == 403
    assert requests.get(srv.url + "/secret/s/_history", auth=carol).status_code == 403
    both = requests.get(f"{srv.url}/configs/{digests['C']}/_tags", auth=("alice", USERS["alice"])).json()
    assert [(t["repository"], t["map"], t["tag"]) for t in both["tags"]] == [("osm", "area", "v1"), ("secret", "s", "v1")]
    mine = requests.get(f"{srv.url}/configs/{digests['C']}/_tags", auth=dave).json()
    assert [(t["repository"], t["tag"]) for t in mine["tags"]] == [("secret", "v1")]


def test_delete_needs_delete(guarded):
    srv, digests = guarded
    carol, bob = ("carol", USERS["carol"]), ("bob", USERS["bob"])
    alice = ("alice", USERS["alice"])
    assert requests.put(srv.url + "/osm/area/v9", json=tag_body(digests["A"], digests["C"]), auth=alice).status_code == 201
    assert requests.delete(srv.url + "/osm/area/v9", auth=carol).status_code == 403
    assert requests.delete(srv.url + "/osm/area/v9").status_code == 401
    assert requests.delete(srv.url + "/osm/area/v9", auth=bob).status_code == 200
    assert requests.put(srv.url + "/osm/area/metadata", data=b"k=1", auth=alice).status_code == 200
    history = requests.get(srv.url + "/osm/area/_history", auth=carol).json()["history"]
    assert [(h["action"], h["user"], h.get("tag"), h.get("keys")) for h in history[:3]] == [
        ("set-metadata", "alice", None, ["k"]), ("delete-tag", "bob", "v9", None), ("create-tag", "alice", "v9", None)]
    # git itself names the users: the author of each change.
    authors = git(srv.data, "log", "--format=%an <%ae>", "refs/wo/_metadata/osm/area").stdout.splitlines()
    assert authors[:2] == ["alice <user@wogit>", "bob <user@wogit>"]


def test_blob_tags_lists_the_tags_using_a_map(server, unique):
    m, c = server.push(f"{unique}/b/v1", unique.encode() + b" shared map")
    assert server.tag(f"{unique}/a/v2", m, c).status_code == 201
    reply = requests.get(f"{server.url}/blobs/{m}/_tags")
    created = [t["created"] for t in reply.json()["tags"]]
    assert reply.json() == {"tags": [described(unique, "a", "v2", m, c, created[0]),
                                     described(unique, "b", "v1", m, c, created[1])]}
    pages, links = follow(f"{server.url}/blobs/{m}/_tags", n=1)
    assert [[(t["map"], t["tag"]) for t in p] for p in pages] == [[("a", "v2")], [("b", "v1")]]
    assert links == [f"/blobs/{urllib.parse.quote(m)}/_tags?n=1&last={unique}%2Fa%2Fv2"] or links == [
        f"/blobs/{m}/_tags?n=1&last={unique}%2Fa%2Fv2"]
    assert requests.delete(f"{server.url}/{unique}/a/v2").status_code == 200
    assert [t["tag"] for t in requests.get(f"{server.url}/blobs/{m}/_tags").json()["tags"]] == ["v1"]
    never = "sha256:" + "2" * 64
    assert requests.get(f"{server.url}/blobs/{never}/_tags").status_code == 404
    assert requests.get(f"{server.url}/blobs/sha256:zz/_tags").status_code == 400


# -- history and ?at= ---------------------------------------------------------------------------

def test_history_and_at(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1")
    url = srv.url + "/osm/area/metadata"
    assert requests.put(url, data=b"a=1 b=1").status_code == 200
    first = requests.get(url).headers["Wo-Metadata-Commit"]
    time.sleep(1.05)  # git commit times are whole seconds
    assert requests.put(url, data=b"a=2").status_code == 200
    assert requests.delete(url + "/b").status_code == 200
    last = requests.get(url)
    assert last.text == "a=2\n"
    history = requests.get(srv.url + "/osm/area/_history").json()["history"]
    assert [(h["action"], h.get("keys"), h.get("tag")) for h in history] == [
        ("delete-metadata", ["b"], None), ("set-metadata", ["a"], None), ("set-metadata", ["a", "b"], None),
        ("create-tag", None, "v1")]
    assert history[2]["commit"] == first and history[0]["commit"] == last.headers["Wo-Metadata-Commit"]
    assert history[3]["map_digest"] == m and history[3]["config_digest"] == c
    assert {h["user"] for h in history} == {None}
    then = history[2]["time"]
    # At the first change's second (and with an offset, or a fraction): the state after it.
    for at in (then, then.replace("Z", ".999Z"), first,
               time.strftime("%Y-%m-%dT%H:%M:%S+01:00", time.gmtime(_seconds(then) + 3600))):
        reply = requests.get(url, params={"at": at})
        assert (reply.status_code, reply.text, reply.headers["Wo-Metadata-Commit"]) == (200, "a=1\nb=1\n", first), at
        one = requests.get(url + "/b", params={"at": at})
        assert (one.status_code, one.text) == (200, "1")
    before = requests.get(url, params={"at": iso(_seconds(then) - 1)})
    assert (before.status_code, before.text, "Wo-Metadata-Commit" in before.headers) == (200, "", False)
    assert requests.get(url + "/a", params={"at": "2001-01-01"}).status_code == 404
    assert requests.get(url + "/b").status_code == 404  # deleted now
    reply = requests.get(url, params={"at": "yesterday"})
    assert reply.status_code == 400 and "ISO-8601" in reply.json()["msg"]
    unknown = "0" * 40
    reply = requests.get(url, params={"at": unknown})
    assert (reply.status_code, reply.json()) == (
        404, {"msg": f"commit {unknown} is not in the history of osm/area"})
    # A tag's commit from the history stands for its time.
    at_tag = requests.get(url, params={"at": history[3]["commit"]})
    at_time = requests.get(url, params={"at": history[3]["time"]})
    assert (at_tag.status_code, at_tag.text, at_tag.headers.get("Wo-Metadata-Commit")) == (
        200, at_time.text, at_time.headers.get("Wo-Metadata-Commit"))
    missing = requests.get(url + "/zz", params={"at": "2001-01-01T00:00:00+01:00"})
    assert missing.json() == {"msg": "map osm/area has no metadata key 'zz' at 2000-12-31T23:00:00Z"}
    pages, links = follow(srv.url + "/osm/area/_history", n=3)
    assert [len(p) for p in pages] == [3, 1] and links == [f"/osm/area/_history?n=3&last={history[2]['commit']}"]
    bad = requests.get(srv.url + "/osm/area/_history", params={"last": unknown})
    assert (bad.status_code, bad.json()) == (404, {"msg": f"commit {unknown} is not in the history of osm/area"})


def _seconds(text: str) -> int:
    return int(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)


# -- regressions from an adversarial review -----------------------------------------------------

def test_knowing_a_digest_does_not_let_a_writer_tag_or_probe_it(guarded):
    srv, digests = guarded
    carol, alice = ("carol", USERS["carol"]), ("alice", USERS["alice"])  # carol writes on robots only
    secret, config = digests["S"], digests["C"]
    reply = requests.put(srv.url + "/robots/steal/v1", json=tag_body(secret, config), auth=carol)
    never = "sha256:" + "3" * 64
    unknown = requests.put(srv.url + "/robots/steal/v1", json=tag_body(never, config), auth=carol)
    assert (reply.status_code, reply.json()) == (404, {"msg": f"map_digest {secret} names no uploaded map"})
    assert (unknown.status_code, unknown.json()) == (404, {"msg": f"map_digest {never} names no uploaded map"})
    assert requests.get(f"{srv.url}/blobs/{secret}", auth=carol).status_code == 404
    # Announcing the digest gets no "already uploaded" unless the bytes say so.
    probe = requests.put(srv.url + "/blobs/upload", data=b"not the secret", auth=carol,
                         headers={"Wo-Map-Digest": secret})
    assert probe.status_code == 400 and probe.json()["msg"].startswith("the map has digest sha256:")
    owner = requests.put(srv.url + "/blobs/upload", data=b"not the secret", auth=alice,
                         headers={"Wo-Map-Digest": secret})
    assert (owner.status_code, owner.json()) == (409, {"msg": f"map {secret} was already uploaded"})
    assert "refs/wo/robots/steal/v1" not in refs(srv.data)


def test_concurrent_deletes_of_one_tag_are_one_200_and_404s(fresh_server):
    import concurrent.futures

    srv = fresh_server()
    srv.push("osm/area/v1")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: requests.delete(srv.url + "/osm/area/v1").status_code, range(8)))
    assert codes == [200] + [404] * 7
    history = requests.get(srv.url + "/osm/area/_history").json()["history"]
    assert [h["action"] for h in history] == ["delete-tag", "create-tag"]
    fsck(srv.data)


def test_a_tag_deleted_and_made_again_alike_is_one_commit_and_pages_end(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1")
    for _ in range(3):
        assert requests.delete(srv.url + "/osm/area/v1").status_code == 200
        assert srv.tag("osm/area/v1", m, c).status_code == 201
    history = requests.get(srv.url + "/osm/area/_history").json()["history"]
    ids = [(h["action"], h["commit"]) for h in history]
    assert len(ids) == len(set(ids))
    pages, _ = follow(srv.url + "/osm/area/_history", n=1)
    assert [entry for page in pages for entry in page] == history


@pytest.mark.parametrize("query", ["n=" + "1" * 5000, "n=00001", "sort=time&last=" + "1" * 5000 + ",v1"])
def test_huge_numbers_in_queries_are_400(server, unique, query):
    server.push(f"{unique}/m/v1")
    reply = requests.get(f"{server.url}/{unique}/m/_tags?{query}")
    assert reply.status_code == 400 and "msg" in reply.json()


@pytest.mark.parametrize("spec", ["bytes=" + "1" * 5000 + "-", "bytes=0-" + "1" * 5000, "bytes=-" + "1" * 5000,
                                  "bytes=\u0660-\u0665"])
def test_ranges_with_huge_or_unicode_numbers_answer_the_whole_body(server, big, spec):
    data, digest = big
    reply = requests.get(f"{server.url}/blobs/{digest}", headers={"Range": spec.encode("utf-8")})
    assert (reply.status_code, len(reply.content)) == (200, len(data))


def test_a_pushed_deletion_record_with_a_wild_time_does_not_break_the_history(fresh_server, tmp_path):
    srv = fresh_server()
    srv.push("osm/area/v1")
    assert requests.put(srv.url + "/osm/area/metadata", data=b"a=1").status_code == 200
    head = refs(srv.data)["refs/wo/_metadata/osm/area"]
    message = "delete-tag ghost\n\ntag_commit: " + "1" * 40 + "\ncreated: 99999999999999999999\n"
    tree = git(srv.data, "rev-parse", head + "^{tree}").stdout.strip()
    identity = {"GIT_AUTHOR_NAME": "op", "GIT_AUTHOR_EMAIL": "op@example.org",  # a machine may have none
                "GIT_COMMITTER_NAME": "op", "GIT_COMMITTER_EMAIL": "op@example.org"}
    commit = subprocess.run(["git", "--git-dir", str(srv.data), "commit-tree", tree, "-p", head, "-m", message],
                            check=True, capture_output=True, text=True, env={**os.environ, **identity}).stdout.strip()
    clone = tmp_path / "c.git"
    git(tmp_path, "clone", "-q", "--mirror", str(srv.data), str(clone))
    git(clone, "fetch", "-q", str(srv.data), commit)
    git(clone, "push", "-q", str(srv.data), f"{commit}:refs/wo/_metadata/osm/area")
    reply = requests.get(srv.url + "/osm/area/_history")
    assert reply.status_code == 200
    assert [(h["action"], h.get("tag")) for h in reply.json()["history"]][:1] == [("delete-tag", "ghost")]


def test_an_old_unreachable_tree_a_new_tag_reuses_is_touched_before_its_ref_exists(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1", b"the map", b"k: 1\n")
    tree = git(srv.data, "rev-parse", "refs/wo/osm/area/v1^{tree}").stdout.strip()
    assert requests.delete(srv.url + "/osm/area/v1").status_code == 200
    path = srv.data / "objects" / tree[:2] / tree[2:]
    os.utime(path, (time.time() - 7200,) * 2)  # unreachable and old: git prune would remove it
    started = time.time() - 1
    assert srv.tag("osm/area/v2", m, c).status_code == 201
    assert git(srv.data, "rev-parse", "refs/wo/osm/area/v2^{tree}").stdout.strip() == tree
    assert path.stat().st_mtime >= started


def test_an_uploader_proves_it_holds_bytes_someone_else_tagged_where_it_cannot_read(guarded, home_env):
    srv, digests = guarded
    carol, alice, dave = ("carol", USERS["carol"]), ("alice", USERS["alice"]), ("dave", USERS["dave"])
    data = b"carol's map, tagged by alice in secret"
    first = requests.put(srv.url + "/blobs/upload", data=data, auth=carol)
    assert first.status_code == 201
    m, proof = first.json()["digest"], first.headers["Wo-Upload-Proof"]
    assert requests.put(srv.url + "/secret/grab/v1", json=tag_body(m, digests["C"]), auth=alice).status_code == 201
    refused = requests.put(srv.url + "/robots/own/v1", json=tag_body(m, digests["C"]), auth=carol)
    assert (refused.status_code, refused.json()) == (404, {"msg": f"map_digest {m} names no uploaded map"})
    # Not hex at all, nor ASCII (found by reliability/fuzz.py: it was a 500): not a proof either.
    for wrong in (proof[:-1] + ("0" if proof[-1] != "0" else "1"), 7, None, "é" * 64, "\ud800", "\u00a4\x00"):
        body = {**tag_body(m, digests["C"]), "map_proof": wrong}
        refused = requests.put(srv.url + "/robots/own/v1", json=body, auth=carol)
        assert (refused.status_code, refused.json()) == (404, {"msg": f"map_digest {m} names no uploaded map"})
    # Someone else's proof is not carol's.
    dave_proof = requests.put(srv.url + "/blobs/upload", data=data, auth=dave)
    assert dave_proof.status_code == 403  # dave may not upload at all
    again = requests.put(srv.url + "/blobs/upload", data=data, auth=carol, headers={"Wo-Map-Digest": m})
    assert (again.status_code, again.headers["Wo-Upload-Proof"]) == (409, proof)
    tagged = requests.put(srv.url + "/robots/own/v1", json={**tag_body(m, digests["C"]), "map_proof": proof}, auth=carol)
    assert tagged.status_code == 201, tagged.text
    assert requests.get(f"{srv.url}/blobs/{m}", auth=carol).content == data
    # The client does the same by itself: HEAD says 404, so it uploads, and tags with the proof.
    (home_env["dir"] / "map").write_bytes(data)
    (home_env["dir"] / "config").write_bytes(b"c: 1\n")
    pushed = subprocess.run([os.sys.executable, "-m", "wogit", "push", "robots/own:v2", "--map", str(home_env["dir"] / "map"),
                             "--config", str(home_env["dir"] / "config"), "--registry", srv.url, "--json"],
                            env={**home_env["env"], "WOGIT_USER": "carol", "WOGIT_PASSWORD": USERS["carol"]},
                            capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    assert requests.get(srv.url + "/robots/own/v2", auth=carol).headers["Wo-Map-Digest"] == m


@pytest.fixture
def home_env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return {"dir": tmp_path, "env": {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}}


def test_a_dangling_index_ref_does_not_break_listings_or_gc(fresh_server):
    srv = fresh_server()
    m, c = srv.push("osm/area/v1")
    broken = srv.data / "refs" / "wo" / "_maps" / "sha256" / ("4" * 64)
    broken.write_text("5" * 40 + "\n")  # a ref at an object that is not there
    reply = requests.get(f"{srv.url}/blobs/{m}/_tags")
    assert (reply.status_code, [t["tag"] for t in reply.json()["tags"]]) == (200, ["v1"])
    gc = subprocess.run([os.sys.executable, "-m", "wogit", "gc", "--data", str(srv.data), "--json"],
                        capture_output=True, text=True)
    assert (gc.returncode, gc.stdout) == (1, "")  # git prunes nothing while a ref names a missing object
    assert gc.stderr.startswith("wogit gc: git prune refused to run: fatal: ") and gc.stderr.endswith("; run wogit fsck\n")
    check = subprocess.run([os.sys.executable, "-m", "wogit", "fsck", "--data", str(srv.data)],
                           capture_output=True, text=True)
    assert check.returncode == 1
    assert f"problem: refs/wo/_maps/sha256/{'4' * 64}: a map's digest index ref must point at a tree" in check.stdout


# Found by reliability/fuzz.py: /blobs/<digest> took "upload" for a digest, so Allow on the upload
# paths said GET,HEAD,PUT and a GET there was a 400 about a digest.
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE"])
@pytest.mark.parametrize("path", ["/blobs/upload", "/configs/upload"])
def test_the_upload_paths_allow_only_put(server, method, path):
    reply = requests.request(method, server.url + path)
    assert (reply.status_code, reply.headers["Allow"], reply.headers["Content-Type"]) == (405, "PUT", "application/json")
    if method != "HEAD":
        assert reply.json() == {"msg": f"{method} is not allowed on {path}; allowed: PUT"}


def test_a_digest_route_still_answers_names_like_upload(server):
    for path in ("/blobs/uploads", "/configs/upload.x"):
        reply = requests.get(server.url + path)
        assert (reply.status_code, reply.headers["Allow"] if "Allow" in reply.headers else None) == (400, None)
        assert reply.json()["msg"].startswith("invalid digest ")


# Found by reliability/fuzz.py: a well-formed commit id not in the history was a 400, as if the
# request were malformed; like ?at=, it names nothing here: 404.
def test_history_last_must_be_a_commit_id_of_this_history(server, unique):
    server.push(f"{unique}/m/v1")
    server.push(f"{unique}/m/v2")
    history = requests.get(f"{server.url}/{unique}/m/_history").json()["history"]
    after_first = requests.get(f"{server.url}/{unique}/m/_history", params={"last": history[0]["commit"]})
    assert (after_first.status_code, after_first.json()) == (200, {"history": history[1:]})
    unknown = requests.get(f"{server.url}/{unique}/m/_history", params={"last": "e" * 40})
    assert (unknown.status_code, unknown.json()) == (404, {"msg": f"commit {'e' * 40} is not in the history of {unique}/m"})
    for bad in ("x", "E" * 40, "e" * 39, history[0]["commit"] + "0", ""):
        refused = requests.get(f"{server.url}/{unique}/m/_history", params={"last": bad})
        assert (refused.status_code, refused.json()) == (400, {"msg": f"last={bad!r} is not a commit id (40 lowercase hex digits)"})
