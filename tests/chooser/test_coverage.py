"""Declared coverage as intervals: ranges merged, rules walked in local time, both intersected."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from chooser import Coverage, covered_intervals, parse_instant
from chooser.timegrid import to_ns
from tests.chooser.helpers import LA, meta

H = 3600 * 10**9


def at(text: str) -> int:
    return to_ns(parse_instant(text))


def coverage_of(**kwargs: Any) -> Coverage:
    coverage = meta(**kwargs).coverage
    assert coverage is not None
    return coverage


def test_adjacent_and_overlapping_ranges_merge() -> None:
    coverage = coverage_of(
        ranges=[("2018-01-30 00:00", "2018-01-30 06:00"), ("2018-01-30 06:00", "2018-01-30 09:00"),
                ("2018-01-30 08:00", "2018-01-30 10:00"), ("2018-01-30 12:00", "2018-01-30 13:00")]
    )  # fmt: skip
    day = at(f"2018-01-30 00:00 {LA}")
    assert covered_intervals(coverage, day, day + 24 * H) == [
        (day, day + 10 * H),
        (day + 12 * H, day + 13 * H),
    ]
    assert covered_intervals(coverage, day + 5 * H, day + 12 * H + H // 2) == [
        (day + 5 * H, day + 10 * H),
        (day + 12 * H, day + 12 * H + H // 2),
    ]


def test_rules_are_intersected_with_ranges() -> None:
    coverage = coverage_of(
        ranges=[("2018-01-30 00:00", "2018-02-01 00:00")], rules=[{"hours": [9, 10], "days": [1]}]
    )  # 2018-01-30 is a Tuesday (1); the 31st a Wednesday
    start = at(f"2018-01-29 00:00 {LA}")
    assert covered_intervals(coverage, start, start + 96 * H) == [
        (at(f"2018-01-30 09:00 {LA}"), at(f"2018-01-30 11:00 {LA}"))
    ]


def test_month_rules_on_whole_days_in_local_time() -> None:
    coverage = coverage_of(rules=[{"months": [2]}])
    assert covered_intervals(coverage, at("2018-01-31 00:00 UTC"), at("2018-03-02 00:00 UTC")) == [
        (at(f"2018-02-01 00:00 {LA}"), at(f"2018-03-01 00:00 {LA}"))
    ]


def test_hour_rules_across_the_spring_change() -> None:
    coverage = coverage_of(rules=[{"hours": [1, 3]}])
    day = at(f"2018-03-11 00:00 {LA}")
    assert covered_intervals(coverage, day, day + 4 * H) == [
        (at(f"2018-03-11 01:00 {LA}"), at(f"2018-03-11 04:00 {LA}"))  # 02:00 never happens
    ]


ZONES = ["America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
QUARTER = 900 * 10**9
rules_strategy = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "days": st.sets(st.integers(0, 6), min_size=1).map(sorted),
            "hours": st.sets(st.integers(0, 23), min_size=1).map(sorted),
            "months": st.sets(st.integers(1, 12), min_size=1).map(sorted),
        },
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=150, deadline=2000, derandomize=True)
@given(
    st.sampled_from(ZONES),
    rules_strategy,
    st.integers(0, 364 * 96),  # start: quarter-hours into 2018 (UTC)
    st.integers(1, 6 * 96),  # length in quarter-hours
)
def test_rules_match_a_quarter_hour_walk_in_local_time(
    zone: str, rules: list[dict[str, list[int]]], offset: int, length: int
) -> None:
    """The oracle: every UTC quarter-hour, is the local time matched by a rule?"""
    coverage = coverage_of(rules=rules, timezone=zone)
    start = at("2018-01-01 00:00 UTC") + offset * QUARTER
    intervals = covered_intervals(coverage, start, start + length * QUARTER)
    tz = ZoneInfo(zone)
    for step in range(length):
        instant = start + step * QUARTER
        local = datetime.fromtimestamp(instant // 10**9, UTC).astimezone(tz)
        expected = any(rule.matches(local) for rule in coverage.rules)
        found = any(low <= instant and instant + QUARTER <= high for low, high in intervals)
        assert found == expected, (local, expected)
