"""Unit tests of wogit.access (levels, policies) and wogit.config (the config file).

No server: tables of exact values against the permission model of issue 3, and
config files written to tmp_path and loaded as ``wogit serve --config`` would.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields

import pytest

from wogit import config
from wogit.access import ANONYMOUS, Level, Policy
from wogit.settings import CHOICES, GiB, KiB, MiB, Settings

NONE, READ, WRITE, DELETE, ADMIN = Level.NONE, Level.READ, Level.WRITE, Level.DELETE, Level.ADMIN

# The example, verbatim.
EXAMPLE = '''\
[server]
data = "/srv/wogit/registry.git"
host = "0.0.0.0"
port = 8080

[auth]
htpasswd = "/srv/wogit/users.htpasswd"   # relative paths are relative to this file

[access]
alice = { "*" = "admin" }
bob   = { "maps-*" = "write", "*" = "read" }
carol = { "*" = "read" }
"*"   = { "public-*" = "read" }          # anonymous clients
'''

EXAMPLE_GRANTS = {
    "alice": {"*": ADMIN},
    "bob": {"maps-*": WRITE, "*": READ},
    "carol": {"*": READ},
    "*": {"public-*": READ},
}

# (user, repository, level) for the example; None is an anonymous client.
EXAMPLE_LEVELS = [
    ("alice", "maps-x", ADMIN), ("alice", "public-x", ADMIN), ("alice", "other", ADMIN),
    ("bob", "maps-x", WRITE), ("bob", "maps-a.b_c-d", WRITE), ("bob", "maps", READ),
    ("bob", "other", READ), ("bob", "public-x", READ),
    ("carol", "maps-x", READ), ("carol", "other", READ), ("carol", "public-x", READ),
    (None, "public-x", READ), (None, "public-", READ), (None, "public", NONE),
    (None, "maps-x", NONE), (None, "other", NONE),
    ("dave", "public-x", READ), ("dave", "maps-x", NONE),  # a user not in [access]
    ("Alice", "maps-x", NONE), ("Bob", "maps-x", NONE),  # user names are case-sensitive
]

# (user, level on some repository, level on every repository) for the example.
EXAMPLE_SOMEWHERE_EVERYWHERE = [
    ("alice", ADMIN, ADMIN), ("bob", WRITE, READ), ("carol", READ, READ),
    (None, READ, NONE), ("dave", READ, NONE),
]


def write(directory, text: str | bytes, name: str = "wogit.toml") -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


# -- Level --------------------------------------------------------------------

def test_levels_are_ordered():
    assert [int(level) for level in (NONE, READ, WRITE, DELETE, ADMIN)] == [0, 1, 2, 3, 4]
    assert NONE < READ < WRITE < DELETE < ADMIN
    assert ANONYMOUS == "*"


@pytest.mark.parametrize("text, level", [("read", READ), ("write", WRITE), ("delete", DELETE), ("admin", ADMIN)])
def test_level_parse(text, level):
    assert Level.parse(text) is level


@pytest.mark.parametrize("text", ["Read", "READ", "none", "NONE", "", " read", "read ", "writ", "1", 1, None, "*"])
def test_level_parse_rejects(text):
    with pytest.raises(ValueError, match="read, write, delete, admin"):
        Level.parse(text)


# -- Policy -------------------------------------------------------------------

@pytest.mark.parametrize("user, repository, level", EXAMPLE_LEVELS)
def test_example_levels(user, repository, level):
    assert Policy(EXAMPLE_GRANTS).level(user, repository) is level


@pytest.mark.parametrize("user, somewhere, everywhere", EXAMPLE_SOMEWHERE_EVERYWHERE)
def test_example_some_and_every_repository(user, somewhere, everywhere):
    policy = Policy(EXAMPLE_GRANTS)
    assert policy.level(user, None) is somewhere
    assert policy.level_everywhere(user) is everywhere


@pytest.mark.parametrize("user", [None, "*", "alice", "anyone"])
@pytest.mark.parametrize("repository", [None, "maps-x", "a"])
def test_open_everyone_is_admin(user, repository):
    policy = Policy.open()
    assert policy.requires_auth is False
    assert policy.level(user, repository) is ADMIN
    assert policy.level_everywhere(user) is ADMIN


@pytest.mark.parametrize("user, level", [(None, NONE), ("alice", ADMIN), ("anyone", ADMIN)])
@pytest.mark.parametrize("repository", [None, "maps-x", "a"])
def test_authenticated_users_are_admin(user, level, repository):
    policy = Policy.authenticated()
    assert policy.requires_auth is True
    assert policy.level(user, repository) is level
    assert policy.level_everywhere(user) is level


def test_grants_require_auth():
    assert Policy(EXAMPLE_GRANTS).requires_auth is True
    assert Policy({}).requires_auth is True


def test_no_grants_nothing():
    policy = Policy({})
    for user in (None, "alice"):
        assert policy.level(user, "x") is NONE
        assert policy.level(user, None) is NONE
        assert policy.level_everywhere(user) is NONE


@pytest.mark.parametrize("patterns, repository, level", [
    # the highest of the matching patterns, whatever their order
    ({"*": ADMIN, "a*": READ}, "abc", ADMIN),
    ({"a*": READ, "*": ADMIN}, "abc", ADMIN),
    ({"*": READ, "a*": DELETE, "ab*": WRITE}, "abc", DELETE),
    ({"ab*": WRITE, "a*": DELETE, "*": READ}, "abc", DELETE),
    ({"*": READ, "a*": DELETE, "ab*": WRITE}, "xyz", READ),
    ({"a*": DELETE, "ab*": WRITE}, "xyz", NONE),
    # shell-style globs, whole name, case-sensitive
    ({"maps-*": WRITE}, "maps", NONE),
    ({"maps-*": WRITE}, "maps-", WRITE),
    ({"maps-*": WRITE}, "xmaps-a", NONE),
    ({"maps-x": WRITE}, "maps-x", WRITE),
    ({"maps-x": WRITE}, "maps-xy", NONE),
    ({"map?": READ}, "maps", READ),
    ({"map?": READ}, "map", NONE),
    ({"[ab]-*": READ}, "b-1", READ),
    ({"[ab]-*": READ}, "c-1", NONE),
    ({"[!ab]-*": READ}, "c-1", READ),
    ({"Maps-*": READ}, "maps-x", NONE),
    ({"maps.*": READ}, "maps.x", READ),
    ({"maps.*": READ}, "mapsyx", NONE),  # '.' is literal, not a regex
])
def test_patterns(patterns, repository, level):
    assert Policy({"u": patterns}).level("u", repository) is level


@pytest.mark.parametrize("anonymous, user, repository, level", [
    ({"x": WRITE}, {"x": READ}, "x", WRITE),  # what anonymous clients get, users get
    ({"x": READ}, {"x": WRITE}, "x", WRITE),
    ({"x": READ}, {}, "x", READ),
    ({"*": READ}, {"y": ADMIN}, "x", READ),
    ({"*": READ}, {"y": ADMIN}, "y", ADMIN),
])
def test_anonymous_grants_apply_to_users(anonymous, user, repository, level):
    policy = Policy({"*": anonymous, "u": user})
    assert policy.level("u", repository) is level
    assert policy.level("other", repository) is policy.level(None, repository)


@pytest.mark.parametrize("grants, user, somewhere, everywhere", [
    ({"u": {"a*": WRITE}}, "u", WRITE, NONE),
    ({"u": {"a*": WRITE, "*": READ}}, "u", WRITE, READ),
    ({"u": {"*": DELETE, "a*": ADMIN}}, "u", ADMIN, DELETE),
    ({"u": {"a*": WRITE}, "*": {"*": READ}}, "u", WRITE, READ),
    ({"u": {"a*": WRITE}, "*": {"*": READ}}, None, READ, READ),
    ({"u": {"*": ADMIN}}, None, NONE, NONE),
    ({"u": {"*a": ADMIN, "a*": ADMIN, "*?*": ADMIN}}, "u", ADMIN, NONE),  # wide, but not '*'
    ({"u": {"**": WRITE}}, "u", WRITE, WRITE),  # only stars: matches every name too
])
def test_some_and_every_repository(grants, user, somewhere, everywhere):
    policy = Policy(grants)
    assert policy.level(user, None) is somewhere
    assert policy.level_everywhere(user) is everywhere


def test_policy_is_immutable():
    grants = {"u": {"a*": READ}}
    policy = Policy(grants)
    grants["u"]["a*"] = ADMIN
    grants["v"] = {"*": ADMIN}
    assert policy.level("u", "ab") is READ
    assert policy.level("v", "ab") is NONE
    for name in ("requires_auth", "_grants", "anything"):
        with pytest.raises(AttributeError):
            setattr(policy, name, False)
    with pytest.raises(AttributeError):
        del policy.requires_auth


def test_policy_accepts_int_levels_and_rejects_others():
    assert Policy({"u": {"*": 2}}).level("u", "x") is WRITE
    with pytest.raises(ValueError):
        Policy({"u": {"*": "write"}})
    with pytest.raises(ValueError):
        Policy({"u": {"*": 9}})


def test_policy_equality():
    assert Policy.open() == Policy.open()
    assert Policy.authenticated() == Policy.authenticated()
    assert Policy.open() != Policy.authenticated()
    assert Policy({}) != Policy.authenticated()
    assert Policy(EXAMPLE_GRANTS) == Policy({user: dict(p) for user, p in EXAMPLE_GRANTS.items()})
    assert Policy({"u": {"*": READ}}) != Policy({"u": {"*": WRITE}})


@pytest.mark.parametrize("policy, description", [
    (Policy.open(), {"authentication": "open", "anonymous": {"*": "admin"}}),
    (Policy.authenticated(), {"authentication": "required", "anonymous": {}}),
    (Policy(EXAMPLE_GRANTS), {"authentication": "required", "anonymous": {"public-*": "read"}}),
    (Policy({"u": {"*": ADMIN}}), {"authentication": "required", "anonymous": {}}),
])
def test_describe(policy, description):
    assert json.loads(json.dumps(policy.describe())) == description
    assert "alice" not in json.dumps(policy.describe())  # no user names


# -- config: the example ----------------------------------------------

def test_example_loads(tmp_path):
    loaded = config.load(write(tmp_path, EXAMPLE))
    assert loaded.server == {"data": "/srv/wogit/registry.git", "host": "0.0.0.0", "port": 8080}
    assert loaded.htpasswd == "/srv/wogit/users.htpasswd"
    assert loaded.auth_present is True
    assert loaded.policy == Policy(EXAMPLE_GRANTS)
    for user, repository, level in EXAMPLE_LEVELS:
        assert loaded.policy.level(user, repository) is level, (user, repository)
    for user, somewhere, everywhere in EXAMPLE_SOMEWHERE_EVERYWHERE:
        assert loaded.policy.level(user, None) is somewhere
        assert loaded.policy.level_everywhere(user) is everywhere


def test_config_is_frozen(tmp_path):
    loaded = config.load(write(tmp_path, EXAMPLE))
    with pytest.raises(AttributeError):
        loaded.policy = Policy.open()


# -- config: which policy -------------------------------------------------------

@pytest.mark.parametrize("text, policy, auth_present", [
    ("", Policy.open(), False),
    ("# nothing\n", Policy.open(), False),
    ("[server]\nport = 1\n", Policy.open(), False),
    ('[auth]\nhtpasswd = "users"\n', Policy.authenticated(), True),
    ('[server]\nauth_file = "users"\n', Policy.authenticated(), False),
    ('[auth]\nhtpasswd = "users"\n[access]\n', Policy({}), True),
    ('[auth]\nhtpasswd = "users"\n[access]\ndave = {}\n', Policy({"dave": {}}), True),
    ('[auth]\nhtpasswd = "users"\n[access.bob]\n"maps-*" = "write"\nother = "delete"\n',
     Policy({"bob": {"maps-*": WRITE, "other": DELETE}}), True),
    ('[auth]\nhtpasswd = "users"\n[access]\n"*" = { "*" = "read" }\n', Policy({"*": {"*": READ}}), True),
    ("[auth]\nhtpasswd = 'users'\n[access]\n'bob' = { 'a*' = 'admin' }\n", Policy({"bob": {"a*": ADMIN}}), True),
])
def test_policy_shape(tmp_path, text, policy, auth_present):
    loaded = config.load(write(tmp_path, text))
    assert loaded.policy == policy
    assert loaded.auth_present is auth_present
    assert loaded.htpasswd == (str(tmp_path / "users") if policy.requires_auth else None)


# -- config: [server] values ----------------------------------------------------

def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    text = ('[server]\ndata = "registry.git"\ntls_cert = "tls/cert.pem"\ntls_key = "../key.pem"\n'
            '[auth]\nhtpasswd = "users.htpasswd"\n')
    write(tmp_path / "etc", text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = config.load(os.path.join("..", "etc", "wogit.toml"))
    etc = tmp_path / "etc"
    assert loaded.server == {"data": str(etc / "registry.git"), "tls_cert": str(etc / "tls" / "cert.pem"),
                             "tls_key": str(tmp_path / "key.pem")}
    assert loaded.htpasswd == str(etc / "users.htpasswd")


def test_absolute_paths_stay(tmp_path):
    loaded = config.load(write(tmp_path, '[server]\ndata = "/srv/r.git"\n[auth]\nhtpasswd = "/srv/u"\n'))
    assert loaded.server["data"] == "/srv/r.git"
    assert loaded.htpasswd == "/srv/u"


@pytest.mark.parametrize("value, size", [
    ('"64G"', 64 * GiB), ('"512M"', 512 * MiB), ('"512MiB"', 512 * MiB), ('"2000"', 2000),
    ('"1k"', KiB), ("1000", 1000), ("0", 0),
])
def test_sizes(tmp_path, value, size):
    text = "".join(f"{name} = {value}\n" for name in ("max_map_size", "max_config_size", "max_body_size",
                                                       "max_header_size"))
    loaded = config.load(write(tmp_path, "[server]\n" + text))
    assert loaded.server == dict.fromkeys(("max_map_size", "max_config_size", "max_body_size",
                                           "max_header_size"), size)


def test_types_converted(tmp_path):
    text = ("[server]\ntimeout = 5\nshutdown_timeout = 0.5\nlogin_failure_window = 60\n"
            "max_login_failures = 3\nfsync = false\nthreads = 4\nbacklog = 16\nport = 0\n")
    server = config.load(write(tmp_path, text)).server
    assert server == {"timeout": 5.0, "shutdown_timeout": 0.5, "login_failure_window": 60.0,
                      "max_login_failures": 3, "fsync": False, "threads": 4, "backlog": 16, "port": 0}
    assert type(server["timeout"]) is float and type(server["login_failure_window"]) is float


SAMPLES = {str: '"x"', int: "1", float: "1.5", bool: "true", tuple: '["http://a:1", "/srv/b.git"]'}
KINDS = {"tls_cert": str, "tls_key": str, "max_login_failures": int, "login_failure_window": float,
         **{field.name: type(field.default) for field in fields(Settings)}}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_setting_is_accepted(tmp_path, name):
    sample = f'"{CHOICES[name][-1]}"' if name in CHOICES else SAMPLES[KINDS[name]]  # a word it takes
    loaded = config.load(write(tmp_path, f"[server]\n{name} = {sample}\n"))
    assert list(loaded.server) == [name]
    assert type(loaded.server[name]) is KINDS[name]


def test_auth_file_in_server_and_auth_must_agree(tmp_path):
    text = '[server]\nauth_file = "users"\n[auth]\nhtpasswd = "./users"\n'
    assert config.load(write(tmp_path, text)).htpasswd == str(tmp_path / "users")


# -- config: every error names the file and the line ---------------------------

ERRORS = [
    # TOML syntax
    ("[server\nport = 1\n", 1, "invalid TOML"),
    ("[server]\nport = 80 80\n", 2, "invalid TOML"),
    ('[server]\nhost = "x\n', 2, "invalid TOML"),
    ("[server]\nport = 1\nport = 2\n", 3, "invalid TOML"),
    ("[access]\nbob = { a = 'read',\n  b = 'read' }\n", 2, "invalid TOML"),  # no newlines in inline tables
    ("[server]\n\n\nthreads = [1,\n", 4, "invalid TOML"),
    # unknown level
    ('[auth]\nhtpasswd = "u"\n[access]\nbob = { "maps-*" = "writ" }\n', 4,
     "unknown level 'writ' for user 'bob' (use read, write, delete, admin)"),
    ('[auth]\nhtpasswd = "u"\n\n[access]\nalice = { "*" = "admin" }\nbob   = { "maps-*" = "write", "*" = "Read" }\n',
     6, "unknown level 'Read' for user 'bob'"),
    ('[auth]\nhtpasswd = "u"\n[access]\n"*" = { "public-*" = "none" }\n', 4, "unknown level 'none' for user '*'"),
    ('[auth]\nhtpasswd = "u"\n[access.bob]\n"maps-*" = "read"\nother = "writ"\n', 5, "unknown level 'writ'"),
    ('[auth]\nhtpasswd = "u"\n[access]\nbob.other = "writ"\n', 4, "unknown level 'writ'"),
    # unknown key or table
    ("[server]\nport = 1\nprot = 2\n", 3, "unknown key 'prot' in [server]"),
    ('[auth]\nhtpasswd = "u"\npasswords = "p"\n', 3, "unknown key 'passwords' in [auth]"),
    ("[server]\nport = 1\n\n[servers]\nport = 2\n", 4, "unknown table [servers]"),
    ("# top\nport = 8080\n[server]\n", 2, "unknown key 'port' outside the tables"),
    ("[server.tls]\ncert = 'x'\n", 1, "unknown key 'tls' in [server]"),
    # [access] without [auth]
    ('[server]\nport = 1\n\n[access]\nbob = { "*" = "read" }\n', 4, "[access] needs an [auth] table"),
    ('[access.bob]\n"*" = "read"\n', 1, "[access] needs an [auth] table"),
    # an [access] value that is not a table of strings
    ('[auth]\nhtpasswd = "u"\n[access]\nalice = { "*" = "admin" }\nbob = "write"\n', 5,
     "[access] user 'bob' must be a table of pattern = level"),
    ('[auth]\nhtpasswd = "u"\n[access]\nbob = ["write"]\n', 4, "must be a table of pattern = level"),
    ('[auth]\nhtpasswd = "u"\n[access]\nbob = { "a*" = "read", "*" = 3 }\n', 4,
     "level of '*' for user 'bob' must be a string"),
    ('[auth]\nhtpasswd = "u"\n[access]\nbob = { "*" = { x = "read" } }\n', 4, "must be a string"),
    ('[auth]\nhtpasswd = "u"\n[access]\nbob = { "" = "read" }\n', 4, "empty repository pattern"),
    ('[auth]\nhtpasswd = "u"\n[access]\n"" = { "*" = "read" }\n', 4, "empty user name"),
    ('access = 3\n[auth]\nhtpasswd = "u"\n', 1, "[access] must be a table"),
    ('[server]\n[auth]\nhtpasswd = "u"\n[[access]]\n', 4, "[access] must be a table"),
    # [auth]
    ("[auth]\n", 1, "[auth] needs htpasswd"),
    ("[server]\n[auth]\nhtpasswd = 3\n", 3, "htpasswd must be a file name"),
    ('[auth]\nhtpasswd = ""\n', 2, "htpasswd must be a file name"),
    ('[server]\nauth_file = "a"\n[auth]\nhtpasswd = "b"\n', 2, "different user files"),
    # [server] values
    ('[server]\nport = "8080"\n', 2, "port must be an integer, not a string"),
    ("[server]\nport = 8080.0\n", 2, "port must be an integer, not a float"),
    ("[server]\nport = true\n", 2, "port must be an integer, not a boolean"),
    ("[server]\nport = 65536\n", 2, "port must be between 0 and 65535"),
    ("[server]\nthreads = 0\n", 2, "threads must be at least 1"),
    ("[server]\nbacklog = -1\n", 2, "backlog must be at least 0"),
    ("[server]\ntimeout = 0\n", 2, "timeout must be above 0"),
    ("[server]\nheader_timeout = 0\n", 2, "header_timeout must be above 0"),
    ("[server]\ntimeout = inf\n", 2, "timeout must be a finite number"),
    ("[server]\nfsync = 1\n", 2, "fsync must be true or false"),
    ('[server]\nhost = 1\n', 2, "host must be a string"),
    ('[server]\ndata = ""\n', 2, "data must not be empty"),
    ('[server]\nport = 1\nmax_map_size = "12Q"\n', 3, "max_map_size: not a size: '12Q'"),
    ("[server]\nmax_map_size = -1\n", 2, "max_map_size must be at least 0"),
    ("[server]\nmax_login_failures = 0\n", 2, "max_login_failures must be at least 1"),
    ("[server]\nmax_body_size = 1.5\n", 2, "max_body_size must be an integer"),
    ("server = { port = 1, prot = 2 }\n", 1, "unknown key 'prot' in [server]"),
    ("[server]\n# port = 1\n  'port' = 'x'\n", 3, "port must be an integer"),
]


@pytest.mark.parametrize("text, line, fragment", ERRORS)
def test_errors_name_the_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path} line {line}: "), str(caught.value)
    assert fragment in str(caught.value)
    assert (caught.value.path, caught.value.line) == (path, line)


def test_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path, b'[server]\nhost = "\xff"\n')
    with pytest.raises(config.ConfigError, match=r"line 2: not UTF-8$"):
        config.load(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "missing.toml")
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}: cannot read")
    assert caught.value.line is None


def test_lists_of_urls(tmp_path):
    text = '[server]\npush_mirrors = ["/srv/backup.git", "ssh://b/r.git"]\nnotify = []\n'
    assert config.load(write(tmp_path, text)).server == {"push_mirrors": ("/srv/backup.git", "ssh://b/r.git"),
                                                        "notify": ()}
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, '[server]\nport = 1\npush_mirrors = "/srv/backup.git"\n'))
    assert str(caught.value).endswith("line 3: push_mirrors must be an array of strings, not a string")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, '[server]\nnotify = ["http://r:1", 2]\n'))
    assert str(caught.value).endswith("line 2: notify must be an array of strings, not an array")
    assert Settings.from_env({"WOGIT_PUSH_MIRRORS": " /a.git  ssh://b/c.git "}).push_mirrors == ("/a.git", "ssh://b/c.git")
