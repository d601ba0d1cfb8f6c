"""Instants, steps and the asked grid: the time arithmetic of a query.

Instants are parsed from text with an explicit zone and kept as integer nanoseconds since the
Unix epoch (UTC), exact and msgpack-native. Accepted forms:

- ISO 8601 with an offset or ``Z``: ``2018-01-30T00:00:00-08:00``, ``2018-01-30T08:00:00Z``;
- a local date-time (or date: midnight) and a zone: ``2018-01-30 00:00:00 PST``,
  ``2018-01-30 00:00 America/Denver``, ``2018-01-30 UTC``.
  A named IANA zone applies its rules for that date; an abbreviation (table ``ABBREVIATIONS``)
  is a fixed offset: ``PST`` is always UTC-8, also in July. A local time that a DST change skips
  (02:30 on 2018-03-11 in Los Angeles) is refused; one it repeats (01:30 on 2018-11-04) is the
  first of the two.

A step is ``<count><unit>``, unit ``s``, ``min``, ``h`` or ``d``: ``90s``, ``15min``, ``1h``,
``1d``. Second, minute and hour steps are absolute durations: the grid is a sequence of UTC
instants, so a day with a DST change has 46 or 50 half-hours. Day steps follow the calendar of
the start's zone: each point is the same local wall time on successive days (local midnight to
local midnight is one point even when that day lasts 23 or 25 hours). With a fixed offset (an
abbreviation, an ISO offset) a day is 24 hours.

A grid is ``n + 1`` edges; point ``i`` stands for the interval ``[edges[i], edges[i + 1])``.
The end must fall exactly on an edge (a whole number of steps); a grid has at most
``MAX_POINTS`` points. Years are bounded (``MIN_YEAR``-``MAX_YEAR``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "ABBREVIATIONS",
    "MAX_POINTS",
    "Grid",
    "GridTooLargeError",
    "Step",
    "TimeGridError",
    "build_grid",
    "parse_instant",
    "parse_step",
    "parse_zone",
    "to_ns",
]

MAX_POINTS = 100_000
MIN_YEAR, MAX_YEAR = 1900, 2200  # keeps every grid (≤ MAX_POINTS days) inside datetime's range
NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Common abbreviations, each a fixed offset in hours. Ambiguous ones (IST, CST in China) are not
# here: name the zone instead.
ABBREVIATIONS: dict[str, float] = {
    "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "WEST": 1, "BST": 1,
    "CET": 1, "CEST": 2, "EET": 2, "EEST": 3, "JST": 9, "AEST": 10, "AEDT": 11,
    "HST": -10, "AKST": -9, "AKDT": -8, "PST": -8, "PDT": -7, "MST": -7, "MDT": -6,
    "CST": -6, "CDT": -5, "EST": -5, "EDT": -4,
}  # fmt: skip

_LOCAL = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?))? +([A-Za-z][^\s]*)"
)
_STEP = re.compile(r"([1-9]\d{0,8})(s|min|h|d)")
_UNIT_S = {"s": 1, "min": 60, "h": 3600, "d": 86400}
_MAX_TEXT = 64


class TimeGridError(ValueError):
    """A start, end, zone or step that cannot be used; ``field`` names which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class GridTooLargeError(TimeGridError):
    """The asked range divided by the step exceeds ``MAX_POINTS``."""

    def __init__(self, points: int, limit: int) -> None:
        super().__init__("granularity", f"{points} points asked, at most {limit} allowed")
        self.points = points
        self.limit = limit


def to_ns(instant: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact: integer arithmetic)."""
    delta = instant - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def parse_zone(name: str, *, field: str = "timezone") -> tzinfo:
    """An IANA zone (``America/Los_Angeles``) or a fixed-offset abbreviation (``PST``)."""
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_TEXT:
        raise TimeGridError(field, "a zone is a name of 1 to 64 characters")
    if name.upper() in ABBREVIATIONS:
        hours = ABBREVIATIONS[name.upper()]
        return timezone(timedelta(hours=hours), name.upper())
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeGridError(field, "unknown time zone (use an IANA name or PST, UTC…)") from exc


def parse_instant(text: str, *, field: str = "start") -> datetime:
    """An aware datetime from ISO 8601 with an offset, or ``<date> <time> <zone>``."""
    if not isinstance(text, str) or not 0 < len(text) <= _MAX_TEXT:
        raise TimeGridError(field, "an instant is a string of 1 to 64 characters")
    local = _LOCAL.fullmatch(text.strip())
    if local is not None:
        naive = _check_year(_fromiso(f"{local[1]}T{local[2] or '00:00'}", field), field)
        return _localize(naive, parse_zone(local[3], field=field), field)
    parsed = _check_year(_fromiso(text.strip(), field), field)
    if parsed.tzinfo is None:
        raise TimeGridError(field, "an instant needs a zone: an offset, 'Z', 'PST' or an IANA name")
    return parsed


def _check_year(instant: datetime, field: str) -> datetime:
    if not MIN_YEAR <= instant.year <= MAX_YEAR:
        raise TimeGridError(field, f"the year must be within {MIN_YEAR}-{MAX_YEAR}")
    return instant


def _fromiso(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimeGridError(field, "not a date-time (e.g. '2018-01-30 00:00:00 PST')") from exc


def _localize(naive: datetime, zone: tzinfo, field: str) -> datetime:
    aware = naive.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise TimeGridError(field, "this local time does not exist (skipped by a DST change)")
    return aware


@dataclass(frozen=True, slots=True)
class Step:
    """A granularity: ``count`` units; ``is_days`` steps follow the local calendar."""

    count: int
    unit: str

    @property
    def is_days(self) -> bool:
        return self.unit == "d"

    @property
    def nominal_s(self) -> int:
        """The step in seconds (a day counts 86400 s; the real length may differ by DST)."""
        return self.count * _UNIT_S[self.unit]

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def parse_step(text: str) -> Step:
    """``15min``, ``30min``, ``1h``, ``1d``, ``90s`` → a ``Step``."""
    match = _STEP.fullmatch(text.strip()) if isinstance(text, str) and len(text) <= 16 else None
    if match is None:
        raise TimeGridError("granularity", "expected <count><unit>, unit s, min, h or d: '30min'")
    return Step(int(match[1]), match[2])


@dataclass(frozen=True, slots=True)
class Grid:
    """The asked grid: ``edges_ns`` has one more element than there are points."""

    edges_ns: tuple[int, ...]
    step: Step

    def __len__(self) -> int:
        return len(self.edges_ns) - 1

    @property
    def start_ns(self) -> int:
        return self.edges_ns[0]

    @property
    def end_ns(self) -> int:
        return self.edges_ns[-1]

    @property
    def points_ns(self) -> tuple[int, ...]:
        """Each point's instant: the start of its interval."""
        return self.edges_ns[:-1]

    def interval(self, index: int) -> tuple[int, int]:
        return self.edges_ns[index], self.edges_ns[index + 1]


def build_grid(start: datetime, end: datetime, step: Step, *, max_points: int = MAX_POINTS) -> Grid:
    """The grid from ``start`` to ``end`` (exclusive) by ``step``; see the module docstring."""
    if start.tzinfo is None or end.tzinfo is None:
        raise TimeGridError("start", "start and end must carry a zone")
    _check_year(start, "start")
    _check_year(end, "end")
    start_ns, end_ns = to_ns(start), to_ns(end)
    if end_ns <= start_ns:
        raise TimeGridError("end", "end must be after start")
    estimate = (end_ns - start_ns) // (step.nominal_s * NS)
    if estimate > max_points + 1:
        raise GridTooLargeError(estimate, max_points)
    if step.is_days:
        edges = _day_edges(start, end_ns, step)
    else:
        edges = _fixed_edges(start_ns, end_ns, step)
    if edges[-1] != end_ns:
        raise TimeGridError("end", f"end is not a whole number of {step} steps after start")
    if len(edges) - 1 > max_points:
        raise GridTooLargeError(len(edges) - 1, max_points)
    return Grid(tuple(edges), step)


def _fixed_edges(start_ns: int, end_ns: int, step: Step) -> list[int]:
    return list(range(start_ns, end_ns + 1, step.nominal_s * NS))


def _day_edges(start: datetime, end_ns: int, step: Step) -> list[int]:
    zone = start.tzinfo
    assert zone is not None
    wall = start.replace(tzinfo=None)
    edges: list[int] = []
    days = 0
    while True:
        local = wall + timedelta(days=days)
        edge = to_ns(local.replace(tzinfo=zone, fold=0))
        if edge > end_ns:
            return edges
        edges.append(edge)
        days += step.count
