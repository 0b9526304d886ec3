"""The metadata text form: ``key=value`` pairs, shared by PUT bodies and archives.

A body is split at runs of ASCII whitespace (space, tab, CR, LF, FF, VT); each
token is split at its first ``=``.  Simple keys (names.KEY_RULE) are stored;
nested keys (containing ``.``, ``[`` or ``]``) are ignored and reported; any
other token, or a value with a control or line-separator character, rejects the
whole body.  A key given twice keeps its last value.  ``serialise`` writes one
``key=value`` line per key, sorted, which ``parse`` reads back unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from wogit import errors, names

_SEPARATORS = re.compile(r"[ \t\r\n\f\v]+")
_FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}


@dataclass(frozen=True)
class Parsed:
    items: dict[str, str]
    ignored: list[str]


def check_value(key: str, value: str) -> None:
    for ch in value:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            raise errors.BODY_INVALID(f"value of {key!r} contains the control or line-separator character U+{ord(ch):04X}")


def parse(text: str) -> Parsed:
    items: dict[str, str] = {}
    ignored: list[str] = []
    for token in _SEPARATORS.split(text):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            raise errors.BODY_INVALID(f"{_shorten(token)!r} is not of the form key=value")
        if names.is_key(key):
            check_value(key, value)
            items.pop(key, None)  # the last occurrence wins and takes its place
            items[key] = value
        elif names.is_nested_key(key):
            check_value(key, value)
            if key not in ignored:
                ignored.append(key)
        else:
            raise errors.BODY_INVALID(f"invalid metadata key {_shorten(key)!r}: must match {names.KEY_RULE}")
    return Parsed(items, ignored)


def serialise(items: dict[str, str]) -> bytes:
    return "".join(f"{key}={items[key]}\n" for key in sorted(items)).encode("utf-8")


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
