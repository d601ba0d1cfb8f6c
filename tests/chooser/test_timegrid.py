"""Instants with zones, steps, and the asked grid across both DST changes."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chooser import GridTooLargeError, TimeGridError, build_grid, parse_instant, parse_step
from chooser.timegrid import NS, to_ns

LA = "America/Los_Angeles"


def utc_ns(text: str) -> int:
    return to_ns(datetime.fromisoformat(text).replace(tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "expected_utc"),
    [
        ("2018-01-30 00:00:00 PST", "2018-01-30T08:00:00"),
        ("2018-07-30 00:00 PST", "2018-07-30T08:00:00"),  # an abbreviation is a fixed offset
        ("2018-07-30 00:00 PDT", "2018-07-30T07:00:00"),
        ("2018-07-30 00:00 America/Los_Angeles", "2018-07-30T07:00:00"),
        ("2018-01-30 00:00 America/Los_Angeles", "2018-01-30T08:00:00"),
        ("2018-01-30 06:30 EST", "2018-01-30T11:30:00"),
        ("2018-01-30 06:30 cet", "2018-01-30T05:30:00"),
        ("2018-01-30T00:00:00-08:00", "2018-01-30T08:00:00"),
        ("2018-01-30T08:00:00Z", "2018-01-30T08:00:00"),
        ("2018-01-30 08:00 UTC", "2018-01-30T08:00:00"),
        ("2018-11-04 01:30 America/Los_Angeles", "2018-11-04T08:30:00"),  # first of the two
    ],
)
def test_instants_are_read_in_their_zone(text: str, expected_utc: str) -> None:
    assert to_ns(parse_instant(text)) == utc_ns(expected_utc)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2018-01-30 00:00", "needs a zone"),
        ("2018-01-30 00:00 Mars/Olympus", "unknown time zone"),
        ("2018-03-11 02:30 America/Los_Angeles", "does not exist"),
        ("yesterday PST", "not a date-time"),
        ("2018-13-30 00:00 PST", "not a date-time"),
        ("x" * 65, "1 to 64"),
        ("", "1 to 64"),
    ],
)
def test_bad_instants_say_why(text: str, reason: str) -> None:
    with pytest.raises(TimeGridError, match=reason) as caught:
        parse_instant(text, field="end")
    assert caught.value.field == "end"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15min", 900), ("30min", 1800), ("1h", 3600), ("1d", 86400), ("90s", 90), ("2h", 7200)],
)
def test_steps(text: str, seconds: int) -> None:
    assert parse_step(text).nominal_s == seconds
    assert str(parse_step(text)) == text


@pytest.mark.parametrize("text", ["", "0min", "15", "15m", "1w", "-1h", "1.5h", "h", "9" * 20])
def test_bad_steps(text: str) -> None:
    with pytest.raises(TimeGridError, match="granularity"):
        parse_step(text)


def grid_of(start: str, end: str, step: str, **kwargs: int) -> list[int]:
    grid = build_grid(parse_instant(start), parse_instant(end), parse_step(step), **kwargs)
    return list(grid.points_ns)


@pytest.mark.parametrize(
    ("day", "next_day", "half_hours"),
    [("2018-01-30", "2018-01-31", 48), ("2018-03-11", "2018-03-12", 46),
     ("2018-11-04", "2018-11-05", 50)],
)  # fmt: skip
def test_a_dst_day_has_46_or_50_half_hours(day: str, next_day: str, half_hours: int) -> None:
    points = grid_of(f"{day} 00:00 {LA}", f"{next_day} 00:00 {LA}", "30min")
    assert len(points) == half_hours
    assert all(b - a == 1800 * NS for a, b in itertools.pairwise(points))


def test_day_steps_follow_the_local_calendar() -> None:
    start, end = parse_instant(f"2018-03-10 00:00 {LA}"), parse_instant(f"2018-03-13 00:00 {LA}")
    grid = build_grid(start, end, parse_step("1d"))
    lengths = [b - a for a, b in itertools.pairwise(grid.edges_ns)]
    assert [length // (3600 * NS) for length in lengths] == [24, 23, 24]
    fall = grid_of(f"2018-11-03 00:00 {LA}", f"2018-11-05 00:00 {LA}", "1d")
    assert fall == [utc_ns("2018-11-03T07:00:00"), utc_ns("2018-11-04T07:00:00")]


def test_day_steps_with_a_fixed_offset_are_24_hours() -> None:
    points = grid_of("2018-03-10 00:00 PST", "2018-03-13 00:00 PST", "1d")
    assert [b - a for a, b in itertools.pairwise(points)] == [86400 * NS] * 2


def test_the_end_must_be_a_whole_number_of_steps() -> None:
    with pytest.raises(TimeGridError, match="whole number"):
        grid_of("2018-01-30 00:00 PST", "2018-01-30 01:10 PST", "30min")
    with pytest.raises(TimeGridError, match="after start"):
        grid_of("2018-01-30 00:00 PST", "2018-01-30 00:00 PST", "30min")


def test_grids_are_bounded() -> None:
    assert (
        len(grid_of("2018-01-30 00:00 UTC", "2018-01-30 01:00 UTC", "1s", max_points=3600)) == 3600
    )
    with pytest.raises(GridTooLargeError) as caught:
        grid_of("2018-01-01 00:00 UTC", "2019-01-01 00:00 UTC", "1s")
    assert caught.value.limit == 100_000
    assert caught.value.points > 100_000


@pytest.mark.parametrize(
    "text",
    ["9999-12-31 23:00 PST", "0001-01-01 00:00 EST", "2201-01-01T00:00:00Z", "1899-12-31 UTC"],
)
def test_years_are_bounded(text: str) -> None:
    with pytest.raises(TimeGridError, match="year must be within"):
        parse_instant(text)


@settings(max_examples=300, deadline=1000, derandomize=True)
@given(st.text(max_size=70) | st.from_regex(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}( [A-Za-z/_]+)?"))
def test_any_text_is_an_instant_or_a_time_grid_error(text: str) -> None:
    try:
        instant = parse_instant(text)
    except TimeGridError:
        return
    assert instant.tzinfo is not None


@settings(max_examples=300, deadline=1000, derandomize=True)
@given(st.text(max_size=20))
def test_any_text_is_a_step_or_a_time_grid_error(text: str) -> None:
    with contextlib.suppress(TimeGridError):
        assert parse_step(text).nominal_s > 0
