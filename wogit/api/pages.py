"""Sorted lists, one page at a time: ``?n=`` items after the ``?last=`` token, and a
``Link: <...>; rel="next"`` header while more remain (docs/api.md, "Lists and pagination")."""

from __future__ import annotations

import bisect
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TypeVar

import bottle

from wogit import errors

T = TypeVar("T")
DEFAULT_SIZE = 100
MAX_SIZE = 1000


def size() -> int:
    raw = bottle.request.query.get("n")
    if raw is None:
        return DEFAULT_SIZE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_SIZE:
        raise errors.BAD_REQUEST(f"n must be a whole number from 1 to {MAX_SIZE}, not {raw!r}")
    return int(raw)


def last() -> str | None:
    """The continuation token of the request (``?last=``), if any."""
    return bottle.request.query.get("last")


def after(items: Sequence[T], key: Callable[[T], object], last_key: object) -> int:
    """Where the items strictly after ``last_key`` start in ``items`` (sorted by ``key``)."""
    return bisect.bisect_right([key(item) for item in items], last_key)


def page(items: Sequence[T], token: Callable[[T], str], start: int = 0) -> tuple[list[T], dict[str, str]]:
    """``?n=`` items from ``start``, and the Link header to the next page (``token`` writes an
    item's continuation token) while more remain."""
    n = size()
    chosen = list(items[start:start + n])
    if start + n >= len(items):
        return chosen, {}
    query = {k: v for k, v in bottle.request.query.items() if k not in ("n", "last")}
    query.update(n=str(n), last=token(chosen[-1]))
    url = bottle.request.path + "?" + urllib.parse.urlencode(query)
    return chosen, {"Link": f'<{url}>; rel="next"'}


def by_name(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """A page of a sorted list of names (the token is the last name)."""
    token = last()
    return page(items, str, after(items, str, token) if token is not None else 0)
