"""Every name rule and every ref name of the registry: nothing else writes ``refs/wo``.

The whole registry state is refs under ``refs/wo/`` (see docs/layout.md)::

    refs/wo/<repository>/<map>/<tag_id>     commit, tree {map, config}: a tag
    refs/wo/_maps/sha256/<hex>              tree {map}: an uploaded map, by digest
    refs/wo/_configs/sha256/<hex>           tree {config}: an uploaded config, by digest
    refs/wo/_metadata/<repository>/<map>    commit chain, tree {<key>: value}

Repository names cannot start with ``_``, so the ``_``-prefixed namespaces never
meet a repository; tag refs are always exactly three levels below ``refs/wo``
and nothing else is, so no ref is ever a path prefix of another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wogit import errors

NAMESPACE = "refs/wo/"
MAPS = NAMESPACE + "_maps/sha256/"
CONFIGS = NAMESPACE + "_configs/sha256/"
METADATA = NAMESPACE + "_metadata/"
#: A git ref pattern (for-each-ref) matching every tag ref and nothing else of the registry.
TAGS_PATTERN = NAMESPACE + "[a-z0-9]*/*/*"

REPOSITORY_RULE = r"[a-z0-9]+([._-][a-z0-9]+)*, at most 64 characters"
TAG_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}, not 'metadata', no '..', not ending in '.' or '.lock'"
KEY_RULE = r"[A-Za-z0-9_-]{1,128}"

_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NESTED_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]*[.\[\]][A-Za-z0-9_.\[\]-]*")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")

#: Words that are never a tag_id because a route needs them.
RESERVED_TAGS = frozenset({"metadata"})

#: Path segments the registry's own routes use where a tag route's would be
#: (``/_git/info/refs``, ``/<repository>/<map>/_tags``, ``/blobs/<digest>/_tags``...).
ROUTE_WORDS = {"repository": ("_git", "_catalog"), "tag": ("metadata", "_tags", "_history"), "digest": ("upload",)}
#: The tag route's segments (Bottle ``re`` filters): anything but those words, so a wrong method
#: on one of those paths is a 405 with Allow, not a tag; other bad names reach the route (400).
ROUTE_REPOSITORY = "(?!(?:" + "|".join(ROUTE_WORDS["repository"]) + ")(?:/|$))[^/]+"
ROUTE_TAG = "(?!(?:" + "|".join(ROUTE_WORDS["tag"]) + ")(?:/|$))[^/]+"
#: ``/blobs/<digest>``, ``/configs/<digest>``: not ``upload``, whose only method is PUT (Allow: PUT).
ROUTE_DIGEST = "(?!(?:" + "|".join(ROUTE_WORDS["digest"]) + ")$)[^/]+"

#: The two kinds of uploaded content; each has its own digest index.
MAP = "map"
CONFIG = "config"
KINDS = (MAP, CONFIG)


def _git_safe(name: str) -> bool:
    return ".." not in name and not name.endswith(".") and not name.endswith(".lock")


def is_repository(name: str) -> bool:
    """A repository or map name (both follow one rule)."""
    return len(name) <= 64 and _REPOSITORY.fullmatch(name) is not None and _git_safe(name)


def is_tag(name: str) -> bool:
    return _TAG.fullmatch(name) is not None and _git_safe(name) and name not in RESERVED_TAGS


def is_key(name: str) -> bool:
    """A simple metadata key: the only kind that is stored."""
    return _KEY.fullmatch(name) is not None


def is_nested_key(name: str) -> bool:
    """A nested metadata key (``a.b``, ``a[b]``): accepted in a PUT, never stored."""
    return len(name) <= 1024 and _NESTED_KEY.fullmatch(name) is not None


def check_map_name(repository: str, map: str) -> None:
    for what, name in (("repository", repository), ("map", map)):
        if not is_repository(name):
            raise errors.NAME_INVALID(f"invalid {what} name {name!r}: must match {REPOSITORY_RULE}")


def check_tag_name(repository: str, map: str, tag: str) -> None:
    check_map_name(repository, map)
    if not is_tag(tag):
        raise errors.NAME_INVALID(f"invalid tag {tag!r}: must match {TAG_RULE}")


def digest_hex(digest: str, what: str = "digest", code: errors.ErrorCode = errors.DIGEST_INVALID) -> str:
    """The 64 hex digits of ``sha256:<hex>``; anything else raises ``code``."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise code(f"invalid {what} {digest!r}: must be sha256: followed by 64 lowercase hex digits")
    return match.group(1)


def is_digest(text: str) -> bool:
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def digest(hexdigest: str) -> str:
    return "sha256:" + hexdigest


# -- ref names -------------------------------------------------------------

def tag_ref(repository: str, map: str, tag: str) -> str:
    check_tag_name(repository, map, tag)
    return f"{NAMESPACE}{repository}/{map}/{tag}"


def tags_prefix(repository: str, map: str) -> str:
    """The ref prefix under which all tags of one map live (ends in '/')."""
    check_map_name(repository, map)
    return f"{NAMESPACE}{repository}/{map}/"


def blob_ref(kind: str, digest: str) -> str:
    """The index ref of an uploaded map or config (at a tree holding its blob); raises DIGEST_INVALID."""
    hexdigest = digest_hex(digest)
    return (MAPS if kind == MAP else CONFIGS) + hexdigest


def metadata_ref(repository: str, map: str) -> str:
    check_map_name(repository, map)
    return f"{METADATA}{repository}/{map}"


def repository_prefixes(repository: str) -> tuple[str, str]:
    """The ref prefixes under which one repository's tags and metadata histories live."""
    check_map_name(repository, "x")
    return f"{NAMESPACE}{repository}/", f"{METADATA}{repository}/"


def is_commit_id(text: str) -> bool:
    """A full git commit id (40 lowercase hex digits)."""
    return isinstance(text, str) and _COMMIT.fullmatch(text) is not None


# -- parsing refs back (for hooks, audits and the round-trip test) ---------

@dataclass(frozen=True)
class TagName:
    repository: str
    map: str
    tag: str


@dataclass(frozen=True)
class BlobName:
    kind: str
    digest: str


@dataclass(frozen=True)
class MetadataName:
    repository: str
    map: str


def parse_ref(ref: str) -> TagName | BlobName | MetadataName | None:
    """What a ref under ``refs/wo/`` names, or None if it is not a valid registry ref."""
    if not ref.startswith(NAMESPACE):
        return None
    for prefix, kind in ((MAPS, MAP), (CONFIGS, CONFIG)):
        if ref.startswith(prefix):
            rest = ref[len(prefix):]
            return BlobName(kind, digest(rest)) if _HEX.fullmatch(rest) else None
    parts = ref[len(NAMESPACE):].split("/")
    if ref.startswith(METADATA):
        parts = parts[1:]
        if len(parts) == 2 and all(is_repository(p) for p in parts):
            return MetadataName(*parts)
        return None
    if len(parts) == 3 and is_repository(parts[0]) and is_repository(parts[1]) and is_tag(parts[2]):
        return TagName(*parts)
    return None


# parse_ref's rules once more, as patterns over the lines "<oid> <ref>" of a packed-refs file
# (re.M): counting a million refs takes one regex scan, not a million calls.
_PART = r"(?![a-z0-9._-]{65})(?![a-z0-9._-]*\.lock(?:/|$))" + _REPOSITORY.pattern  # is_repository
_TAG_PART = (r"(?!(?:" + "|".join(map(re.escape, sorted(RESERVED_TAGS))) + r")$)"
             r"(?![A-Za-z0-9._-]*(?:\.\.|\.$|\.lock$))" + _TAG.pattern)  # is_tag


def _lines(ref_pattern: str) -> re.Pattern[bytes]:
    return re.compile(rb"^[0-9a-f]{40} " + ref_pattern.encode() + rb"$", re.M)


#: The packed-refs lines naming each kind of registry ref, exactly those ``kind_of`` names so.
PACKED_LINES = {
    "tags": _lines(re.escape(NAMESPACE) + _PART + "/" + _PART + "/" + _TAG_PART),
    "maps": _lines(re.escape(MAPS) + _HEX.pattern),
    "configs": _lines(re.escape(CONFIGS) + _HEX.pattern),
    "histories": _lines(re.escape(METADATA) + _PART + "/" + _PART),
}


def kind_of(ref: str) -> str | None:
    """What a ref is, counted: "tags", "maps", "configs", "histories", or None (not a registry ref)."""
    name = parse_ref(ref)
    if isinstance(name, BlobName):
        return "maps" if name.kind == MAP else "configs"
    return {TagName: "tags", MetadataName: "histories"}.get(type(name))
