"""Unit tests of wogit.auth and wogit.users_cli: real htpasswd files, real bcrypt, real `htpasswd -B`.

No server: these call the functions directly.  Files are made by Apache's own
`htpasswd` (apache2-utils) where it is installed, else by tests/htpasswd_tool.py's stand-in; bcrypt cost 4
keeps them fast except where timing is measured.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import stat
import sys
import threading
import time

import pytest
from htpasswd_tool import REAL, htpasswd, htpasswd_verifies, needs_real_htpasswd

from wogit import auth, users_cli


def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def age(path, seconds: float = 3600) -> None:
    """Move a file's modification time into the past, as if written long ago."""
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(then, then))


def eventually(condition, within: float = 2.0) -> float:
    """Seconds until ``condition()`` held; fails if it did not within ``within``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, f"not within {within} s"
        time.sleep(0.02)
    return time.monotonic() - start


# -- parse_basic -------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("", None),
    (basic(b"alice:secret"), ("alice", "secret")),
    (basic(b"alice:pa:ss:word"), ("alice", "pa:ss:word")),
    (basic(b"alice:"), ("alice", "")),
    (basic("jürgen:pässwörd 🔑".encode()), ("jürgen", "pässwörd 🔑")),
    ("basic " + base64.b64encode(b"a:b").decode(), ("a", "b")),
    ("BASIC " + base64.b64encode(b"a:b").decode(), ("a", "b")),
    ("bAsIc      " + base64.b64encode(b"a:b").decode(), ("a", "b")),
    ("Basic\t" + base64.b64encode(b"a:b").decode() + "  ", ("a", "b")),
])
def test_parse_basic(header, expected):
    assert auth.parse_basic(header) == expected


@pytest.mark.parametrize("header", [
    "Bearer abc",
    "Digest username=alice",
    "Basic",
    "Basic    ",
    "   ",
    "Basic !!!!",
    "Basic YTpiYw",  # "a:bc" without its padding
    "Basic YT pi",
    "Basic YTpi YTpi",
    "Basic ÿÿÿÿ",
    basic(b"no-colon-secretpassword"),
    basic(b"\xff\xfe:secretpassword"),
])
def test_parse_basic_malformed_raises_value_error_without_credentials(header):
    with pytest.raises(ValueError) as raised:
        auth.parse_basic(header)
    message = str(raised.value)
    assert message and "secretpassword" not in message and header.split()[-1:] != [message]
    if header.startswith("Basic ") and len(header) > 10:
        assert header[6:].strip() not in message


# -- Users: files made by htpasswd ----------------------------------------------------

@needs_real_htpasswd
def test_a_file_made_by_htpasswd_verifies(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "pa:ss wörd")
    htpasswd("-B", "-b", "-C", "4", str(path), "bob", "hunter2")
    assert ":$2y$04$" in path.read_text()
    users = auth.Users(str(path))
    assert users.check("alice", "pa:ss wörd")
    assert users.check("bob", "hunter2")
    assert not users.check("alice", "pa:ss word")
    assert not users.check("alice", "hunter2")
    assert not users.check("bob", "")
    assert not users.check("carol", "hunter2")
    assert not users.check("", "")
    assert users.names() == ["alice", "bob"]
    assert users.problems == []


def test_an_unknown_user_costs_one_bcrypt_check_like_a_known_one(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "10", str(path), "alice", "right")
    users = auth.Users(str(path))
    users.check("nobody", "warm")  # makes the dummy hash once
    before = users.verifications
    assert not users.check("nobody", "guess")
    assert not users.check("alice", "guess")
    assert users.verifications == before + 2


def test_verified_credentials_are_cached_and_failures_are_not(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "right")
    users = auth.Users(str(path))
    assert users.check("alice", "right")
    assert users.verifications == 1
    for _ in range(5):
        assert users.check("alice", "right")
    assert users.verifications == 1
    assert not users.check("alice", "wrong")
    assert not users.check("alice", "wrong")
    assert users.verifications == 3
    assert not users.check("bob", "right")
    assert users.verifications == 4


def test_htpasswd_changing_a_password_in_place_is_seen_within_two_seconds(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "old-password")
    htpasswd("-B", "-b", "-C", "4", str(path), "bob", "bobs")
    age(path)  # a file settled long ago: only its modification time can tell a change
    users = auth.Users(str(path))
    assert users.check("alice", "old-password")  # now cached
    before = os.stat(path)
    htpasswd("-B", "-b", "-C", "4", str(path), "alice", "new-password")
    after = os.stat(path)
    assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)  # the pitfall: only mtime changes
    assert eventually(lambda: users.check("alice", "new-password")) < 2.0
    assert not users.check("alice", "old-password")
    assert users.check("bob", "bobs")


def test_a_change_within_the_same_timestamp_is_seen(tmp_path):
    """Two writes may share a modification time: a recently written file is read again."""
    path, other = tmp_path / "users", tmp_path / "other"
    auth.add_user(str(path), "alice", "first", cost=4)
    auth.add_user(str(other), "alice", "other", cost=4)
    stamp = os.stat(path).st_mtime_ns
    users = auth.Users(str(path))
    assert users.check("alice", "first")
    with open(path, "r+b") as file:  # in place, equal length, and the same timestamp: only a re-read tells
        file.write(other.read_bytes())
    os.utime(path, ns=(stamp, stamp))
    eventually(lambda: users.check("alice", "other"))
    assert not users.check("alice", "first")


def test_removing_a_user_takes_effect_even_when_cached(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "a")
    htpasswd("-B", "-b", "-C", "4", str(path), "bob", "b")
    htpasswd("-B", "-b", "-C", "4", str(path), "carol", "c")
    age(path)
    users = auth.Users(str(path))
    assert users.check("alice", "a") and users.check("bob", "b") and users.check("carol", "c")
    htpasswd("-D", str(path), "bob")
    eventually(lambda: not users.check("bob", "b"))
    assert auth.remove_user(str(path), "carol")
    eventually(lambda: not users.check("carol", "c"))
    assert users.check("alice", "a")
    assert users.names() == ["alice"]


def test_a_file_that_vanishes_means_no_users(tmp_path):
    path = tmp_path / "users"
    auth.add_user(str(path), "alice", "a", cost=4)
    users = auth.Users(str(path))
    assert users.check("alice", "a")
    os.unlink(path)
    eventually(lambda: not users.check("alice", "a"))
    assert users.names() == []
    assert users.problems == [f"{path} does not exist: no users"]
    auth.add_user(str(path), "alice", "a", cost=4)
    eventually(lambda: users.check("alice", "a"))


def test_a_missing_file_loads_as_no_users(tmp_path):
    users = auth.Users(str(tmp_path / "nothing"))
    assert users.names() == []
    assert not users.check("alice", "a")


def test_passwords_over_72_bytes_do_not_raise_and_match_htpasswd(tmp_path):
    path = tmp_path / "users"
    long_ascii, long_utf8 = "x" * 100, "é" * 50  # 100 bytes each
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", long_ascii)
    htpasswd("-B", "-b", "-C", "4", str(path), "bob", long_utf8)
    users = auth.Users(str(path))
    assert users.check("alice", long_ascii)
    assert users.check("alice", "x" * 72 + "anything after byte 72")  # bcrypt's limit, as htpasswd made it
    assert not users.check("alice", "x" * 71)
    assert users.check("bob", long_utf8)
    assert not users.check("nobody", long_utf8 * 10)
    assert auth.add_user(str(path), "carol", "y" * 500, cost=4)
    eventually(lambda: users.check("carol", "y" * 500))
    assert auth.add_user(str(path), "dave", "z" * 200, cost=4)
    assert htpasswd_verifies(path, "dave", "z" * 200)  # htpasswd refuses passwords over 255 bytes


def test_other_hash_kinds_load_but_never_match_and_are_reported_without_the_hash(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "secret")
    htpasswd("-m", "-b", str(path), "md5", "secret")
    htpasswd("-s", "-b", str(path), "sha", "secret")
    htpasswd("-p", "-b", str(path), "plain", "secret")
    with open(path, "a") as file:
        file.write("broken:$2y$04$tooshort\n")
    text = path.read_text()
    users = auth.Users(str(path))
    assert users.names() == ["alice", "md5", "sha", "plain", "broken"]
    assert users.check("alice", "secret")
    for name in ("md5", "sha", "plain", "broken"):
        assert not users.check(name, "secret")
    assert users.problems == [
        "line 2: user 'md5' has a non-bcrypt hash",
        "line 3: user 'sha' has a non-bcrypt hash",
        "line 4: user 'plain' has a non-bcrypt hash",
        "line 5: user 'broken' has a malformed bcrypt hash",
    ]
    hashes = [line.split(":", 1)[1] for line in text.splitlines()]
    assert not any(h in problem for h in hashes for problem in users.problems)


def test_comments_blank_lines_and_odd_lines(tmp_path):
    path = tmp_path / "users"
    auth.add_user(str(path), "alice", "a", cost=4)
    alice = path.read_bytes()
    auth.add_user(str(path), "alice", "other", cost=4)
    other = path.read_bytes().split(b":", 1)[1]
    path.write_bytes(b"# the team\n\n   \n  # indented comment\n" + alice.rstrip(b"\n") + b"\r\n"
                     b"no colon here\n\xff\xfe:x\nalice:" + other)
    users = auth.Users(str(path))
    assert users.names() == ["alice"]
    assert users.check("alice", "a")  # CRLF tolerated; the first line of a name counts
    assert not users.check("alice", "other")
    assert users.problems == ["line 6: not 'name:hash'", "line 7: not UTF-8",
                              "line 8: user 'alice' again (the first line counts)"]


def test_checks_from_many_threads(tmp_path):
    path = tmp_path / "users"
    for name in ("alice", "bob"):
        auth.add_user(str(path), name, name + "-pw", cost=4)
    users = auth.Users(str(path))
    results = []

    def work(name: str, password: str) -> None:
        results.append([users.check(name, password) for _ in range(20)] == [password == name + "-pw"] * 20)

    threads = [threading.Thread(target=work, args=args) for args in
               [("alice", "alice-pw"), ("bob", "bob-pw"), ("alice", "bob-pw"), ("eve", "x")] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * len(threads)


# -- Throttle ---------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_blocks_after_max_failures_until_the_window_passes():
    clock = Clock()
    throttle = auth.Throttle(max_failures=3, window=60.0, clock=clock)
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failure("10.0.0.1")
    clock.now += 10
    throttle.failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 50  # the first of the three leaves the window at +60
    assert throttle.retry_after("10.0.0.2") is None
    clock.now += 49.5
    assert throttle.retry_after("10.0.0.1") == 1  # rounded up
    clock.now += 0.5
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failure("10.0.0.1")  # two still in the window: blocked again until the second leaves
    assert throttle.retry_after("10.0.0.1") == 10
    clock.now += 200
    assert throttle.retry_after("10.0.0.1") is None


def test_throttle_defaults_and_real_time():
    throttle = auth.Throttle()
    assert (throttle.max_failures, throttle.window) == (10, 60.0)
    quick = auth.Throttle(max_failures=2, window=0.3)
    quick.failure("a")
    quick.failure("a")
    assert quick.retry_after("a") == 1
    time.sleep(0.35)
    assert quick.retry_after("a") is None


def test_throttle_memory_is_bounded():
    clock = Clock()
    throttle = auth.Throttle(max_failures=2, window=60.0, max_addresses=3, clock=clock)
    for address in ("a", "b", "c"):
        throttle.failure(address)
        throttle.failure(address)
    assert len(throttle) == 3
    throttle.failure("d")
    assert len(throttle) == 3
    assert throttle.retry_after("a") is None  # the longest quiet address was dropped
    assert throttle.retry_after("b") == 60
    clock.now += 61
    throttle.failure("e")  # entries past the window are forgotten
    assert len(throttle) == 1
    with pytest.raises(ValueError):
        auth.Throttle(max_failures=0)


def test_throttle_from_many_threads():
    throttle = auth.Throttle(max_failures=1000, window=60.0)

    def work(address: str) -> None:
        for _ in range(250):
            throttle.failure(address)

    threads = [threading.Thread(target=work, args=(f"10.0.0.{i % 2}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttle.retry_after("10.0.0.0") is not None and throttle.retry_after("10.0.0.1") is not None


# -- add_user, remove_user, list_users --------------------------------------------------

def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_add_remove_list_round_trip(tmp_path):
    path = str(tmp_path / "users")
    assert auth.list_users(path) == []
    assert auth.add_user(path, "alice", "a", cost=4) is True
    assert mode(path) == 0o600
    assert auth.add_user(path, "bob", "b", cost=4) is True
    assert auth.add_user(path, "alice", "a2", cost=4) is False
    assert auth.list_users(path) == ["alice", "bob"]
    lines = open(path).read().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert all(line.split(":", 1)[1].startswith("$2y$04$") for line in lines)
    assert htpasswd_verifies(path, "alice", "a2") and not htpasswd_verifies(path, "alice", "a")
    assert htpasswd_verifies(path, "bob", "b")
    assert auth.remove_user(path, "alice") is True
    assert auth.remove_user(path, "alice") is False
    assert auth.list_users(path) == ["bob"]
    assert auth.remove_user(str(tmp_path / "nothing"), "bob") is False
    assert not os.path.exists(tmp_path / "nothing")
    assert sorted(os.listdir(tmp_path)) == ["users"]  # no temporary file left behind
    assert auth.add_user(path, "x" * 128, "p", cost=4)
    assert auth.add_user(path, "jürgen@example.com", "p", cost=4)
    assert auth.Users(path).check("jürgen@example.com", "p")


def test_editing_a_file_made_by_htpasswd_keeps_lines_and_comments(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "a")
    htpasswd("-B", "-b", "-C", "4", str(path), "bob", "b")
    htpasswd("-m", "-b", str(path), "legacy", "l")
    alice, bob, legacy = path.read_text().splitlines()
    path.write_text(f"# ops team\n{alice}\n\n# contractors\n{bob}\n{legacy}")  # no final newline
    os.chmod(path, 0o644)
    assert auth.add_user(str(path), "bob", "b2", cost=4) is False
    assert auth.add_user(str(path), "carol", "c", cost=4) is True
    assert mode(path) == 0o600
    lines = path.read_text().splitlines()
    assert lines[:4] == ["# ops team", alice, "", "# contractors"]
    assert lines[4].startswith("bob:$2y$04$") and lines[4] != bob
    assert lines[5] == legacy
    assert lines[6].startswith("carol:$2y$04$") and len(lines) == 7
    assert htpasswd_verifies(path, "alice", "a") and htpasswd_verifies(path, "bob", "b2")
    assert htpasswd_verifies(path, "carol", "c") and htpasswd_verifies(path, "legacy", "l")
    assert auth.remove_user(str(path), "alice") is True
    assert path.read_text().splitlines() == ["# ops team", "", "# contractors"] + lines[4:]
    assert auth.list_users(str(path)) == ["bob", "legacy", "carol"]


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\tb", "new\nline", "nul\0", "bell\a", "zero\u200bwidth",
                                  "x" * 129, "#comment", "*"])
def test_invalid_user_names_raise(tmp_path, name):
    with pytest.raises(ValueError):
        auth.add_user(str(tmp_path / "users"), name, "password", cost=4)
    assert not os.path.exists(tmp_path / "users")


def test_invalid_passwords_raise(tmp_path):
    for password in ("", "nul\0inside"):
        with pytest.raises(ValueError):
            auth.add_user(str(tmp_path / "users"), "alice", password, cost=4)
    assert not os.path.exists(tmp_path / "users")


def test_concurrent_edits_lose_nothing(tmp_path):
    path = str(tmp_path / "users")
    names = [f"user{i}" for i in range(16)]
    threads = [threading.Thread(target=auth.add_user, args=(path, name, name, 4)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(auth.list_users(path)) == sorted(names)
    threads = [threading.Thread(target=auth.remove_user, args=(path, name)) for name in names[::2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(auth.list_users(path)) == sorted(names[1::2])
    users = auth.Users(path)
    assert all(users.check(name, name) for name in names[1::2])


def test_a_symlinked_file_stays_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "users"
    link.symlink_to(real / "users")
    auth.add_user(str(link), "alice", "a", cost=4)
    assert link.is_symlink() and (real / "users").exists()
    assert auth.Users(str(link)).check("alice", "a")


# -- wogit user ----------------------------------------------------------------------

def user(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``wogit user ...`` through users_cli: (exit code, stdout, stderr)."""
    top = argparse.ArgumentParser(prog="wogit")
    users_cli.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["user", *argv])
    out, err, old = io.StringIO(), io.StringIO(), (sys.stdin, sys.stdout, sys.stderr)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = users_cli.run(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def test_cli_add_update_list_remove(tmp_path):
    path = str(tmp_path / "users")
    assert user("add", "alice", "--password-stdin", "--cost", "4", "--auth-file", path,
                stdin="pa:ss wörd \n") == (0, "added user alice\n", "")
    assert user("add", "alice", "--password-stdin", "--cost", "4", "--auth-file", path,
                stdin="newer\n") == (0, "updated password of alice\n", "")
    assert user("add", "bob", "--password-stdin", "--cost", "4", "--auth-file", path,
                stdin=" spaces kept ") == (0, "added user bob\n", "")
    assert mode(path) == 0o600
    users = auth.Users(path)
    assert users.check("alice", "newer") and users.check("bob", " spaces kept ")
    assert user("list", "--auth-file", path) == (0, "alice\nbob\n", "")
    assert user("remove", "bob", "--auth-file", path) == (0, "removed user bob\n", "")
    code, out, err = user("remove", "bob", "--auth-file", path)
    assert (code, out) == (1, "") and "bob" in err
    assert user("list", "--auth-file", path) == (0, "alice\n", "")


def test_cli_default_cost_is_12(tmp_path):
    path = tmp_path / "users"
    assert user("add", "alice", "--password-stdin", "--auth-file", str(path), stdin="pw\n")[0] == 0
    assert path.read_text().startswith("alice:$2y$12$")


def test_cli_reads_the_file_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "users"
    monkeypatch.setenv("WOGIT_AUTH_FILE", str(path))
    assert user("add", "alice", "--password-stdin", "--cost", "4", stdin="pw\n") == (0, "added user alice\n", "")
    assert user("list") == (0, "alice\n", "")
    other = tmp_path / "other"
    assert user("add", "bob", "--password-stdin", "--cost", "4", "--auth-file", str(other), stdin="pw\n")[0] == 0
    assert auth.list_users(str(path)) == ["alice"] and auth.list_users(str(other)) == ["bob"]


def test_cli_without_a_file_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("WOGIT_AUTH_FILE", raising=False)
    for argv in (("list",), ("remove", "bob"), ("add", "bob", "--password-stdin")):
        code, out, err = user(*argv, stdin="pw\n")
        assert (code, out) == (2, "")
        assert "--auth-file" in err and "WOGIT_AUTH_FILE" in err


def test_cli_usage_errors(tmp_path):
    path = str(tmp_path / "users")
    for argv, stdin in [(("add", "alice"), "\n"), (("add", "a:b"), "pw\n"), (("add", "x" * 129), "pw\n")]:
        code, out, err = user(*argv, "--password-stdin", "--auth-file", path, stdin=stdin)
        assert (code, out) == (2, "") and err
    assert not os.path.exists(path)
    with pytest.raises(SystemExit) as exited:
        user("add", "alice", "--cost", "3", "--auth-file", path)
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        user("frobnicate")


def test_cli_prompts_twice_and_refuses_a_mismatch(tmp_path, monkeypatch):
    path = str(tmp_path / "users")
    answers = []
    monkeypatch.setattr(users_cli.getpass, "getpass", lambda prompt: answers.pop(0))
    answers[:] = ["one", "two"]
    code, out, err = user("add", "alice", "--cost", "4", "--auth-file", path)
    assert (code, out) == (2, "") and "differ" in err and not os.path.exists(path)
    answers[:] = ["", ""]
    assert user("add", "alice", "--cost", "4", "--auth-file", path)[0] == 2
    answers[:] = ["s3cret", "s3cret"]
    assert user("add", "alice", "--cost", "4", "--auth-file", path) == (0, "added user alice\n", "")
    assert auth.Users(path).check("alice", "s3cret")


def test_cli_never_prints_a_hash_or_a_password(tmp_path):
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "alice-secret")
    htpasswd("-m", "-b", str(path), "legacy", "legacy-secret")
    outputs = [user("add", "bob", "--password-stdin", "--cost", "4", "--auth-file", str(path), stdin="bob-secret\n"),
               user("list", "--auth-file", str(path)),
               user("remove", "alice", "--auth-file", str(path))]
    code, out, err = outputs[1]
    assert (code, out) == (0, "alice\nlegacy\nbob\n")
    assert "legacy" in err and "non-bcrypt" in err  # the operator hears why legacy cannot log in
    printed = "".join(out + err for _, out, err in outputs)
    assert "secret" not in printed and "$2" not in printed and "$apr1$" not in printed


# -- the tests' htpasswd stand-in agrees with Apache's htpasswd ----------------------------------

@needs_real_htpasswd
def test_the_stand_in_writes_what_htpasswd_reads(tmp_path, monkeypatch):
    import htpasswd_tool
    path = tmp_path / "users"
    monkeypatch.setattr(htpasswd_tool, "REAL", None)
    htpasswd("-c", "-B", "-b", "-C", "4", str(path), "alice", "pa:ss wörd")
    htpasswd("-m", "-b", str(path), "md5", "m-secret")
    htpasswd("-s", "-b", str(path), "sha", "s-secret")
    htpasswd("-p", "-b", str(path), "plain", "p-secret")
    inode = path.stat().st_ino
    htpasswd("-B", "-b", "-C", "4", str(path), "alice", "new wörd")
    htpasswd("-D", str(path), "plain")
    assert path.stat().st_ino == inode
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["alice", "md5", "sha"]
    monkeypatch.setattr(htpasswd_tool, "REAL", REAL)
    for name, password in (("alice", "new wörd"), ("md5", "m-secret"), ("sha", "s-secret")):
        assert htpasswd_verifies(path, name, password) and not htpasswd_verifies(path, name, "wrong")
    assert htpasswd_tool.apr1(b"password", "saltsalt") == "$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/"  # openssl passwd -apr1
    htpasswd("-c", "-m", "-b", str(path), "x", "y")  # the real one, checked by the stand-in
    htpasswd("-B", "-b", "-C", "4", str(path), "z", "pa:ss wörd")
    monkeypatch.setattr(htpasswd_tool, "REAL", None)
    assert htpasswd_verifies(path, "x", "y") and not htpasswd_verifies(path, "x", "n")
    assert htpasswd_verifies(path, "z", "pa:ss wörd") and not htpasswd_verifies(path, "z", "pa:ss word")
