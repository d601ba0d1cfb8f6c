"""The scheduler on an injected clock and a real registry, SQLite and PostgreSQL: nothing sleeps.

Inputs come from an in-memory series (the :class:`WindowInputs` seam) and outputs are kept in a
dict keyed by URI, as persisted messages are; the model is a plain coroutine that can be told to
fail. End to end on the bus: tests/proxy/schedules/test_schedule_service.py.

Covers proxy/schedules/scheduler.py, its seams proxy/schedules/windows.py, and the store it
writes: proxy/registry/schedules.py with its records, proxy/registry/schedule_records.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.errors import InternalError
from proxy.registry.registry import Registry
from proxy.schedules.plan import NS, Spec, due_index, window
from proxy.schedules.scheduler import (
    Outcome,
    Point,
    Scheduler,
    WindowData,
    model_input,
    new_window,
    one_at_a_time,
)

START = 1_796_601_600 * NS
MIN = 60 * NS


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Series:
    def __init__(self) -> None:
        self.points: dict[str, list[Point]] = {}
        self.missing = False
        self.passes = 0

    def new_pass(self) -> None:
        self.passes += 1

    async def read(self, uris: Sequence[str], start_ns: int, end_ns: int) -> dict[str, list[Point]]:
        if self.missing:
            raise InternalError("inputs unavailable")
        return {
            uri: [p for p in self.points.get(uri, []) if start_ns <= p[0] < end_ns] for uri in uris
        }


class Published:
    def __init__(self) -> None:
        self.by_uri: dict[str, dict[str, Any]] = {}
        self.count = 0

    async def publish(self, output_uri: str, key: str, document: dict[str, Any]) -> None:
        self.by_uri[f"{output_uri}/{key}"] = document
        self.count += 1


class Model:
    def __init__(self) -> None:
        self.failures = 0
        self.calls: list[str] = []

    async def __call__(self, model: str, data: WindowData) -> tuple[str, Any]:
        self.calls.append(data.key)
        if self.failures:
            self.failures -= 1
            raise InternalError("the model is down")
        return "1", sum(model_input("doubles", data))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry in a SQLite file, or in a fresh PostgreSQL database: the same scheduler."""
    if request.param == "postgres":
        store: str | Path = request.getfixturevalue("postgres_url")
    else:
        store = tmp_path / "registry.sqlite3"
    async with Registry.open(store) as registry:
        yield registry


def make(
    registry: Registry, clock: Clock, instance: str = "a", **kw: Any
) -> tuple[Scheduler, Series, Published, Model]:
    series, published, model = Series(), Published(), Model()
    scheduler = Scheduler(
        registry, series, published, one_at_a_time(model), clock=clock, instance=instance, **kw
    )
    return scheduler, series, published, model


async def add(registry: Registry, name: str = "s", model: str = "m", **spec: Any) -> Spec:
    values: dict[str, Any] = {"start_ns": START, "every_ns": 30 * MIN, "window_ns": 60 * MIN}
    values |= {"delay_ns": 5 * MIN, "retry_initial_s": 10.0} | spec
    made = Spec(**values)
    await registry.add_schedule(
        name,
        model=model,
        inputs=["ns/in/*"],
        output="ns/out",
        spec=values,
        owner="me",
        cursor=0,
        now_ns=START,
    )
    return made


async def states(registry: Registry, name: str = "s") -> dict[str, str]:
    return {w.window_key: w.state for w in await registry.list_windows(name)}


async def test_windows_on_the_grid_with_their_data(registry: Registry) -> None:
    clock = Clock(START)
    scheduler, series, published, _ = make(registry, clock)
    spec = await add(registry)
    series.points["ns/in/*"] = [
        (START - 61 * MIN, 100.0),
        (START - 10 * MIN, 1.0),
        (START + 10 * MIN, 2.0),
    ]
    await scheduler.tick()
    assert published.count == 0  # window 0 is due only at START + 5 min
    clock.now = START + 5 * MIN
    wait_s = await scheduler.tick()
    key0 = window(spec, 0).key
    assert published.by_uri[f"ns/out/{key0}"]["output"] == 1.0  # only the point in [-60, 0) min
    assert published.by_uri[f"ns/out/{key0}"]["points"] == 1
    assert (await registry.get_window("s", key0)).output == 1.0
    assert wait_s == pytest.approx(1.0)  # capped at tick_s; the next is due 30 min later
    clock.now = START + 35 * MIN
    await scheduler.tick()
    assert published.by_uri[f"ns/out/{window(spec, 1).key}"]["output"] == 3.0


async def test_backfill_after_a_gap_in_order_within_the_limit(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    scheduler, _, published, model = make(registry, clock)
    spec = await add(registry, max_catchup=2, catchup_rate=0)
    await scheduler.tick()
    clock.now = START + 6 * 30 * MIN + 5 * MIN  # down for windows 1..5; 6 is current
    for _ in range(5):
        await scheduler.tick()
    assert model.calls == [window(spec, i).key for i in (0, 4, 5, 6)]  # in order
    found = await states(registry)
    assert [found[window(spec, i).key] for i in range(7)] == [
        "done",
        "skipped",
        "skipped",
        "skipped",
        "done",
        "done",
        "done",
    ]
    assert published.count == 4


async def test_rerun_replaces_and_never_duplicates(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    scheduler, series, published, _ = make(registry, clock)
    spec = await add(registry)
    await scheduler.tick()
    await scheduler.tick()  # nothing new is due: nothing runs twice
    key = window(spec, 0).key
    assert published.count == 1
    series.points["ns/in/*"] = [(START - MIN, 7.0)]  # late data arrived
    await registry.rerun_window("s", key, now_ns=clock.now)
    scheduler.nudge()
    await scheduler.tick()
    assert published.count == 2 and list(published.by_uri) == [f"ns/out/{key}"]
    assert published.by_uri[f"ns/out/{key}"]["output"] == 7.0
    windows = await registry.list_windows("s")
    assert [(w.window_key, w.output) for w in windows] == [(key, 7.0)]


async def test_retry_with_back_off_then_failed_and_the_schedule_goes_on(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    scheduler, _, _, model = make(registry, clock)
    spec = await add(registry, max_attempts=2)
    model.failures = 5
    await scheduler.tick()
    first = await registry.get_window("s", window(spec, 0).key)
    assert (first.state, first.attempts, first.next_try_ns) == ("pending", 1, clock.now + 10 * NS)
    clock.now += 9 * NS
    await scheduler.tick()
    assert len(model.calls) == 1  # not before its back-off
    clock.now += NS
    await scheduler.tick()
    failed = await registry.get_window("s", window(spec, 0).key)
    assert failed.state == "failed" and failed.attempts == 2
    assert failed.reason == "internal: the model is down"
    model.failures = 0
    clock.now = START + 35 * MIN
    await scheduler.tick()
    assert (await states(registry))[window(spec, 1).key] == "done"
    await registry.rerun_window("s", window(spec, 0).key, now_ns=clock.now)  # on demand
    scheduler.nudge()
    await scheduler.tick()
    assert (await states(registry))[window(spec, 0).key] == "done"


async def test_pause_and_resume(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    scheduler, _, _, model = make(registry, clock)
    spec = await add(registry)
    await registry.set_paused("s", True, cursor=None, now_ns=clock.now)
    scheduler.nudge()
    await scheduler.tick()
    assert model.calls == []
    clock.now = START + 65 * MIN  # windows 0..2 fell due while paused
    await registry.set_paused("s", False, cursor=due_index(spec, clock.now), now_ns=clock.now)

    scheduler.nudge()
    await scheduler.tick()
    assert model.calls == [window(spec, 2).key]  # paused time is not backfilled


async def test_a_restart_mid_window_takes_the_dead_claim_over_after_its_lease(
    registry: Registry,
) -> None:
    clock = Clock(START + 5 * MIN)
    spec = await add(registry)
    key = window(spec, 0).key
    # Instance "a" claims window 0 and dies mid-window (its scheduler never finishes it).
    # Record window 0 as a pass would, without running it.
    await registry.advance_cursor("s", 0, 1, [new_window(window(spec, 0), "pending")], clock.now)
    w0 = window(spec, 0)
    await registry.claim_window("s", w0.index, instance="a", now_ns=clock.now, lease_ns=60 * NS)
    b, _, published, _ = make(registry, clock, instance="b", lease_ns=60 * NS)
    await b.tick()
    assert published.count == 0  # the lease still holds
    clock.now += 61 * NS
    await b.tick()
    assert published.count == 1 and (await registry.get_window("s", key)).state == "done"
    # The dead instance's late finish counts for nothing.
    assert not await registry.finish_window("s", 0, instance="a", state="failed", now_ns=clock.now)


async def test_two_instances_run_each_window_once(registry: Registry) -> None:
    clock = Clock(START + 3 * 30 * MIN + 5 * MIN)
    a, _, pa, _ = make(registry, clock, instance="a")
    b, _, pb, _ = make(registry, clock, instance="b")
    await add(registry, catchup_rate=0, overlap="allow_all")
    for _ in range(3):
        await a.tick()
        await b.tick()
    assert pa.count + pb.count == 4
    assert not set(pa.by_uri) & set(pb.by_uri)
    assert len({**pa.by_uri, **pb.by_uri}) == 4


async def test_missing_inputs_are_a_failed_attempt(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    scheduler, series, _, _ = make(registry, clock)
    spec = await add(registry, max_attempts=1)
    series.missing = True
    await scheduler.tick()
    failed = await registry.get_window("s", window(spec, 0).key)
    assert failed.state == "failed" and "inputs unavailable" in (failed.reason or "")


async def test_in_the_background_a_slow_model_holds_up_no_other_schedule(
    registry: Registry,
) -> None:
    clock = Clock(START + 5 * MIN)
    release = anyio.Event()
    calls: list[str] = []

    async def model(name: str, data: WindowData) -> tuple[str, Any]:
        calls.append(data.schedule)
        if name == "slow-model":
            await release.wait()
        return "1", data.schedule

    scheduler = Scheduler(
        registry, Series(), Published(), one_at_a_time(model), clock=clock, instance="a"
    )
    spec = await add(registry, "fast")
    await add(registry, "slow", model="slow-model")
    key = window(spec, 0).key
    async with anyio.create_task_group() as group:
        await scheduler.tick(background=group)
        await anyio.wait_all_tasks_blocked()  # the slow run waits; the fast one has ended
        await scheduler.tick(background=group)
        assert (await registry.get_window("fast", key)).state == "done"
        assert (await registry.get_window("slow", key)).state == "running"
        release.set()
        await anyio.wait_all_tasks_blocked()
        await scheduler.tick(background=group)
    assert (await registry.get_window("slow", key)).output == "slow"
    assert sorted(calls) == ["fast", "slow"]


def test_a_window_as_a_model_input() -> None:
    data = WindowData("s", "k", 0, 10, {"a": [(1, 1.5), (2, "x"), (3, True)], "b": [(4, 2)]})
    assert model_input("doubles", data) == [1.5, 2]  # stray values are left out
    assert model_input("integers", data) == [2]
    document = json.loads(model_input("strings", data))
    assert document["series"]["a"] == [[1, 1.5], [2, "x"], [3, True]]
    assert json.loads(model_input("bytes", data).decode()) == document


async def test_windows_of_one_model_are_one_call_and_fail_alone(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)
    calls: list[list[str]] = []

    async def batch(model: str, windows: Sequence[WindowData]) -> list[Outcome]:
        calls.append([data.schedule for data in windows])
        return [
            InternalError("the model failed on it") if data.schedule == "bad" else ("1", 1.0)
            for data in windows
        ]

    published = Published()
    scheduler = Scheduler(registry, Series(), published, batch, clock=clock, instance="a")
    spec = await add(registry, "bad", max_attempts=1)
    await add(registry, "good")
    await scheduler.tick()
    assert calls == [["bad", "good"]]  # one call for the model's windows of the pass
    key = window(spec, 0).key
    assert (await registry.get_window("good", key)).state == "done"
    failed = await registry.get_window("bad", key)
    assert failed.state == "failed" and failed.reason == "internal: the model failed on it"
    assert list(published.by_uri) == [f"ns/out/{key}"] and published.count == 1


async def test_an_output_that_cannot_be_stored_fails_its_window_unpublished(
    registry: Registry,
) -> None:
    clock = Clock(START + 5 * MIN)

    async def model(name: str, data: WindowData) -> tuple[str, Any]:
        return "1", b"raw bytes"  # a model may answer bytes; JSON cannot keep them

    published = Published()
    scheduler = Scheduler(
        registry, Series(), published, one_at_a_time(model), clock=clock, instance="a"
    )
    spec = await add(registry, max_attempts=1)
    await scheduler.tick()
    failed = await registry.get_window("s", window(spec, 0).key)
    assert failed.state == "failed" and "not storable as JSON" in (failed.reason or "")
    assert published.count == 0


async def test_a_call_that_raises_fails_each_of_its_windows(registry: Registry) -> None:
    clock = Clock(START + 5 * MIN)

    async def broken(model: str, windows: Sequence[WindowData]) -> list[Outcome]:
        return []  # a bug: fewer outcomes than windows

    scheduler = Scheduler(registry, Series(), Published(), broken, clock=clock, instance="a")
    spec = await add(registry, "a", max_attempts=1)
    await add(registry, "b", max_attempts=1)
    await scheduler.tick()
    for name in ("a", "b"):
        found = await registry.get_window(name, window(spec, 0).key)
        assert found.state == "failed" and found.reason is not None
        assert "0 outcomes for 2 windows" in found.reason


async def test_one_at_a_time_a_bug_in_one_window_fails_that_window_only(
    registry: Registry,
) -> None:
    clock = Clock(START + 5 * MIN)

    async def model(name: str, data: WindowData) -> tuple[str, Any]:
        if data.schedule == "buggy":
            raise ValueError("a bug")
        return "1", 1.0

    scheduler = Scheduler(
        registry, Series(), Published(), one_at_a_time(model), clock=clock, instance="a"
    )
    spec = await add(registry, "buggy", max_attempts=1)
    await add(registry, "fine")
    await scheduler.tick()
    key = window(spec, 0).key
    assert (await registry.get_window("fine", key)).state == "done"
    failed = await registry.get_window("buggy", key)
    assert failed.state == "failed" and failed.reason == "internal: ValueError"
