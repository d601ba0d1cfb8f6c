"""What a schedule should do now: pure scheduling logic, no I/O, the clock passed in.

Every function here takes the time (``now_ns``, nanoseconds since the epoch) as an argument, so
the scheduler (:mod:`proxy.schedules.scheduler`) runs on an injected clock and tests never sleep.

Semantics, and where they come from
===================================

**The grid** (Airflow's data intervals, Dagster's time partitions). A schedule has a start time
``start_ns`` and an interval ``every_ns``; its windows are indexed ``n = 0, 1, 2, …``. Window
``n`` *ends* at ``t_n = start_ns + n * every_ns`` and covers the data ``[t_n - window_ns, t_n)``
(the last ``window`` of data before ``t_n``, as Latigo reads it). It is *due* at
``t_n + delay_ns``: the delay lets late data arrive, as Airflow runs an interval once it has
closed. The grid is fixed by the start time, never by "now", so a window's key
(:func:`window_key`, its end time in UTC, ``20261207T143000Z``) is the same whichever proxy
runs it and however late: the key is the partition key of Dagster's partitioned assets.

**Catch-up** (Temporal schedules' catch-up window, Airflow's ``catchup``). When the scheduler
finds several windows due at once (the proxy was down, or the schedule was just created with a
start in the past) the newest due window is the *current* one and the older ones are *missed*.
Missed windows are backfilled oldest first, with two bounds the user sets:

- ``catchup_window_ns`` (Temporal's ``catchupWindow``): a missed window due longer ago than this
  is not run; it is recorded as ``skipped``;
- ``max_catchup`` (a limit per catch-up, like a Dagster backfill's partition selection; 0 is
  Airflow's ``catchup=False``: only the current window runs): only the newest ``max_catchup``
  missed windows are run, older ones are ``skipped``.

A schedule created with a start in the past backfills the same way (Airflow's catch-up from
``start_date``). Backfilled windows start at most ``catchup_rate`` per second (a rate, as a
Dagster backfill's run queue limits concurrency), so a long outage does not flood the models.

**Overlap** (Temporal's overlap policy): ``buffer_all`` (the default) runs one window of a
schedule at a time, in window order, every due window waiting its turn — Temporal's
``BUFFER_ALL``; ``allow_all`` starts every due window at once — ``ALLOW_ALL``. (Temporal's
``SKIP`` would drop windows, which Latigo's users lost data to: it is not offered.)

**Retries** (Temporal's retry policy: initial interval, backoff coefficient, maximum interval,
maximum attempts). A window that fails is tried again after
``min(retry_initial_s * retry_factor ** (attempt - 1), retry_max_s)``; after ``max_attempts``
attempts it is recorded ``failed`` with its reason and the schedule goes on with later windows.
A failed (or skipped, or done) window can be re-run on demand: its attempts start again and its
new results *replace* the old ones (Dagster's re-materialization of a partition), since they are
stored and published under the window's key.

**Pause** (Temporal's pause): a paused schedule starts no window. Windows that fall due while it
is paused are not backfilled on resume (Temporal does not catch up paused time either); a user
re-runs one on demand if needed. Windows already pending when it was paused run after resume.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

__all__ = [
    "MINIMUM_EVERY_NS",
    "Advance",
    "Overlap",
    "Pending",
    "Spec",
    "Window",
    "advance",
    "after_failure",
    "due_index",
    "parse_duration",
    "pick_runnable",
    "retry_delay_ns",
    "window",
    "window_key",
]

Overlap = Literal["buffer_all", "allow_all"]

NS = 1_000_000_000
MINIMUM_EVERY_NS = NS
"""The shortest interval a schedule may have (1 s)."""

_UNITS = {"ms": NS // 1000, "s": NS, "sec": NS, "m": 60 * NS, "min": 60 * NS}
_UNITS |= {"h": 3600 * NS, "hr": 3600 * NS, "d": 86_400 * NS, "w": 7 * 86_400 * NS}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_duration(text: str) -> int:
    """``30min``, ``24h``, ``5m``, ``90s``, ``1.5h``, ``2d``, ``1w`` → nanoseconds.
    Raises ValueError (the callers turn it into an InvalidRequest)."""
    found = _DURATION.match(text.lower())
    if found is None or found.group(2) not in _UNITS:
        raise ValueError(
            f"not a duration: {text[:40]!r}; write a number and a unit (ms, s, min, h, d, w)"
        )
    return round(float(found.group(1)) * _UNITS[found.group(2)])


@dataclass(frozen=True, slots=True)
class Spec:
    """A schedule's timing and policies (all durations in nanoseconds)."""

    start_ns: int
    every_ns: int
    window_ns: int
    delay_ns: int = 0
    catchup_window_ns: int = 365 * 86_400 * NS  # Temporal's default catch-up window: one year
    max_catchup: int = 100
    catchup_rate: float = 10.0
    """Backfilled windows started per second (0: no limit)."""
    overlap: Overlap = "buffer_all"
    max_attempts: int = 3
    retry_initial_s: float = 1.0
    retry_factor: float = 2.0
    retry_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.every_ns < MINIMUM_EVERY_NS:
            raise ValueError(f"the interval must be at least {MINIMUM_EVERY_NS / NS:.0f} s")
        if self.window_ns <= 0 or self.delay_ns < 0 or self.catchup_window_ns < 0:
            raise ValueError("the window must be positive, the delay and catch-up window not < 0")
        if self.max_catchup < 0 or self.catchup_rate < 0 or self.max_attempts < 1:
            raise ValueError("max_catchup and catchup_rate must be >= 0, max_attempts >= 1")
        if self.retry_initial_s < 0 or self.retry_factor < 1 or self.retry_max_s < 0:
            raise ValueError("retries need initial >= 0, factor >= 1, max >= 0")


@dataclass(slots=True)  # not frozen: a frozen one costs 3x to build, a pass builds many
class Window:
    """Window ``index`` of a schedule: data ``[start_ns, end_ns)``, due at ``due_ns``."""

    index: int
    key: str
    start_ns: int
    end_ns: int
    due_ns: int


@lru_cache(maxsize=4096)  # schedules on one grid share their windows' ends
def window_key(end_ns: int) -> str:
    """A window's key: its end in UTC, to the second when whole (``20261207T143000Z``), else
    with nanoseconds (``20261207T143000.000000001Z``). Only URI-segment characters."""
    seconds, rest = divmod(end_ns, NS)
    text = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{text}Z" if rest == 0 else f"{text}.{rest:09d}Z"


def window(spec: Spec, index: int) -> Window:
    end = spec.start_ns + index * spec.every_ns
    return Window(index, window_key(end), end - spec.window_ns, end, end + spec.delay_ns)


def due_index(spec: Spec, now_ns: int) -> int:
    """The index of the newest window due at ``now_ns`` (-1 before the first is due)."""
    if now_ns < spec.start_ns + spec.delay_ns:
        return -1
    return (now_ns - spec.start_ns - spec.delay_ns) // spec.every_ns


class Advance(NamedTuple):
    """What :func:`advance` found: windows to run, windows skipped, and the new cursor."""

    run: tuple[Window, ...]
    skipped: tuple[Window, ...]
    cursor: int
    """The index of the first window not yet considered."""


def advance(spec: Spec, cursor: int, now_ns: int, *, max_skipped: int = 1000) -> Advance:
    """The windows from ``cursor`` on that are due at ``now_ns``: the current one and the
    missed ones within the catch-up limits run; older missed ones are skipped (at most
    ``max_skipped`` of them are listed: a schedule down for years is not recorded window by
    window, its cursor just moves on)."""
    newest = due_index(spec, now_ns)
    if newest < cursor:
        return Advance((), (), cursor)
    if newest == cursor:  # the common case: one window fell due since the last pass
        return Advance((window(spec, cursor),), (), cursor + 1)
    first_kept = max(cursor, newest - spec.max_catchup)
    horizon = now_ns - spec.catchup_window_ns
    run: list[Window] = []
    skipped: list[Window] = []
    for index in range(max(cursor, first_kept - max_skipped), first_kept):
        skipped.append(window(spec, index))
    for index in range(first_kept, newest + 1):
        item = window(spec, index)
        (run if index == newest or item.due_ns >= horizon else skipped).append(item)
    return Advance(tuple(run), tuple(skipped), newest + 1)


@dataclass(slots=True)  # not frozen: a frozen one costs 3x to build, a pass builds many
class Pending:
    """A window waiting to run (or running): what the overlap and rate rules look at."""

    index: int
    due_ns: int
    next_try_ns: int
    is_running: bool


def pick_runnable(
    spec: Spec, pending: Sequence[Pending], now_ns: int, last_backfill_ns: int | None
) -> tuple[list[int], int | None]:
    """Which pending windows to start now, in order, and the time the last backfilled one
    started (for the catch-up rate). A window is *backfilled* when it is started more than
    one interval after it fell due."""
    ordered = sorted(pending, key=lambda p: p.index)
    if spec.overlap == "buffer_all" and any(p.is_running for p in ordered):
        return [], last_backfill_ns
    gap_ns = 0 if spec.catchup_rate == 0 else round(NS / spec.catchup_rate)
    chosen: list[int] = []
    for item in ordered:
        if item.is_running:
            continue
        if item.next_try_ns > now_ns:
            if spec.overlap == "buffer_all":
                break  # in order: a window waiting for its retry holds back later ones
            continue
        if now_ns - item.due_ns > spec.every_ns:
            if last_backfill_ns is not None and now_ns - last_backfill_ns < gap_ns:
                break
            last_backfill_ns = now_ns
        chosen.append(item.index)
        if spec.overlap == "buffer_all":
            break
    return chosen, last_backfill_ns


def retry_delay_ns(spec: Spec, attempt: int) -> int:
    """The back-off after failed attempt number ``attempt`` (1-based)."""
    delay_s = min(spec.retry_initial_s * spec.retry_factor ** (attempt - 1), spec.retry_max_s)
    return round(delay_s * NS)


def after_failure(spec: Spec, attempts: int, now_ns: int) -> int | None:
    """When to try a window again after its ``attempts``-th failure; None: it has failed."""
    if attempts >= spec.max_attempts:
        return None
    return now_ns + retry_delay_ns(spec, attempts)
