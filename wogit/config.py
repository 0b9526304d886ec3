"""The config file of ``wogit serve --config FILE``: server settings, the user file, permissions.

::

    [server]                 # any setting of wogit.settings.Settings
    data = "registry.git"    # relative paths are relative to this file
    port = 8080
    max_map_size = "64G"     # sizes: bytes, or a string like "512M"

    [auth]
    htpasswd = "users.htpasswd"

    [access]                 # user = { pattern = level }; "*" is anonymous clients
    alice = { "*" = "admin" }
    "*"   = { "public-*" = "read" }

No ``[auth]`` and no ``[access]``: the registry is open.  ``[auth]`` alone: every
user is admin.  ``[access]`` needs ``[auth]``.  Every error names the file and the
line: TOML's own, and best effort (the first line where the key appears) for the rest.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, fields

from wogit.access import ANONYMOUS, Level, Policy
from wogit.settings import CHOICES, Settings, parse_size

#: [server] keys beyond the fields of Settings, and their types.
_EXTRA = {"tls_cert": str, "tls_key": str, "max_login_failures": int, "login_failure_window": float}
_PATHS = {"data", "tls_cert", "tls_key", "auth_file", "replica_password_file"}  # resolved against the file's directory
_LOWEST = {"port": 0, "threads": 1, "workers": 1, "max_idle_connections": 0, "max_uploads": 0, "max_login_failures": 1}  # numbers are never negative
_HIGHEST = {"port": 65535}
_POSITIVE = {"timeout", "header_timeout", "login_failure_window", "replica_interval", "mirror_interval", "hook_timeout"}  # floats that must be above zero
_TABLES = ("server", "auth", "access")
_LEVELS = "read, write, delete, admin"


class ConfigError(Exception):
    """A config file that cannot be used: ``str()`` names the file and the line."""

    def __init__(self, path: str, line: int | None, reason: str):
        super().__init__(f"{path} line {line}: {reason}" if line else f"{path}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass(frozen=True)
class Config:
    server: dict[str, object]  # Settings field name -> value, of the field's type
    htpasswd: str | None  # absolute path of the user file
    auth_present: bool  # the file has an [auth] table
    policy: Policy


def load(path: str) -> Config:
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, raw.count(b"\n", 0, exc.start) + 1, "not UTF-8") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, reason = _toml_error(str(exc), text)
        raise ConfigError(path, line, f"invalid TOML: {reason}") from None
    return _Reader(path, text).config(document)


def _toml_error(message: str, text: str) -> tuple[int, str]:
    """tomllib's message split into the line and the rest (its column kept)."""
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.S)
    if match:
        return int(match.group(2)), f"{match.group(1)} (column {match.group(3)})"
    match = re.fullmatch(r"(.*) \(at end of document\)", message, re.S)
    if match:
        return len(text.rstrip().split("\n")), f"{match.group(1)} (at the end of the file)"
    return 1, message


class _Reader:
    """Checks a parsed document against what the file may hold; knows where its keys are."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.lines = _KeyLines(text)

    def error(self, keys: tuple[str, ...], reason: str) -> ConfigError:
        return ConfigError(self.path, self.lines.find(keys), reason)

    def config(self, document: dict) -> Config:
        for name, value in document.items():
            if name not in _TABLES and not isinstance(value, dict):
                raise self.error((name,), f"unknown key {name!r} outside the tables (settings go in [server])")
            if name not in _TABLES:
                raise self.error((name,), f"unknown table [{name}] (known: [server], [auth], [access])")
            if not isinstance(value, dict):
                raise self.error((name,), f"[{name}] must be a table, not {_kind(value)}")
        server = self.server(document.get("server", {}))
        htpasswd = self.auth(document["auth"]) if "auth" in document else None
        if "auth_file" in server:
            if htpasswd is not None and htpasswd != server["auth_file"]:
                raise self.error(("server", "auth_file"), "[server] auth_file and [auth] htpasswd name "
                                                          "different user files: give it once, in [auth]")
            htpasswd = server["auth_file"]
        if "access" in document:
            if htpasswd is None:
                raise self.error(("access",), "[access] needs an [auth] table naming the user file "
                                              "(htpasswd = \"FILE\"): without users nobody can log in")
            policy = Policy(self.access(document["access"]))
        else:
            policy = Policy.authenticated() if htpasswd is not None else Policy.open()
        return Config(server=server, htpasswd=htpasswd, auth_present="auth" in document, policy=policy)

    def server(self, table: dict) -> dict[str, object]:
        kinds = dict(_EXTRA)
        kinds.update({field.name: type(field.default) for field in fields(Settings)})
        values = {}
        for name, value in table.items():
            if name not in kinds:
                raise self.error(("server", name), f"unknown key {name!r} in [server] "
                                                   f"(known: {', '.join(sorted(kinds))})")
            values[name] = self.setting(name, value, kinds[name])
        return values

    def setting(self, name: str, value, kind: type):
        where = ("server", name)
        if name.endswith("_size"):
            if isinstance(value, str):
                try:
                    return parse_size(value)
                except ValueError as exc:
                    raise self.error(where, f"{name}: {exc}") from None
            kind = int
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple:
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise self.error(where, f"{name} must be an array of strings, not {_kind(value)}")
            return tuple(value)
        if type(value) is not kind:
            wanted = _WANTED.get(kind) or _TOML_TYPES.get(kind, kind.__name__)
            raise self.error(where, f"{name} must be {wanted}, not {_kind(value)}")
        if name in CHOICES and value not in CHOICES[name]:
            raise self.error(where, f"{name} must be {' or '.join(map(repr, CHOICES[name]))}, not {value!r}")
        if kind is str and name in _PATHS:
            if not value:
                raise self.error(where, f"{name} must not be empty (leave it out instead)")
            return self.resolve(value)
        if kind in (int, float):
            if kind is float and not math.isfinite(value):
                raise self.error(where, f"{name} must be a finite number, not {value}")
            lowest, highest = _LOWEST.get(name, 0), _HIGHEST.get(name)
            if value < lowest or (highest is not None and value > highest) or (name in _POSITIVE and value <= 0):
                bounds = (f"between {lowest} and {highest}" if highest is not None
                          else "above 0" if name in _POSITIVE else f"at least {lowest}")
                raise self.error(where, f"{name} must be {bounds}, not {value}")
        return value

    def auth(self, table: dict) -> str:
        for name in table:
            if name != "htpasswd":
                raise self.error(("auth", name), f"unknown key {name!r} in [auth] (known: htpasswd)")
        value = table.get("htpasswd")
        if value is None:
            raise self.error(("auth",), "[auth] needs htpasswd = \"FILE\" (the user file)")
        if not isinstance(value, str) or not value:
            raise self.error(("auth", "htpasswd"), f"htpasswd must be a file name, not {_kind(value)}")
        return self.resolve(value)

    def access(self, table: dict) -> dict[str, dict[str, Level]]:
        grants = {}
        for user, patterns in table.items():
            who = f"user {user!r}"
            example = "{ \"*\" = \"read\" }"
            if not user:
                raise self.error(("access", user), f"empty user name in [access] ({ANONYMOUS!r} is anonymous clients)")
            if not isinstance(patterns, dict):
                raise self.error(("access", user), f"[access] {who} must be a table of pattern = level, "
                                                    f"like {example}, not {_kind(patterns)}")
            grants[user] = {}
            for pattern, word in patterns.items():
                where = ("access", user, pattern)
                if not pattern:
                    raise self.error(where, f"empty repository pattern for {who}")
                if not isinstance(word, str):
                    raise self.error(where, f"level of {pattern!r} for {who} must be a string "
                                            f"({_LEVELS}), not {_kind(word)}")
                try:
                    grants[user][pattern] = Level.parse(word)
                except ValueError:
                    raise self.error(where, f"unknown level {word!r} for {who} (use {_LEVELS})") from None
        return grants

    def resolve(self, value: str) -> str:
        return os.path.abspath(os.path.join(self.directory, os.path.expanduser(value)))


_TOML_TYPES = {str: "a string", int: "an integer", float: "a float", bool: "a boolean", dict: "a table",
               list: "an array"}
_WANTED = {float: "a number", bool: "true or false"}


def _kind(value) -> str:
    """What TOML calls the type of ``value``."""
    return _TOML_TYPES.get(type(value), f"a {type(value).__name__}")


# -- where a key is: best effort, for error messages -----------------------

_KEY = r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*"""
_DOTTED = re.compile(rf"{_KEY}(?:\.{_KEY})*")
_ONE_KEY = re.compile(_KEY)
_HEADER = re.compile(rf"\[\[?({_DOTTED.pattern})\]\]?\s*(?:#.*)?")


def _keys(text: str) -> tuple[str, ...] | None:
    """The key path of a dotted key like ``a."b.c".d`` (a prefix of ``text``), or None."""
    match = _DOTTED.match(text)
    if not match:
        return None
    keys, position = [], 0
    while True:
        one = _ONE_KEY.match(match.group(0), position)
        quoted, literal, bare = one.groups()
        keys.append(literal if literal is not None else bare if bare is not None else _unescape(quoted))
        position = one.end()
        if position >= len(match.group(0)) or match.group(0)[position] != ".":
            return tuple(keys)
        position += 1


def _unescape(quoted: str) -> str:
    try:
        return tomllib.loads(f'k = "{quoted}"')["k"]
    except tomllib.TOMLDecodeError:
        return quoted


class _KeyLines:
    """For each line, the key path it starts (a table header, or a key = value)."""

    def __init__(self, text: str):
        self.lines = text.split("\n")  # as tomllib counts lines
        self.paths: list[tuple[str, ...] | None] = []
        table: tuple[str, ...] = ()
        for line in self.lines:
            stripped = line.strip()
            path = None
            header = _HEADER.fullmatch(stripped)
            if header:
                table = path = _keys(header.group(1))
            elif "=" in stripped and not stripped.startswith("#"):
                keys = _keys(stripped)
                if keys is not None and stripped[_DOTTED.match(stripped).end():].startswith("="):
                    path = table + keys
            self.paths.append(path)

    def find(self, keys: tuple[str, ...]) -> int:
        """The first line that starts ``keys`` or the longest part of it (then: the inline key on it)."""
        for length in range(len(keys), 0, -1):
            for number, path in enumerate(self.paths, 1):
                if path is not None and path[:length] == keys[:length]:
                    return self._inline(number, keys[length:]) if length < len(keys) else number
        return 1

    def _inline(self, number: int, rest: tuple[str, ...]) -> int:
        """The line of ``rest`` inside an inline table starting on line ``number`` (or that line)."""
        key = rest[-1]
        spellings = [re.escape(f'"{key}"'), re.escape(f"'{key}'")]
        if re.fullmatch(r"[A-Za-z0-9_-]+", key):
            spellings.append(rf"(?<![\w\"'-]){re.escape(key)}")
        pattern = re.compile(rf"(?:{'|'.join(spellings)})\s*=")
        for offset, line in enumerate(self.lines[number - 1:]):
            if pattern.search(line.split("=", 1)[1] if offset == 0 and "=" in line else line):
                return number + offset
            if offset > 0 and self.paths[number - 1 + offset] is not None:
                break
        return number
