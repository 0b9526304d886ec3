"""What is there: ``/_catalog``, ``/_catalog/<repository>``, ``/<repository>/<map>/_tags`` and
``/<repository>/<map>/_history``; sorted, paginated (``wogit.api.pages``)."""

from __future__ import annotations

import bottle

from wogit import errors, names
from wogit.access import Level
from wogit.api import pages
from wogit.api.gate import ANY, USER
from wogit.api.responses import iso_time, json_response


def install(app, store, settings) -> None:
    @app.get("/_catalog", need=Level.READ, scope=ANY)
    def get_repositories():
        user = bottle.request.environ.get(USER)
        readable = [r for r in store.repositories() if app.gate.policy.level(user, r) >= Level.READ]
        chosen, headers = pages.by_name(readable)
        return json_response(200, {"repositories": chosen}, headers)

    @app.get("/_catalog/<repository>", need=Level.READ)
    def get_maps(repository):
        names.check_map_name(repository, "x")
        chosen, headers = pages.by_name(store.maps(repository))
        return json_response(200, {"maps": chosen}, headers)

    @app.get("/<repository>/<map>/_tags", need=Level.READ)
    def get_tags(repository, map):
        names.check_map_name(repository, map)
        tags = store.list_tags(repository, map)
        sort, last = bottle.request.query.get("sort", "name"), pages.last()
        if sort == "name":
            start = pages.after(tags, lambda t: t.tag, last) if last is not None else 0
            chosen, headers = pages.page(tags, lambda t: t.tag, start)
        elif sort == "time":
            tags.sort(key=_newest_first)
            start = pages.after(tags, _newest_first, _time_token(last)) if last is not None else 0
            chosen, headers = pages.page(tags, lambda t: f"{t.created},{t.tag}", start)
        else:
            raise errors.BAD_REQUEST(f"sort must be 'name' or 'time', not {sort!r}")
        return json_response(200, {"tags": [describe_tag(t, with_name=False) for t in chosen]}, headers)

    @app.get("/<repository>/<map>/_history", need=Level.READ)
    def get_history(repository, map):
        names.check_map_name(repository, map)
        changes = store.history(repository, map)
        last, start = pages.last(), 0
        if last is not None:
            if not names.is_commit_id(last):
                raise errors.BAD_REQUEST(f"last={last!r} is not a commit id (40 lowercase hex digits)")
            ids = [c.commit for c in changes]
            if last not in ids:  # well formed, but names nothing here: as for ?at=
                raise errors.COMMIT_UNKNOWN(f"commit {last} is not in the history of {repository}/{map}")
            start = ids.index(last) + 1
        chosen, headers = pages.page(changes, lambda c: c.commit, start)
        return json_response(200, {"history": [_describe_change(c) for c in chosen]}, headers)


def describe_tag(tag, with_name: bool = True) -> dict:
    """A tag as the API shows it (``PUT``'s answer, ``_tags`` lists)."""
    described = {"tag": tag.tag, "map_digest": tag.map_digest, "config_digest": tag.config_digest,
                 "created": iso_time(tag.created)}
    if with_name:
        described.update(repository=tag.repository, map=tag.map)
    return described


def _newest_first(tag) -> tuple[int, str]:
    return -tag.created, tag.tag


def _time_token(token: str) -> tuple[int, str]:
    created, _, tag = token.partition(",")
    if not (created.isascii() and created.isdigit() and len(created) <= 12) or not names.is_tag(tag):
        raise errors.BAD_REQUEST(f"last={token!r} is not a token of ?sort=time (<unix seconds>,<tag>)")
    return -int(created), tag


def _describe_change(change) -> dict:
    described = {"time": iso_time(change.time), "user": change.user, "action": change.action,
                 "commit": change.commit}
    if change.tag is not None:
        described["tag"] = change.tag
    if change.keys:
        described["keys"] = list(change.keys)
    if change.map_digest:
        described.update(map_digest=change.map_digest, config_digest=change.config_digest)
    return described
