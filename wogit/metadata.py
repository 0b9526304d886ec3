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

#: Limits of one map's metadata, the same for every way in (HTTP and git pushes): at most
#: MAX_KEYS keys, and the whole metadata file (``serialise``) at most MAX_BYTES, so that it
#: always fits in one ``PUT .../metadata`` body and is cheap to read and archive.
MAX_KEYS = 1000
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Parsed:
    items: dict[str, str]
    ignored: list[str]


def check_value(key: str, value: str) -> None:
    """A value must read back as itself: no control or line-separator character, and no
    ASCII space (the text form separates pairs with whitespace)."""
    for ch in value:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            raise errors.BODY_INVALID(f"value of {key!r} contains the control or line-separator character U+{ord(ch):04X}")
        if ch == " ":
            raise errors.BODY_INVALID(f"value of {key!r} contains a space (U+0020), which separates pairs")


def check_limits(sizes: dict[str, int]) -> None:
    """METADATA_TOO_LARGE unless metadata of these keys and value sizes (bytes) is within limits."""
    if len(sizes) > MAX_KEYS:
        raise errors.METADATA_TOO_LARGE(f"a map may have at most {MAX_KEYS} metadata keys, not {len(sizes)}")
    total = sum(len(key.encode()) + size + 2 for key, size in sizes.items())
    if total > MAX_BYTES:
        raise errors.METADATA_TOO_LARGE(f"a map's metadata may be at most {MAX_BYTES} bytes in all "
                                        f"(as GET .../metadata writes it), not {total}")


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
