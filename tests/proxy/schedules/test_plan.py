"""The pure scheduling logic: grid, keys, catch-up, overlap, rate, retries (no clock read)."""

from __future__ import annotations

import pytest

from proxy.schedules.plan import (
    NS,
    Pending,
    Spec,
    advance,
    after_failure,
    due_index,
    parse_duration,
    pick_runnable,
    window,
    window_key,
)

START = 1_796_601_600 * NS  # 2026-12-07T00:00:00Z
MIN = 60 * NS


def spec(**overrides: object) -> Spec:
    values: dict[str, object] = {
        "start_ns": START,
        "every_ns": 30 * MIN,
        "window_ns": 24 * 60 * MIN,
        "delay_ns": 5 * MIN,
    }
    return Spec(**(values | overrides))  # type: ignore[arg-type]


def test_durations() -> None:
    assert parse_duration("30min") == 30 * MIN
    assert parse_duration("24h") == 24 * 60 * MIN
    assert parse_duration("5m") == 5 * MIN
    assert parse_duration("1.5h") == 90 * MIN
    assert parse_duration("250ms") == NS // 4
    for bad in ("", "5", "min", "5 parsecs", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_windows_lie_on_the_grid_from_the_start_time_not_now() -> None:
    s = spec()
    first = window(s, 0)
    assert (first.end_ns, first.start_ns, first.due_ns) == (
        START,
        START - 24 * 60 * MIN,
        START + 5 * MIN,
    )
    assert first.key == "20261207T000000Z"
    assert window(s, 3).key == "20261207T013000Z"
    # Due only once its delay has passed, whenever the clock is read.
    assert due_index(s, START + 5 * MIN - 1) == -1
    assert due_index(s, START + 5 * MIN) == 0
    assert due_index(s, START + 35 * MIN + 17) == 1
    assert window_key(START + 1) == "20261207T000000.000000001Z"


def test_an_on_time_pass_runs_the_current_window_only() -> None:
    s = spec()
    step = advance(s, 0, START + 5 * MIN)
    assert [w.index for w in step.run] == [0] and step.skipped == () and step.cursor == 1
    assert advance(s, 1, START + 34 * MIN) == type(step)((), (), 1)  # the next is not due yet


def test_backfill_after_a_gap_in_order_within_the_catch_up_limit() -> None:
    s = spec(max_catchup=2)
    # Down from window 1 to window 6: 1..5 missed, 6 current; only the newest 2 missed run.
    step = advance(s, 1, START + 6 * 30 * MIN + 5 * MIN)
    assert [w.index for w in step.run] == [4, 5, 6]
    assert [w.index for w in step.skipped] == [1, 2, 3]
    assert step.cursor == 7


def test_airflow_catchup_false_and_temporal_catchup_window() -> None:
    no_catchup = advance(spec(max_catchup=0), 0, START + 3 * 30 * MIN + 5 * MIN)
    assert [w.index for w in no_catchup.run] == [3]
    assert [w.index for w in no_catchup.skipped] == [0, 1, 2]
    # Missed windows due more than 45 minutes ago are outside the catch-up window.
    windowed = advance(spec(catchup_window_ns=45 * MIN), 0, START + 3 * 30 * MIN + 5 * MIN)
    assert [w.index for w in windowed.run] == [2, 3]
    assert [w.index for w in windowed.skipped] == [0, 1]


def test_buffer_all_runs_one_window_at_a_time_in_order() -> None:
    s = spec()
    now = START + 10 * 30 * MIN
    pending = [Pending(i, window(s, i).due_ns, window(s, i).due_ns, False) for i in (3, 2)]
    assert pick_runnable(s, pending, now, None)[0] == [2]
    running = [Pending(2, 0, 0, True), Pending(3, 0, 0, False)]
    assert pick_runnable(s, running, now, None)[0] == []
    # A window waiting for its retry holds back the later ones.
    waiting = [Pending(2, 0, now + 1, False), Pending(3, 0, 0, False)]
    assert pick_runnable(s, waiting, now, None)[0] == []


def test_allow_all_and_the_catch_up_rate() -> None:
    s = spec(overlap="allow_all", catchup_rate=1.0)
    now = START + 10 * 30 * MIN
    late = [Pending(i, window(s, i).due_ns, 0, False) for i in (1, 2, 3)]
    chosen, last = pick_runnable(s, late, now, None)
    assert chosen == [1] and last == now  # one backfilled window per second
    assert pick_runnable(s, late[1:], now + NS // 2, last)[0] == []
    assert pick_runnable(s, late[1:], now + NS, last)[0] == [2]
    on_time = [Pending(10, now, now, False), Pending(11, now, now, False)]
    assert pick_runnable(s, on_time, now, now)[0] == [10, 11]  # the rate bounds backfills only


def test_retry_with_back_off_then_failed() -> None:
    s = spec(max_attempts=3, retry_initial_s=2.0, retry_factor=3.0, retry_max_s=10.0)
    assert after_failure(s, 1, 0) == 2 * NS
    assert after_failure(s, 2, 0) == 6 * NS
    assert after_failure(s, 3, 0) is None
    capped = spec(max_attempts=9, retry_initial_s=2.0, retry_factor=3.0, retry_max_s=10.0)
    assert after_failure(capped, 4, 0) == 10 * NS


def test_bad_specs_are_refused() -> None:
    for bad in ({"every_ns": 10}, {"window_ns": 0}, {"max_attempts": 0}, {"retry_factor": 0.5}):
        with pytest.raises(ValueError):
            spec(**bad)
