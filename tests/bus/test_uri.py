"""URI grammar, matching and containment (BOSSWAVE semantics, WAVE 3's containment rule)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import InvalidUri, uri
from bus.uri import MAX_SEGMENTS, MAX_URI_LENGTH, contains, literal_prefix, matches, namespace_of

KEY = "A" * 43  # a namespace key is 43 base64url characters, itself a valid segment


@pytest.mark.parametrize(
    "text",
    [
        "ns",
        "ns/a",
        f"{KEY}/a/b",
        "ns/a-b_c.d,e(f)$g",
        "ns/!meta/lastalive",
        "ns/s.svc/_/i.modelbus/slot/predict",
        "ns/" + "/".join(["a"] * (MAX_SEGMENTS - 1)),
        "ns/" + "a" * (MAX_URI_LENGTH - 3),
    ],
)
def test_valid_uris_parse_into_segments(text: str) -> None:
    assert uri.parse(text) == tuple(text.split("/"))
    assert uri.parse(text, allow_wildcards=True) == tuple(text.split("/"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("/a", "empty namespace"),
        ("ns/", "empty last segment"),
        ("ns//a", "empty middle segment"),
        ("ns/a b", "space"),
        ("ns/a\n", "newline"),
        ("ns/a\x00", "NUL"),
        ("ns/caf\u00e9", "non-ASCII letter"),
        ("ns/a#b", "MQTT wildcard character"),
        ("ns/a+b", "plus inside a segment"),
        ("ns/a*", "star inside a segment"),
        ("ns/\udcff\udcfe", "bad UTF-8 (surrogate-escaped bytes)"),
        ("ns/!", "bare bang"),
        ("ns/!!a", "double bang"),
        ("ns/a!b", "bang inside a segment"),
        ("ns/!a/!b", "two bang segments"),
        ("!ns/a", "bang namespace"),
        ("ns/+", "wildcard in a concrete URI"),
        ("ns/*", "wildcard in a concrete URI"),
        ("ns/" + "/".join(["a"] * MAX_SEGMENTS), "too many segments"),
        ("ns/" + "a" * (MAX_URI_LENGTH - 2), "too long"),
    ],
)
def test_invalid_uris_raise_invalid_uri(text: str, reason: str) -> None:
    with pytest.raises(InvalidUri):
        uri.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"ns/a", ["ns", "a"], {"ns": "a"}, ("ns",)])
def test_non_strings_raise_invalid_uri(value: object) -> None:
    with pytest.raises(InvalidUri, match="string"):
        uri.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pattern", ["ns/+", "ns/*", "ns/*/b", "ns/a/*", "ns/+/+/*", "ns/!meta/*", "ns/*/!meta/+"]
)
def test_valid_patterns(pattern: str) -> None:
    assert uri.parse(pattern, allow_wildcards=True) == tuple(pattern.split("/"))


@pytest.mark.parametrize(
    "pattern",
    ["*", "+", "*/a", "+/a", "ns/*/*", "ns/*/a/*", "ns/**", "ns/+a", "ns/a+", "ns/#", "ns/+/!a/!b"],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidUri):
        uri.parse(pattern, allow_wildcards=True)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("ns/a/b", "ns/a/b", True),
        ("ns/a/b", "ns/a/bc", False),
        ("ns/a/b", "ns/a", False),
        ("ns/a", "ns/a/b", False),
        ("ns/+", "ns/a", True),
        ("ns/+", "ns", False),
        ("ns/+", "ns/a/b", False),
        ("ns/+/c", "ns/b/c", True),
        ("ns/+/c", "ns/b/d", False),
        ("ns/*", "ns", True),
        ("ns/*", "ns/a/b/c", True),
        ("ns/a/*", "ns/a", True),
        ("ns/a/*", "ns/ab", False),
        ("ns/a/*/b", "ns/a/b", True),
        ("ns/a/*/b", "ns/a/x/b", True),
        ("ns/a/*/b", "ns/a/x/y/b", True),
        ("ns/a/*/b", "ns/a/b/c", False),
        ("ns/a/*/b", "ns/a/bb", False),
        ("ns/*/a/b", "ns/a/b/a/b", True),
        ("ns/*/a/+", "ns/x/a/a/a", True),
        ("ns/*/+", "ns", False),
        ("ns/*/+", "ns/a", True),
        ("ns/+/*", "ns", False),
        ("ns/+/*", "ns/a/b", True),
        ("ns/+", "ns/!meta", True),
        ("ns/*/!meta/lastalive", "ns/s/!meta/lastalive", True),
        ("ns/*/!meta/lastalive", "ns/!meta/lastalive", True),
        ("ns/*/!meta/lastalive", "ns/s/!meta/state", False),
        ("other/*", "ns/a", False),
        ("ns", "ns", True),
    ],
)
def test_matches_table(pattern: str, text: str, expected: bool) -> None:
    assert matches(pattern, text) is expected


def test_matches_refuses_a_pattern_as_the_uri() -> None:
    with pytest.raises(InvalidUri):
        matches("ns/*", "ns/+")


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("ns/a/b", "ns/a/b", True),
        ("ns/a/b", "ns/a/bc", False),
        ("ns/a/+", "ns/a/b", True),
        ("ns/a/b", "ns/a/+", False),
        ("ns/*", "ns/*", True),
        ("ns/*", "ns/a/+", True),
        ("ns/*", "ns/+/*", True),
        ("ns/a/*", "ns/*", False),
        ("ns/+", "ns/*", False),
        ("ns/+/*", "ns/*", False),  # ns/* matches ns itself
        ("ns/+/+", "ns/*", False),
        ("ns/*/b", "ns/a/*/b", True),
        ("ns/*/b", "ns/a/b", True),
        ("ns/a/*/b", "ns/*/b", False),
        ("ns/*/x", "ns/+/*/x", True),
        ("ns/+/+/*", "ns/*/b", False),  # ns/b has one segment after ns
        # Deliberately conservative (PROTOCOL.md 4.4): an outer '+' never covers an inner '*',
        # even where every URI of inner would fit; all verifiers must agree on this verdict.
        ("ns/+/*", "ns/*/b", False),
        ("ns/+/*", "ns/*/+", False),
        ("ns/+/+/*", "ns/a/*/b", False),
        ("ns/a/*", "ns/*/a", False),
        ("ns/*", "other/*", False),
        ("ns/*/!meta/+", "ns/s/!meta/lastalive", True),
    ],
)
def test_contains_table(outer: str, inner: str, expected: bool) -> None:
    assert contains(outer, inner) is expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("ns/a/b", "ns/a/b"), ("ns/a/+/c", "ns/a"), ("ns/*", "ns"), ("ns/a/*/b", "ns/a")],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


def test_namespace_of() -> None:
    assert namespace_of(f"{KEY}/a/+") == KEY
    assert namespace_of("ns") == "ns"


# -- properties over small alphabets -------------------------------------------------------------

LITERALS = ["a", "b", "!m"]
FRESH = "z"  # a segment no generated pattern mentions


def _valid(segments: list[str], *, allow_wildcards: bool) -> bool:
    try:
        uri.parse("/".join(["ns", *segments]), allow_wildcards=allow_wildcards)
    except InvalidUri:
        return False
    return True


segments = st.one_of(st.just("+"), st.just("*"), st.sampled_from(LITERALS))
patterns = (
    st.lists(segments, max_size=4)
    .filter(lambda s: _valid(s, allow_wildcards=True))
    .map(lambda s: "/".join(["ns", *s]))
)
concrete = (
    st.lists(st.sampled_from([*LITERALS, FRESH]), max_size=6)
    .filter(lambda s: _valid(s, allow_wildcards=False))
    .map(lambda s: "/".join(["ns", *s]))
)


def reference_match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """The definition, written as plainly as possible (exponential, for tiny inputs)."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(reference_match(rest, segments[k:]) for k in range(len(segments) + 1))
    return bool(segments) and head in ("+", segments[0]) and reference_match(rest, segments[1:])


def instances(pattern: str, *, star_max: int) -> list[str]:
    """Concrete URIs the pattern matches, with wildcards filled from a small alphabet."""
    choices: list[list[tuple[str, ...]]] = []
    for segment in pattern.split("/"):
        if segment == "+":
            choices.append([("a",), ("b",), (FRESH,), ("!m",)])
        elif segment == "*":
            fills = [(FRESH,) * k for k in range(star_max + 1)]
            fills += [("a",) * k for k in range(1, star_max + 1)]
            fills += [("b",), ("!m",), ("b", "a"), ("a", "b")]
            choices.append(fills)
        else:
            choices.append([(segment,)])
    found = []
    for combo in itertools.product(*choices):
        segments = [s for part in combo for s in part]
        if sum(s.startswith("!") for s in segments) <= 1:
            found.append("/".join(segments))
    return found


@given(patterns, concrete)
def test_matches_agrees_with_the_definition(pattern: str, text: str) -> None:
    expected = reference_match(tuple(pattern.split("/")), tuple(text.split("/")))
    assert matches(pattern, text) is expected


@given(concrete)
def test_a_uri_is_a_pattern_matching_itself(text: str) -> None:
    assert matches(text, text)
    assert contains(text, text)


@given(patterns)
def test_contains_is_reflexive(pattern: str) -> None:
    assert contains(pattern, pattern)


@given(patterns, patterns, concrete)
def test_contained_patterns_match_a_subset(outer: str, inner: str, text: str) -> None:
    if contains(outer, inner) and matches(inner, text):
        assert matches(outer, text)


def is_documented_conservative_case(outer: str, inner: str) -> bool:
    """The one way contains() says no although no URI escapes (PROTOCOL.md 4.4): inner has a
    '*', and outer's '*' cannot absorb it because outer has fixed segments ('+') on that side."""
    outer_segments, inner_segments = outer.split("/"), inner.split("/")
    if "*" not in inner_segments or "*" not in outer_segments:
        return False
    outer_star, inner_star = outer_segments.index("*"), inner_segments.index("*")
    outer_tail = len(outer_segments) - outer_star
    inner_tail = len(inner_segments) - inner_star
    return outer_star > inner_star or outer_tail > inner_tail


@given(patterns, patterns)
@settings(max_examples=300)
def test_not_contained_means_a_counterexample_exists(outer: str, inner: str) -> None:
    """When contains() says no, some URI matched by inner escapes outer — except in the
    documented conservative case; when it says yes, no sampled instance of inner escapes."""
    star_max = len(outer.split("/")) + 1
    escaping = [u for u in instances(inner, star_max=star_max) if not matches(outer, u)]
    if contains(outer, inner):
        assert escaping == []
    elif not escaping:
        assert is_documented_conservative_case(outer, inner), (outer, inner)


def test_the_conservative_case_is_reachable_by_the_generator() -> None:
    # The property above would be vacuous for it otherwise.
    assert is_documented_conservative_case("ns/+/*", "ns/*/b")
    assert not contains("ns/+/*", "ns/*/b")
    assert all(matches("ns/+/*", u) for u in instances("ns/*/b", star_max=4))


# Narrowings of a '*' that keep the star where it is, so that the conservative rule still
# recognises them (replacing '*' by '*/+' would be contained, but is not recognised).
_STAR_NARROWINGS = [["*"], [], ["+", "*"], ["a", "*"], ["a"], ["+"], ["a", "b"], ["+", "+"]]


@st.composite
def narrowed(draw: st.DrawFn, pattern: str) -> str:
    """A pattern matching a subset of ``pattern``'s URIs: wildcards rewritten narrower."""
    result: list[str] = []
    for segment in pattern.split("/"):
        if segment == "+":
            result.append(draw(st.sampled_from(["+", "a", "b"])))
        elif segment == "*":
            result.extend(draw(st.sampled_from(_STAR_NARROWINGS)))
        else:
            result.append(segment)
    return "/".join(result)


@given(st.data(), patterns)
def test_a_narrowed_pattern_is_contained(data: st.DataObject, pattern: str) -> None:
    inner = data.draw(narrowed(pattern))
    deeper = data.draw(narrowed(inner))
    assert contains(pattern, inner)
    assert contains(inner, deeper)
    assert contains(pattern, deeper)


@given(st.text(max_size=30))
def test_parse_raises_only_invalid_uri(text: str) -> None:
    for allow_wildcards in (False, True):
        try:
            segments = uri.parse(text, allow_wildcards=allow_wildcards)
        except InvalidUri:
            continue
        assert "/".join(segments) == text


@given(st.binary(max_size=20))
def test_bytes_decoded_with_surrogates_never_parse_unless_ascii(raw: bytes) -> None:
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        uri.parse("ns/" + text)
    except InvalidUri:
        return
    assert text.isascii()


_URI_ALPHABET = st.sampled_from([*"ab-_.,()$/!+*", "/!", "é", "\n", ""])


@given(st.lists(_URI_ALPHABET, max_size=12).map("".join))
def test_the_one_match_check_agrees_with_the_segment_by_segment_one(text: str) -> None:
    """The fast check of a concrete URI accepts exactly what the full check accepts."""
    for allow_wildcards in (False, True):
        try:
            expected: tuple[str, ...] | None = uri._parse_segments(text, allow_wildcards)
        except InvalidUri:
            expected = None
        try:
            got: tuple[str, ...] | None = uri._parse.__wrapped__(text, allow_wildcards)
        except InvalidUri:
            got = None
        assert got == expected


def test_the_limits_hold_on_the_fast_path() -> None:
    with pytest.raises(InvalidUri):
        uri._parse.__wrapped__("ns/" + "/".join(["a"] * MAX_SEGMENTS), False)
    with pytest.raises(InvalidUri):
        uri._parse.__wrapped__("ns/" + "a" * (MAX_URI_LENGTH - 2), False)
    with pytest.raises(InvalidUri):
        uri._parse.__wrapped__("ns/!a/!b", False)
