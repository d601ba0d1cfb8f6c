"""Where on a grid a model's declared coverage holds: metadata → one boolean per grid point.

A grid point is covered when its whole interval ``[edges[i], edges[i + 1])`` is covered. Ranges
are merged into disjoint UTC intervals; rules are evaluated day by day in local time, inside the
ranges only: each local day, the hours some rule matches become UTC intervals from the wall clock
(an hour a DST change repeats counts twice, one it skips not at all). Cost: a few conversions per
local day of the asked range (at most ~110,000 days: years are bounded).
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from chooser.metadata import Coverage, RecurringRule
from chooser.timegrid import NS, Grid, to_ns

__all__ = ["covered_intervals", "covered_points"]

Interval = tuple[int, int]


def covered_points(coverage: Coverage, grid: Grid) -> list[bool]:
    """One boolean per grid point: is its whole interval inside the coverage?"""
    intervals = covered_intervals(coverage, grid.start_ns, grid.end_ns)
    starts = [start for start, _ in intervals]
    covered = []
    for index in range(len(grid)):
        low, high = grid.interval(index)
        found = bisect_right(starts, low) - 1
        covered.append(found >= 0 and intervals[found][1] >= high)
    return covered


def covered_intervals(coverage: Coverage, start_ns: int, end_ns: int) -> list[Interval]:
    """The coverage inside ``[start_ns, end_ns)`` as sorted, disjoint, non-adjacent intervals."""
    found = [(start_ns, end_ns)]
    if coverage.ranges:
        found = _intersect(found, _merge([r.bounds_ns(coverage.timezone) for r in coverage.ranges]))
    if coverage.rules:  # walked only inside the ranges
        found = _merge([part for s, e in found for part in _rule_intervals(coverage, s, e)])
    return found


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _intersect(left: list[Interval], right: list[Interval]) -> list[Interval]:
    found: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start, end = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if start < end:
            found.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return _merge(found)


def _rule_intervals(coverage: Coverage, start_ns: int, end_ns: int) -> list[Interval]:
    """Day by day in local time: the hours the rules match that day, as UTC intervals."""
    zone = ZoneInfo(coverage.timezone)
    day = _local_date(start_ns, zone)
    last = _local_date(end_ns - 1, zone)
    found: list[Interval] = []
    while day <= last:
        for first, after in _hour_runs(_hours_matched(coverage.rules, day)):
            low, high = _wall_ns(day, first, zone), _wall_ns(day, after, zone)
            if low < high:  # empty for an hour a DST change skips
                found.append((low, high))
        day += timedelta(days=1)
    return _intersect([(start_ns, end_ns)], _merge(found))


def _local_date(ns: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ns // NS, UTC).astimezone(zone).date()


def _hours_matched(rules: list[RecurringRule], day: date) -> set[int]:
    hours: set[int] = set()
    for rule in rules:
        if (not rule.days or day.weekday() in rule.days) and (
            not rule.months or day.month in rule.months
        ):
            hours.update(rule.hours or range(24))
    return hours


def _hour_runs(hours: set[int]) -> list[tuple[int, int]]:
    """Consecutive hours as ``[first, after)`` runs: {1, 2, 5} → [(1, 3), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for hour in sorted(hours):
        if runs and runs[-1][1] == hour:
            runs[-1] = (runs[-1][0], hour + 1)
        else:
            runs.append((hour, hour + 1))
    return runs


def _wall_ns(day: date, hour: int, zone: ZoneInfo) -> int:
    """The first instant the wall clock shows ``hour``:00 on ``day`` (24: the next midnight); an
    hour a DST change skips maps to the instant of the change."""
    wall = datetime.combine(day, time(0), zone) + timedelta(hours=hour)
    return to_ns(wall.replace(fold=0))
