"""URIs and URI patterns, with BOSSWAVE semantics.

A URI is ``<namespace>/<segment>/...``. Segments use ``[A-Za-z0-9-_.,()$]``; one segment at most
may start with ``!`` (``!meta``). In patterns (subscribe, query, grants) ``+`` is exactly one
segment and ``*`` is zero or more segments, at most one ``*`` per pattern, anywhere after the
namespace: ``a/*/b`` matches ``a/b`` and ``a/x/y/b``. Wildcards match ``!`` segments too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache

from bus.errors import InvalidUri

__all__ = [
    "MAX_SEGMENTS",
    "MAX_URI_LENGTH",
    "contains",
    "literal_prefix",
    "matches",
    "namespace_of",
    "parse",
    "with_namespace_key",
]

MAX_URI_LENGTH = 1024
MAX_SEGMENTS = 64

_SEGMENT = re.compile(r"!?[A-Za-z0-9\-_.,()$]+")
# A concrete URI in one match (no '!' in the namespace): the common case, checked without a
# match per segment; anything else takes the segment by segment check, which says what is wrong.
_CONCRETE = re.compile(r"[A-Za-z0-9\-_.,()$]+(?:/!?[A-Za-z0-9\-_.,()$]+)*")


def parse(uri: str, *, allow_wildcards: bool = False) -> tuple[str, ...]:
    """Split and validate a URI (or, with ``allow_wildcards``, a pattern) into segments."""
    if not isinstance(uri, str):
        raise InvalidUri(f"a URI must be a string, not {type(uri).__name__}")
    return _parse(uri, allow_wildcards)


@lru_cache(maxsize=4096)
def _parse(uri: str, allow_wildcards: bool) -> tuple[str, ...]:
    if (
        len(uri) <= MAX_URI_LENGTH
        and _CONCRETE.fullmatch(uri)
        and uri.count("/!") <= 1
        and uri.count("/") < MAX_SEGMENTS
    ):
        return tuple(uri.split("/"))
    return _parse_segments(uri, allow_wildcards)


def _parse_segments(uri: str, allow_wildcards: bool) -> tuple[str, ...]:
    """The full check, segment by segment (the one that names what is wrong)."""
    if not uri or len(uri) > MAX_URI_LENGTH:
        raise InvalidUri(f"a URI must have 1 to {MAX_URI_LENGTH} characters", uri=uri[:80])
    segments = tuple(uri.split("/"))
    if len(segments) > MAX_SEGMENTS:
        raise InvalidUri(f"a URI has at most {MAX_SEGMENTS} segments", uri=uri[:80])
    stars = bangs = 0
    for index, segment in enumerate(segments):
        if segment in ("+", "*"):
            if not allow_wildcards:
                raise InvalidUri(f"wildcard {segment!r} is only allowed in patterns", uri=uri)
            if index == 0:
                raise InvalidUri("the namespace (first segment) cannot be a wildcard", uri=uri)
            stars += segment == "*"
            continue
        if not _SEGMENT.fullmatch(segment):
            raise InvalidUri(
                f"segment {index} ({segment[:40]!r}) is empty or has characters outside "
                "[A-Za-z0-9-_.,()$] (one leading '!' allowed)",
                uri=uri,
            )
        bangs += segment.startswith("!")
    if stars > 1:
        raise InvalidUri("a pattern has at most one '*'", uri=uri)
    if bangs > 1:
        raise InvalidUri("a URI has at most one '!' segment", uri=uri)
    if segments[0].startswith("!"):
        raise InvalidUri("the namespace (first segment) cannot start with '!'", uri=uri)
    return segments


def namespace_of(uri: str) -> str:
    """The first segment of a URI or pattern."""
    return uri.split("/", 1)[0]


def with_namespace_key(uri: str, aliases: Mapping[str, str]) -> str:
    """``uri`` (or a pattern) with an alias namespace replaced by its key: the one rule for
    aliases. Any other namespace is left as it is (a key, or one nobody granted)."""
    namespace, sep, rest = uri.partition("/")
    key = aliases.get(namespace)
    return f"{key}{sep}{rest}" if key else uri


def literal_prefix(pattern: str) -> str:
    """The segments before the first wildcard, joined: a prefix every match starts with."""
    literal: list[str] = []
    for segment in parse(pattern, allow_wildcards=True):
        if segment in ("+", "*"):
            break
        literal.append(segment)
    return "/".join(literal)


def matches(pattern: str, uri: str) -> bool:
    """Whether the concrete ``uri`` is matched by ``pattern``."""
    return _glob(parse(pattern, allow_wildcards=True), parse(uri), _is_covered_by_literal_uri)


def contains(outer: str, inner: str) -> bool:
    """Whether every URI that ``inner`` matches is also matched by ``outer`` (WAVE 3's rule)."""
    return _glob(
        parse(outer, allow_wildcards=True),
        parse(inner, allow_wildcards=True),
        _is_covered_by_pattern_segment,
    )


def _is_covered_by_literal_uri(outer: str, inner: str) -> bool:
    return outer == "+" or outer == inner


def _is_covered_by_pattern_segment(outer: str, inner: str) -> bool:
    if inner == "*":
        return False
    return outer == "+" or outer == inner


def _glob(
    outer: tuple[str, ...], inner: tuple[str, ...], covers: Callable[[str, str], bool]
) -> bool:
    """Segment glob: ``*`` in ``outer`` absorbs any run of ``inner`` (including its ``*``)."""
    # Iterative matching with one-star backtracking (patterns have at most one '*').
    i = j = 0
    star_i = star_j = -1
    while j < len(inner):
        if i < len(outer) and outer[i] == "*":
            star_i, star_j = i, j
            i += 1
        elif i < len(outer) and covers(outer[i], inner[j]):
            i += 1
            j += 1
        elif star_i >= 0:
            star_j += 1
            j = star_j
            i = star_i + 1
        else:
            return False
    while i < len(outer) and outer[i] == "*":
        i += 1
    return i == len(outer)
