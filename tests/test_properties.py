"""Properties of the name rules, the metadata text form and the ref layout, over generated inputs
(hypothesis; derandomized, no example database: the same examples on every run, in a few seconds).

- names: a name is accepted exactly when docs/api.md's grammar says so, by wogit.names, by the
  ref rules (wogit.rules) and by the OpenAPI document's patterns alike, and a rejected one is 400;
- metadata: parse -> serialise -> parse is the identity, and a PUT body is accepted exactly when
  it matches the document's pattern;
- refs: name -> ref -> name is the identity for every valid repository, map, tag and digest, and
  no valid name makes a ref outside its namespace of refs/wo/ (nor one git would refuse).
"""

from __future__ import annotations

import hashlib
import re

import pygit2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wogit import errors, metadata, names, openapi, rules

FAST = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# -- the documented grammar (docs/api.md, "Names and digests"), written out again here ------------

DOC_REPOSITORY = r"[a-z0-9]+([._-][a-z0-9]+)*"
DOC_TAG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
DOC_KEY = r"[A-Za-z0-9_-]{1,128}"


def documented_repository(name: str) -> bool:
    return (re.fullmatch(DOC_REPOSITORY, name) is not None and len(name) <= 64 and ".." not in name
            and not name.endswith((".", ".lock")))


def documented_tag(name: str) -> bool:
    return (re.fullmatch(DOC_TAG, name) is not None and name != "metadata" and ".." not in name
            and not name.endswith((".", ".lock")))


LOWER, TAG_CHARS = "abcxyz0189", "abcxyzABCXYZ0189._-"
# Built from the grammar's parts (drawing from the whole regex and filtering would be slow).
repositories = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    st.text(LOWER, min_size=1, max_size=8),
    st.lists(st.tuples(st.sampled_from("._-"), st.text(LOWER, min_size=1, max_size=8)), max_size=6),
).filter(documented_repository)
tags = st.builds(lambda first, rest: first + rest, st.sampled_from(LOWER + "ABCXYZ"),
                 st.text(TAG_CHARS, max_size=24) | st.just("x" * 127)).filter(documented_tag)
digests = st.binary(max_size=64).map(lambda data: "sha256:" + hashlib.sha256(data).hexdigest())
#: Text near the rules: their characters, the ones they refuse, and the words they single out.
NEAR = "az09AZ._-/:[]=é \t\x00\x7f"
candidates = st.one_of(
    st.text(alphabet=st.sampled_from(NEAR), max_size=70),
    st.builds(lambda a, b: a + b, repositories | tags, st.sampled_from(["", ".", "..", ".lock", "-", "/x", "A", "_"])),
    st.sampled_from(["metadata", "Metadata", "a.lock", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "_git", "_tags"]),
    st.text(max_size=20))


# -- names -------------------------------------------------------------------------------------

#: Each kind of name: the documented rule, wogit.names' test, the document's pattern and length,
#: and the checks that refuse it (a repository and a map name follow one rule).
RULES = {
    "repository": (documented_repository, names.is_repository, openapi.NAME_PATTERN, 64,
                   [lambda n: names.check_map_name(n, "map"), lambda n: names.check_map_name("osm", n)]),
    "tag": (documented_tag, names.is_tag, openapi.TAG_PATTERN, 128, [lambda n: names.check_tag_name("osm", "city", n)]),
}


@pytest.mark.parametrize("kind", RULES)
@FAST
@given(name=candidates)
def test_a_name_is_accepted_exactly_as_documented(kind, name):
    documented, accepts, pattern, longest, checks = RULES[kind]
    valid = documented(name)
    assert accepts(name) is valid
    assert (re.search(pattern, name) is not None and len(name) <= longest) is valid
    for check in checks:
        if valid:
            check(name)
        else:
            with pytest.raises(errors.WogitError) as refused:
                check(name)
            assert (refused.value.code, refused.value.status) == (errors.NAME_INVALID, 400)


@FAST
@given(candidates)
def test_a_metadata_key_is_accepted_exactly_as_documented(name):
    valid = re.fullmatch(DOC_KEY, name) is not None
    assert names.is_key(name) is valid
    assert (re.search(openapi.KEY_PATTERN, name) is not None) is valid


class Untouched:
    """A rules.View that must not be read: a ref outside the namespaces is refused before that."""

    def __getattr__(self, name):
        raise AssertionError(f"the rules read the repository ({name}) for a ref they should refuse outright")


@FAST
@given(candidates, candidates)
def test_the_ref_rules_refuse_exactly_the_refs_of_invalid_names(repository, tag):
    ref = f"refs/wo/{repository}/city/{tag}"
    valid = documented_repository(repository) and documented_tag(tag)
    assert (names.parse_ref(ref) is not None) is valid
    if not valid:
        [rejection] = rules.check([rules.Change(ref, rules.ZERO, "1" * 40)], Untouched())
        assert rejection.ref == ref and rejection.msg.startswith("outside the registry's namespaces")


# -- the metadata text form --------------------------------------------------------------------

keys = st.from_regex(DOC_KEY, fullmatch=True)
values = st.text(st.characters(exclude_categories=("Cc", "Zl", "Zp", "Cs"), exclude_characters=" "), max_size=30)


@FAST
@given(st.dictionaries(keys, values, max_size=12))
def test_metadata_serialise_then_parse_is_the_identity(items):
    text = metadata.serialise(items).decode("utf-8")
    parsed = metadata.parse(text)
    assert parsed.items == items and parsed.ignored == []
    assert text == "".join(f"{k}={items[k]}\n" for k in sorted(items))


@settings(FAST, max_examples=40)  # drawing from this pattern is slow
@given(st.from_regex(openapi.METADATA_PATTERN))
@example("a=1 a=2 b.c=3\r\nd=x=y\t")
def test_metadata_parse_serialise_parse_is_the_identity(body):
    first = metadata.parse(body)
    again = metadata.parse(metadata.serialise(first.items).decode("utf-8"))
    assert again.items == first.items and again.ignored == []
    assert metadata.serialise(again.items) == metadata.serialise(first.items)


def test_metadata_the_last_of_a_repeated_key_wins_and_nested_keys_are_ignored():
    parsed = metadata.parse("a=1 a=2 b.c=3\r\nd=x=y\t")
    assert (parsed.items, parsed.ignored) == ({"a": "2", "d": "x=y"}, ["b.c"])


@FAST
@given(st.one_of(st.text(alphabet=st.sampled_from("ab_=.[] \t\n\x0b\x1c\x85\u2028é-"), max_size=30),
                 st.text(max_size=30)))
@example("a" * 129 + "=1")
@example("a." + "b" * 1023 + "=x")
def test_a_metadata_body_is_accepted_exactly_when_it_matches_the_documented_pattern(body):
    try:
        metadata.parse(body)
        accepted = True
    except errors.WogitError as refused:
        assert (refused.code, refused.status) == (errors.BODY_INVALID, 400)
        accepted = False
    assert (re.search(openapi.METADATA_PATTERN, body) is not None) is accepted


# -- the ref layout ----------------------------------------------------------------------------

def packed_kinds(ref: str) -> set[str]:
    line = f"{'0' * 40} {ref}\n".encode()
    return {kind for kind, pattern in names.PACKED_LINES.items() if pattern.search(line)}


@FAST
@given(repositories, repositories, tags)
def test_a_tag_name_to_its_ref_and_back_is_the_identity(repository, map_name, tag):
    ref = names.tag_ref(repository, map_name, tag)
    assert ref == f"refs/wo/{repository}/{map_name}/{tag}" and pygit2.reference_is_valid_name(ref)
    assert names.parse_ref(ref) == names.TagName(repository, map_name, tag)
    assert names.kind_of(ref) == "tags" and packed_kinds(ref) == {"tags"}
    assert ref.startswith(names.tags_prefix(repository, map_name))
    assert names.parse_ref(ref + "/x") is None  # no registry ref is below a tag's


@FAST
@given(repositories, repositories)
def test_a_metadata_history_name_to_its_ref_and_back_is_the_identity(repository, map_name):
    ref = names.metadata_ref(repository, map_name)
    assert ref == f"refs/wo/_metadata/{repository}/{map_name}" and pygit2.reference_is_valid_name(ref)
    assert names.parse_ref(ref) == names.MetadataName(repository, map_name)
    assert names.kind_of(ref) == "histories" and packed_kinds(ref) == {"histories"}
    assert all(ref.startswith(p) or not p.startswith(names.METADATA) for p in names.repository_prefixes(repository))


@FAST
@given(st.sampled_from(names.KINDS), digests)
def test_a_digest_to_its_index_ref_and_back_is_the_identity(kind, digest):
    ref = names.blob_ref(kind, digest)
    prefix = names.MAPS if kind == names.MAP else names.CONFIGS
    assert ref == prefix + digest.removeprefix("sha256:") and pygit2.reference_is_valid_name(ref)
    assert names.parse_ref(ref) == names.BlobName(kind, digest)
    assert packed_kinds(ref) == {"maps" if kind == names.MAP else "configs"}


@FAST
@given(candidates, candidates, candidates)
def test_no_name_makes_a_ref_outside_refs_wo_and_invalid_ones_make_none(repository, map_name, tag):
    try:
        ref = names.tag_ref(repository, map_name, tag)
    except errors.WogitError as refused:
        assert refused.code is errors.NAME_INVALID
        assert not (documented_repository(repository) and documented_repository(map_name) and documented_tag(tag))
        return
    assert ref.startswith("refs/wo/") and not ref.startswith(("refs/wo/_maps/", "refs/wo/_configs/",
                                                               "refs/wo/_metadata/"))
    assert names.parse_ref(ref) == names.TagName(repository, map_name, tag)
    assert ref.count("/") == 4 and pygit2.reference_is_valid_name(ref)
