"""Who may do what where: permission levels and the policy that grants them.

Levels include the ones before them: ``read`` (GET/HEAD) < ``write`` (uploads, tags,
metadata) < ``delete`` (deleting tags) < ``admin`` (everything, git pushes included).

A ``Policy`` is one of three shapes:

- ``Policy.open()``: no authentication; everyone, anonymous clients included, is admin.
- ``Policy.authenticated()``: a user file but no ``[access]`` table; every
  authenticated user is admin, anonymous clients get nothing.
- ``Policy(grants)``: per user, and per ``"*"`` for anonymous clients, repository
  name patterns (shell-style globs, case-sensitive) and the level each grants.
  What anonymous clients are granted every user is granted too; where several
  patterns match, the highest level wins; anyone not granted gets nothing.

Pure and immutable: no I/O, safe to share between threads.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Mapping

#: The user name under which ``[access]`` grants to anonymous clients.
ANONYMOUS = "*"


class Level(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    DELETE = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: str) -> Level:
        """``read``, ``write``, ``delete`` or ``admin`` (exactly, lowercase); ValueError otherwise."""
        if isinstance(text, str) and text in _WORDS:
            return _WORDS[text]
        raise ValueError(f"unknown level {text!r} (use {', '.join(_WORDS)})")

    @property
    def word(self) -> str:
        """The level as the config file spells it (``none`` for NONE)."""
        return self.name.lower()


_WORDS = {level.word: level for level in Level if level is not Level.NONE}

_OPEN, _AUTHENTICATED, _GRANTS = "open", "authenticated", "grants"


class Policy:
    """Which level each user (None: an anonymous client) has on each repository."""

    __slots__ = ("_shape", "_grants", "requires_auth")

    def __init__(self, grants: Mapping[str, Mapping[str, Level]], *, _shape: str = _GRANTS):
        # user -> ((pattern, matcher, level), ...), copied: later changes to ``grants`` change nothing
        compiled = {}
        for user, patterns in grants.items():
            if not isinstance(user, str) or not isinstance(patterns, Mapping):
                raise TypeError(f"grants map user names to {{pattern: Level}}, not {user!r}: {patterns!r}")
            compiled[user] = tuple(
                (pattern, re.compile(fnmatch.translate(pattern)).match, Level(level))
                for pattern, level in patterns.items())
        object.__setattr__(self, "_shape", _shape)
        object.__setattr__(self, "_grants", compiled)
        object.__setattr__(self, "requires_auth", _shape != _OPEN)

    @classmethod
    def open(cls) -> Policy:
        return cls({}, _shape=_OPEN)

    @classmethod
    def authenticated(cls) -> Policy:
        return cls({}, _shape=_AUTHENTICATED)

    def __setattr__(self, name, value):
        raise AttributeError("a Policy is immutable")

    def __delattr__(self, name):
        raise AttributeError("a Policy is immutable")

    def _patterns(self, user: str | None):
        yield from self._grants.get(ANONYMOUS, ())
        if user is not None and user != ANONYMOUS:
            yield from self._grants.get(user, ())

    def level(self, user: str | None, repository: str | None) -> Level:
        """The user's level on ``repository``; on None, the highest level on any repository."""
        if self._shape != _GRANTS:
            return Level.ADMIN if self._shape == _OPEN or user is not None else Level.NONE
        return max((level for pattern, match, level in self._patterns(user)
                    if repository is None or match(repository)), default=Level.NONE)

    def level_everywhere(self, user: str | None) -> Level:
        """The level the user has on every possible repository (for registry-wide actions)."""
        if self._shape != _GRANTS:
            return self.level(user, None)
        return max((level for pattern, match, level in self._patterns(user)
                    if pattern and pattern.strip("*") == ""), default=Level.NONE)

    def describe(self) -> dict:
        """For ``GET /v1``: whether logins are needed and what anonymous clients may do (no user names)."""
        if self._shape == _OPEN:
            anonymous = {"*": Level.ADMIN.word}
        else:
            anonymous = {pattern: level.word for pattern, match, level in self._grants.get(ANONYMOUS, ())}
        return {"authentication": "required" if self.requires_auth else "open", "anonymous": anonymous}

    def _key(self):
        return self._shape, {user: tuple((p, l) for p, m, l in grants) for user, grants in self._grants.items()}

    def __eq__(self, other):
        return self._key() == other._key() if isinstance(other, Policy) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        if self._shape != _GRANTS:
            return f"Policy.{self._shape}()"
        grants = {user: {p: l.word for p, m, l in grants} for user, grants in self._grants.items()}
        return f"Policy({grants!r})"
