"""Where on a grid a model's declared coverage holds: metadata → one boolean per grid point.

A grid point is covered when its whole interval ``[edges[i], edges[i + 1])`` is covered. Ranges are
merged into disjoint UTC intervals; rules are walked in local time, hour by hour (or day by day when
no rule restricts hours), from the grid's start to its end. Zone offsets change on those boundaries
(true for every zone in use today), so the rules' verdict is constant between two steps of the walk.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from chooser.metadata import Coverage
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
    zone = ZoneInfo(coverage.timezone)
    hourly = any(rule.hours for rule in coverage.rules)
    found: list[Interval] = []
    now = start_ns
    while now < end_ns:
        local = datetime.fromtimestamp(now // NS, UTC).astimezone(zone)
        after = max(min(_next_boundary(now, local, hourly), end_ns), now + NS)
        if any(rule.matches(local) for rule in coverage.rules):
            found.append((now, min(after, end_ns)))
        now = after
    return _merge(found)


def _next_boundary(now: int, local: datetime, hourly: bool) -> int:
    """The next local hour (or midnight) boundary after ``now`` (``local`` in the zone)."""
    if hourly:
        return (now // NS + 3600 - local.minute * 60 - local.second) * NS
    midnight = (local.replace(tzinfo=None) + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    return to_ns(midnight.replace(tzinfo=local.tzinfo))
