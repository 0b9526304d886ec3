"""Unit tests of wogit.names (every ref name and name rule) and wogit.metadata (the key=value form).

No server: these call the functions directly, with tables of exact values and hypothesis
properties checked against the rules as issue 2 states them (written out again here, not
imported, so a wrong rule in wogit.names fails).
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wogit import metadata, names
from wogit.errors import WogitError

HEX_A = "a" * 64
HEX_0F = "0123456789abcdef" * 4
DIGEST_A = "sha256:" + HEX_A
DIGEST_0F = "sha256:" + HEX_0F


# -- the rules of issue 2, independent of wogit.names -------------------------

def spec_is_repository(name: str) -> bool:
    return (re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*", name) is not None and len(name) <= 64
            and ".." not in name and not name.endswith(".") and not name.endswith(".lock"))


def spec_is_tag(name: str) -> bool:
    return (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name) is not None
            and ".." not in name and not name.endswith(".") and not name.endswith(".lock")
            and name != "metadata")


def git_accepts_ref(ref: str) -> bool:
    """git check-ref-format's rules (the subset reachable from these alphabets)."""
    components = ref.split("/")
    return (all(c and not c.startswith(".") and not c.endswith(".lock") for c in components)
            and ".." not in ref and not ref.endswith(".") and "@{" not in ref
            and not re.search(r"[\x00-\x20\x7f~^:?*\[\\]", ref))


# -- exact ref strings ------------------------------------------------------

TAG_TABLE = [
    (("osm", "test-area", "v1"), "refs/wo/osm/test-area/v1"),
    (("a", "b", "c"), "refs/wo/a/b/c"),
    (("my.repo_1", "map-2.x", "V1.0_rc-2"), "refs/wo/my.repo_1/map-2.x/V1.0_rc-2"),
    (("0", "9", "0"), "refs/wo/0/9/0"),
    (("r" * 64, "m" * 64, "T" * 128), "refs/wo/" + "r" * 64 + "/" + "m" * 64 + "/" + "T" * 128),
    (("osm", "berlin", "Metadata"), "refs/wo/osm/berlin/Metadata"),
    (("osm", "berlin", "metadata.v2"), "refs/wo/osm/berlin/metadata.v2"),
    (("osm", "berlin", "latest"), "refs/wo/osm/berlin/latest"),
]

BLOB_TABLE = [
    (("map", DIGEST_A), "refs/wo/_maps/sha256/" + HEX_A),
    (("config", DIGEST_A), "refs/wo/_configs/sha256/" + HEX_A),
    (("map", DIGEST_0F), "refs/wo/_maps/sha256/" + HEX_0F),
    (("config", DIGEST_0F), "refs/wo/_configs/sha256/" + HEX_0F),
]

METADATA_TABLE = [
    (("osm", "test-area"), "refs/wo/_metadata/osm/test-area"),
    (("a", "b"), "refs/wo/_metadata/a/b"),
    (("my.repo_1", "map-2.x"), "refs/wo/_metadata/my.repo_1/map-2.x"),
    (("r" * 64, "m" * 64), "refs/wo/_metadata/" + "r" * 64 + "/" + "m" * 64),
]


@pytest.mark.parametrize("args, ref", TAG_TABLE)
def test_tag_ref_exact_and_round_trip(args, ref):
    assert names.tag_ref(*args) == ref
    assert names.parse_ref(ref) == names.TagName(*args)
    parsed = names.parse_ref(ref)
    assert names.tag_ref(parsed.repository, parsed.map, parsed.tag) == ref


@pytest.mark.parametrize("args, ref", BLOB_TABLE)
def test_blob_ref_exact_and_round_trip(args, ref):
    assert names.blob_ref(*args) == ref
    assert names.parse_ref(ref) == names.BlobName(*args)
    parsed = names.parse_ref(ref)
    assert names.blob_ref(parsed.kind, parsed.digest) == ref


@pytest.mark.parametrize("args, ref", METADATA_TABLE)
def test_metadata_ref_exact_and_round_trip(args, ref):
    assert names.metadata_ref(*args) == ref
    assert names.parse_ref(ref) == names.MetadataName(*args)
    parsed = names.parse_ref(ref)
    assert names.metadata_ref(parsed.repository, parsed.map) == ref


def test_namespaces_are_exact():
    assert names.NAMESPACE == "refs/wo/"
    assert names.MAPS == "refs/wo/_maps/sha256/"
    assert names.CONFIGS == "refs/wo/_configs/sha256/"
    assert names.METADATA == "refs/wo/_metadata/"
    assert names.tags_prefix("osm", "test-area") == "refs/wo/osm/test-area/"


def test_same_bytes_as_map_and_config_are_two_refs():
    assert names.blob_ref("map", DIGEST_A) != names.blob_ref("config", DIGEST_A)


@pytest.mark.parametrize("ref", [
    "",
    "refs/heads/main",
    "refs/tags/v1",
    "refs/notes/commits",
    "refs/wo",
    "refs/wo/",
    "refs/wox/a/b/c",
    "wo/a/b/c",
    "refs/wo/a",
    "refs/wo/a/b",
    "refs/wo/a/b/c/d",
    "refs/wo/a/b/",
    "refs/wo//b/c",
    "refs/wo/A/b/c",
    "refs/wo/a/B/c",
    "refs/wo/a/b/metadata",
    "refs/wo/a/b/v1.lock",
    "refs/wo/a/b/v1.",
    "refs/wo/a/b/.x",
    "refs/wo/a/b/a..b",
    "refs/wo/a/b/-x",
    "refs/wo/a/b/" + "T" * 129,
    "refs/wo/" + "r" * 65 + "/b/c",
    "refs/wo/a.lock/b/c",
    "refs/wo/_x/b/c",
    "refs/wo/_maps/b/c",
    "refs/wo/_maps/sha256/" + HEX_A[:-1],
    "refs/wo/_maps/sha256/" + HEX_A + "0",
    "refs/wo/_maps/sha256/" + "A" * 64,
    "refs/wo/_maps/sha256/" + "g" * 64,
    "refs/wo/_maps/sha256/" + HEX_A + "/x",
    "refs/wo/_maps/sha256/",
    "refs/wo/_maps/sha1/" + "a" * 40,
    "refs/wo/_configs/sha256/" + "A" * 64,
    "refs/wo/_configs/sha256/",
    "refs/wo/_configs/" + HEX_A,
    "refs/wo/_metadata",
    "refs/wo/_metadata/",
    "refs/wo/_metadata/a",
    "refs/wo/_metadata/a/b/c",
    "refs/wo/_metadata/A/b",
    "refs/wo/_metadata/a/_b",
    "refs/wo/_metadata/a/b/",
])
def test_parse_ref_refuses_foreign_and_malformed(ref):
    assert names.parse_ref(ref) is None


@pytest.mark.parametrize("repository, map, tag", [
    ("A", "m", "t"), ("r", "M", "t"), ("_maps", "m", "t"), ("_metadata", "r", "m"),
    ("r", "m", "metadata"), ("r", "m", "v1.lock"), ("r", "m", "v1."), ("r", "m", ".x"),
    ("r", "m", "a..b"), ("r", "m", "a b"), ("r", "m", "a:b"), ("r", "m", "a~b"), ("r", "m", "a^b"),
    ("r", "m", "a\\b"), ("r", "m", "a\x00b"), ("r", "m", "a\x07b"), ("r", "m", "a@{1"),
    ("r", "m", "a/b"), ("r", "m", ""), ("r", "m", "T" * 129), ("r" * 65, "m", "t"),
    ("r", "m" * 65, "t"), ("r.lock", "m", "t"), ("r", "m.", "t"), ("r--", "m", "t"), ("", "m", "t"),
])
def test_invalid_names_raise_400_and_build_no_ref(repository, map, tag):
    with pytest.raises(WogitError) as caught:
        names.tag_ref(repository, map, tag)
    assert caught.value.status == 400
    assert caught.value.code.name == "NAME_INVALID"


@pytest.mark.parametrize("repository, map", [("A", "m"), ("r", "a..b"), ("_x", "m"), ("r", "m/x"), ("r", "")])
def test_invalid_map_names_raise_400_for_metadata_ref(repository, map):
    with pytest.raises(WogitError) as caught:
        names.metadata_ref(repository, map)
    assert caught.value.status == 400


@pytest.mark.parametrize("digest", [
    "", HEX_A, "sha256:" + HEX_A[:-1], "sha256:" + HEX_A + "0", "sha256:" + "A" * 64,
    "SHA256:" + HEX_A, "sha512:" + HEX_A, "sha256:" + HEX_A + "\n", " sha256:" + HEX_A,
    "sha256:../../../heads/main", None, 42,
])
def test_invalid_digests_raise_400(digest):
    with pytest.raises(WogitError) as caught:
        names.blob_ref("map", digest)
    assert caught.value.status == 400
    assert caught.value.code.name == "DIGEST_INVALID"


# -- properties ---------------------------------------------------------------

repositories = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,6}", fullmatch=True).filter(
    lambda s: len(s) <= 64 and not s.endswith(".lock"))
tags = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith(".") and not s.endswith(".lock") and s != "metadata")
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
kinds = st.sampled_from(["map", "config"])


@settings(max_examples=300, database=None)
@given(repositories, repositories, tags)
def test_every_valid_tag_name_round_trips(repository, map, tag):
    assert names.is_repository(repository) and names.is_repository(map) and names.is_tag(tag)
    ref = names.tag_ref(repository, map, tag)
    assert ref == f"refs/wo/{repository}/{map}/{tag}"
    assert git_accepts_ref(ref)
    assert names.parse_ref(ref) == names.TagName(repository, map, tag)


@settings(max_examples=300, database=None)
@given(repositories, repositories)
def test_every_valid_map_name_round_trips_as_metadata_ref(repository, map):
    ref = names.metadata_ref(repository, map)
    assert ref == f"refs/wo/_metadata/{repository}/{map}"
    assert git_accepts_ref(ref)
    assert names.parse_ref(ref) == names.MetadataName(repository, map)


@settings(max_examples=200, database=None)
@given(kinds, hexes)
def test_every_digest_round_trips_as_blob_ref(kind, hexdigest):
    digest = "sha256:" + hexdigest
    ref = names.blob_ref(kind, digest)
    assert ref == f"refs/wo/_{kind}s/sha256/{hexdigest}"
    assert names.parse_ref(ref) == names.BlobName(kind, digest)


NAME_ALPHABET = "abzAZ09._-/@{}~^: \\\x00\x07[]*?"


@settings(max_examples=500, database=None)
@given(st.text(alphabet=NAME_ALPHABET, max_size=70) | repositories | tags)
def test_name_rules_match_issue_2_exactly(name):
    assert names.is_repository(name) == spec_is_repository(name)
    assert names.is_tag(name) == spec_is_tag(name)
    if spec_is_tag(name):
        assert git_accepts_ref(names.tag_ref("r", "m", name))
    else:
        with pytest.raises(WogitError) as caught:
            names.tag_ref("r", "m", name)
        assert caught.value.status == 400


@settings(max_examples=500, database=None)
@given(st.lists(st.sampled_from(["refs", "wo", "_maps", "_configs", "_metadata", "sha256", "a", "B",
                                 "v1", "v1.lock", "metadata", "", "..", HEX_A, "a" * 63]),
                min_size=0, max_size=6).map("/".join))
def test_parse_ref_is_inverse_of_the_builders(ref):
    """Whatever parse_ref accepts, the builders produce again exactly (and git accepts it)."""
    parsed = names.parse_ref(ref)
    if parsed is None:
        return
    if isinstance(parsed, names.TagName):
        assert names.tag_ref(parsed.repository, parsed.map, parsed.tag) == ref
    elif isinstance(parsed, names.BlobName):
        assert names.blob_ref(parsed.kind, parsed.digest) == ref
    else:
        assert names.metadata_ref(parsed.repository, parsed.map) == ref
    assert git_accepts_ref(ref)


# -- metadata text form -------------------------------------------------------

keys = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
value_chars = st.characters(
    blacklist_categories=("Cc", "Zl", "Zp", "Cs"), blacklist_characters=" \t\r\n\f\v")
values = st.text(alphabet=value_chars, max_size=40)


@settings(max_examples=300, database=None)
@given(st.dictionaries(keys, values, max_size=12))
def test_metadata_parse_of_serialise_is_identity(items):
    text = metadata.serialise(items)
    assert isinstance(text, bytes)
    parsed = metadata.parse(text.decode("utf-8"))
    assert parsed.items == items
    assert parsed.ignored == []
    assert metadata.serialise(parsed.items) == text


@settings(max_examples=200, database=None)
@given(st.dictionaries(keys, values, max_size=12))
def test_metadata_serialise_is_sorted_lines(items):
    expected = "".join(f"{k}={items[k]}\n" for k in sorted(items)).encode("utf-8")
    assert metadata.serialise(items) == expected


def test_serialise_exact_bytes():
    assert metadata.serialise({}) == b""
    assert metadata.serialise({"b": "2", "a": "1", "A": "x=y"}) == b"A=x=y\na=1\nb=2\n"
    assert metadata.serialise({"k": "h\u00e9"}) == "k=h\u00e9\n".encode("utf-8")


def test_parse_duplicate_keys_last_wins():
    parsed = metadata.parse("dup=1 other=x dup=2 dup=3")
    assert parsed.items == {"dup": "3", "other": "x"}
    assert parsed.ignored == []


def test_parse_splits_at_first_equals():
    parsed = metadata.parse("tok=YWJj== url=http://x/?a=b empty= eq==")
    assert parsed.items == {"tok": "YWJj==", "url": "http://x/?a=b", "empty": "", "eq": "="}


def test_parse_fc014_body():
    """FC-014-metadata-parsing-edges, at the parser."""
    parsed = metadata.parse("tok=YWJj== url=http://x/?a=b dup=1 dup=2 a.b=9\r\n")
    assert parsed.items == {"tok": "YWJj==", "url": "http://x/?a=b", "dup": "2"}
    assert parsed.ignored == ["a.b"]
    assert not any("\r" in v or "\n" in v for v in parsed.items.values())


@pytest.mark.parametrize("text", [
    "a=1\r\nb=2\r\n",
    "a=1\nb=2\n",
    "a=1\tb=2",
    "\t a=1 \r\n\r\n\t\tb=2\t\r\n",
    "a=1\x0bb=2\x0c",
    "a=1\rb=2\r",
    "  a=1   b=2  ",
])
def test_parse_whitespace_separators(text):
    parsed = metadata.parse(text)
    assert parsed.items == {"a": "1", "b": "2"}
    assert parsed.ignored == []


@pytest.mark.parametrize("text", ["", " ", "\r\n", "\t\t\n"])
def test_parse_empty(text):
    parsed = metadata.parse(text)
    assert parsed.items == {}
    assert parsed.ignored == []


def test_parse_nested_keys_ignored_and_reported():
    parsed = metadata.parse("a.b=9 c=2 a[b]=1 x]=3 [y=4 a.b=10 d.e.f=5")
    assert parsed.items == {"c": "2"}
    assert parsed.ignored == ["a.b", "a[b]", "x]", "[y", "d.e.f"]


def test_parse_only_nested_keys():
    parsed = metadata.parse("a.b=1")
    assert parsed.items == {}
    assert parsed.ignored == ["a.b"]


def test_parse_key_length_limit():
    assert metadata.parse("K" * 128 + "=v").items == {"K" * 128: "v"}
    with pytest.raises(WogitError) as caught:
        metadata.parse("K" * 129 + "=v")
    assert caught.value.status == 400


@pytest.mark.parametrize("text", [
    "a=x\x01y",
    "a=\x00",
    "a=x\x7fy",
    "a=x\x1by",
    "a=x\u0085y",
    "a=x\u2028y",
    "a=x\u2029y",
    "ok=1 a=x\x08 ok2=2",
    "a.b=x\x01y",
    "a[b]=\x02",
])
def test_parse_control_characters_rejected(text):
    with pytest.raises(WogitError) as caught:
        metadata.parse(text)
    assert caught.value.status == 400
    assert caught.value.code.name == "BODY_INVALID"
    assert caught.value.msg


@pytest.mark.parametrize("text", [
    "novalue",
    "a=1 novalue",
    "=v",
    "k@y=1",
    "k/y=1",
    "k:y=1",
    "k\u00e9=1",
    "a=1 b c=3",
])
def test_parse_invalid_tokens_rejected(text):
    with pytest.raises(WogitError) as caught:
        metadata.parse(text)
    assert caught.value.status == 400
    assert caught.value.msg


def test_parse_accepts_non_control_unicode_values():
    parsed = metadata.parse("city=K\u00f6ln name=\u6771\u4eac nbsp=a\u00a0b emoji=\U0001f5fa")
    assert parsed.items == {"city": "K\u00f6ln", "name": "\u6771\u4eac", "nbsp": "a\u00a0b",
                            "emoji": "\U0001f5fa"}
    for value in parsed.items.values():
        assert all(unicodedata.category(ch) not in ("Cc", "Zl", "Zp") for ch in value)
