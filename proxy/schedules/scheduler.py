"""The scheduler: runs every schedule's due windows, durably, on an injected clock.

One :class:`Scheduler` per proxy. Each :meth:`Scheduler.tick` makes one pass over the schedules
of the registry (:mod:`proxy.registry.schedules`):

1. moves each unpaused schedule's cursor over the windows now due, recording the ones to run as
   ``pending`` and the ones outside the catch-up limits as ``skipped``
   (:func:`proxy.schedules.plan.advance`; compare-and-set, so with several proxies on one
   registry only one records them);
2. picks the pending windows the overlap policy and the catch-up rate let start
   (:func:`proxy.schedules.plan.pick_runnable`), *claims* each in the registry (exactly one
   instance wins; a claim whose lease expired — its proxy died mid-window — is taken over), and
   runs it: reads its inputs (persisted messages on the input URIs whose time falls in the
   window, verified by the bus client), calls the model once with the window's data, publishes
   the result as a signed, persisted message on ``<output URI>/<window key>`` and stores it in
   the window's row. A re-run of a window replaces both: the same row, the same URI;
3. a run that fails is retried with back-off (:func:`proxy.schedules.plan.after_failure`), then
   recorded ``failed`` with its reason; the schedule goes on with its later windows.

:meth:`Scheduler.run` ticks forever, sleeping until the next window falls due or a retry comes
(at most ``tick_s``), and wakes early when :meth:`Scheduler.nudge` is called (a schedule added,
resumed or a window re-run) or a run ends; its windows run in the background (at most
``max_parallel`` at once), so a slow model holds up no other schedule. A window's claim lasts
``lease_ns`` (120 s: longer than the service's prediction timeout), after which another
instance — or this one restarted — takes it over. Tests call :meth:`tick` with their own clock
instead: nothing here reads the time but through ``clock``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskStatus

from bus.errors import BusError
from proxy.registry.registry import Registry
from proxy.registry.schedules import (
    Finish,
    NewWindow,
    PassPlan,
    ScheduleRecord,
    WindowRecord,
    window_record,
)
from proxy.schedules.plan import NS, Pending, Spec, Window, advance, after_failure, pick_runnable

__all__ = [
    "Clock",
    "Point",
    "Predict",
    "Scheduler",
    "WindowData",
    "WindowInputs",
    "WindowOutputs",
    "model_input",
    "new_window",
    "spec_of",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], int]
Point = tuple[int, Any]
"""One data point of an input series: its time (ns) and its value."""

DEFAULT_LEASE_NS = 120 * NS
_MAX_REASON = 2_000


@dataclass(frozen=True, slots=True)
class WindowData:
    """What a window's model call gets: its key and bounds and each input's points in it."""

    schedule: str
    key: str
    start_ns: int
    end_ns: int
    series: dict[str, list[Point]]


class WindowInputs(Protocol):
    def new_pass(self) -> None:
        """A scheduler pass begins: what was read before may have changed."""
        ...

    async def read(self, uris: Sequence[str], start_ns: int, end_ns: int) -> dict[str, list[Point]]:
        """Each input URI's points with ``start_ns <= time < end_ns``, oldest first."""
        ...


class WindowOutputs(Protocol):
    async def publish(self, output_uri: str, key: str, document: dict[str, Any]) -> None:
        """Publish a window's result (persisted, so a re-run replaces it)."""
        ...


Predict = Callable[[str, WindowData], Awaitable[tuple[str, Any]]]
"""Call a schedule's model with a window: returns (the version that answered, its output)."""


def spec_of(record: ScheduleRecord) -> Spec:
    return Spec(**record.spec)


def model_input(input_type: str, data: WindowData) -> Any:
    """A window as one model input: for a numeric model (doubles, floats, integers) the values
    of every input series, in input order then time order — values that are not numbers of
    that kind are left out, so one stray message cannot fail every window —; for a strings
    model a JSON document ``{schedule, window, start_ns, end_ns, series: {uri: [[ts_ns, value],
    ...]}}`` (its UTF-8 bytes for a bytes model)."""
    if input_type in ("doubles", "floats", "integers"):
        kinds: tuple[type, ...] = (int,) if input_type == "integers" else (int, float)
        return [
            value
            for points in data.series.values()
            for _, value in points
            if isinstance(value, kinds) and not isinstance(value, bool)
        ]
    document = {
        "schedule": data.schedule,
        "window": data.key,
        "start_ns": data.start_ns,
        "end_ns": data.end_ns,
        "series": {uri: [[ts, value] for ts, value in pts] for uri, pts in data.series.items()},
    }
    if input_type == "bytes":
        return json.dumps(document).encode()
    return json.dumps(document)


class Scheduler:
    """Runs due windows; see the module docstring. ``instance`` names this proxy in claims."""

    def __init__(
        self,
        registry: Registry,
        inputs: WindowInputs,
        outputs: WindowOutputs,
        predict: Predict,
        *,
        clock: Clock,
        instance: str,
        lease_ns: int = DEFAULT_LEASE_NS,
        tick_s: float = 1.0,
        max_parallel: int = 64,
    ) -> None:
        self.registry = registry
        self.inputs = inputs
        self.outputs = outputs
        self.predict = predict
        self.clock = clock
        self.instance = instance
        self.lease_ns = lease_ns
        self.tick_s = tick_s
        self._limit = anyio.CapacityLimiter(max_parallel)
        self._last_backfill: dict[str, int | None] = {}
        self._wake = anyio.Event()
        self._next_pass: dict[str, float] = {}
        self._seen_ns = 0
        self._ends: list[Finish] = []
        self.windows_run = 0

    def nudge(self) -> None:
        """Look at every schedule again, now (a schedule changed or a window is to re-run)."""
        self._next_pass.clear()
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled. Windows run in the background here, so a slow model holds up
        no other schedule: each run's end wakes the loop, which records it in the next pass."""
        async with anyio.create_task_group() as group:
            task_status.started()
            await self._loop(group)

    async def _loop(self, group: anyio.abc.TaskGroup) -> None:
        while True:
            self._wake = anyio.Event()
            try:
                wait_s = await self.tick(background=group)
            except BusError as error:
                logger.warning("scheduler pass failed: %s", error.message)
                wait_s = self.tick_s
            except Exception:  # a bad stored row must not stop the service: log, go on
                logger.exception("scheduler pass failed")
                wait_s = self.tick_s
            with anyio.move_on_after(wait_s):
                await self._wake.wait()

    async def tick(self, *, background: anyio.abc.TaskGroup | None = None) -> float:
        """One pass; returns how long to wait before the next (seconds, at most ``tick_s``).
        The windows it starts run to their end within the call, or, with ``background``, in
        that task group (their ends are recorded by the next pass).

        A schedule is looked at only once its next window is due, a retry or a lease expiry
        has come, or after :meth:`nudge`. The registry work of a pass is three transactions
        whatever the number of schedules: one read of the open windows, one write moving the
        cursors and claiming the windows to run, one write recording how the runs ended."""
        await self._record_ends()
        next_ns = math.inf
        now = self.clock()
        self.inputs.new_pass()
        looked: list[ScheduleRecord] = []
        for record in await self.registry.list_schedules():
            planned = self._next_pass.get(record.name)
            if planned is not None and planned > now and record.updated_ns < self._seen_ns:
                next_ns = min(next_ns, planned)
            else:
                looked.append(record)
        self._seen_ns = now
        if looked:
            next_ns = min(next_ns, await self._pass(looked, now, background))
        return max(0.0, min(self.tick_s, (next_ns - self.clock()) / NS))

    async def _record_ends(self) -> None:
        ends, self._ends = self._ends, []
        if ends:
            await self.registry.finish_windows(ends, instance=self.instance)
            self.windows_run += sum(1 for end in ends if end.state == "done")

    async def _pass(
        self, records: list[ScheduleRecord], now: int, background: anyio.abc.TaskGroup | None
    ) -> float:
        opened = await self.registry.open_windows_by_schedule()
        plans: list[PassPlan] = []
        by_name: dict[str, tuple[ScheduleRecord, Spec]] = {}
        for record in records:
            if record.paused:
                self._next_pass[record.name] = math.inf
                continue
            spec = spec_of(record)
            by_name[record.name] = (record, spec)
            plans.append(self._plan(record, spec, opened.get(record.name, []), now))
        claimed = await self.registry.apply_pass(
            plans, instance=self.instance, now_ns=now, lease_ns=self.lease_ns
        )
        if background is not None:
            for window in claimed:
                background.start_soon(self._run_window, *by_name[window.schedule], window)
        else:
            async with anyio.create_task_group() as group:
                for window in claimed:
                    group.start_soon(self._run_window, *by_name[window.schedule], window)
            await self._record_ends()
        taken = {(w.schedule, w.idx) for w in claimed}
        next_ns = math.inf
        for plan in plans:
            record, spec = by_name[plan.name]
            waiting = [w for w in opened.get(plan.name, []) if (plan.name, w.idx) not in taken]
            waiting += [window_record(plan.name, w) for w in plan.windows if w.state == "pending"]
            waiting = [w for w in waiting if (plan.name, w.idx) not in taken]
            last = self._last_backfill.get(plan.name)
            gap_ns = 0 if spec.catchup_rate == 0 else round(NS / spec.catchup_rate)
            not_before = 0 if last is None else last + gap_ns
            planned = _next_time(spec, plan.cursor, waiting, not_before)
            self._next_pass[plan.name] = planned
            next_ns = min(next_ns, planned)
        return next_ns

    def _plan(
        self, record: ScheduleRecord, spec: Spec, open_windows: list[WindowRecord], now: int
    ) -> PassPlan:
        """One schedule's part of a pass, worked out in memory."""
        step = advance(spec, record.cursor, now)
        new = [new_window(w, "pending") for w in step.run]
        new += [new_window(w, "skipped") for w in step.skipped]
        pending = [_pending(w, now) for w in open_windows]
        pending += [Pending(w.idx, w.due_ns, w.due_ns, False) for w in new if w.state == "pending"]
        chosen, last = pick_runnable(spec, pending, now, self._last_backfill.get(record.name))
        self._last_backfill[record.name] = last
        return PassPlan(
            name=record.name,
            expected_cursor=record.cursor,
            cursor=step.cursor,
            windows=tuple(new),
            claim=tuple(chosen),
        )

    async def _run_window(self, record: ScheduleRecord, spec: Spec, window: WindowRecord) -> None:
        try:
            end = await self._run(record, spec, window)
        finally:
            self._next_pass.pop(record.name, None)  # its next window may start now
            self._wake.set()
        self._ends.append(end)

    async def _run(self, record: ScheduleRecord, spec: Spec, window: WindowRecord) -> Finish:
        async with self._limit:
            try:
                version, output = await self._produce(record, window)
            except BusError as error:
                return self._failed(record, spec, window, f"{error.code}: {error.message}")
            except Exception as exc:  # a bug in an adapter must not stop the scheduler
                logger.exception("window %s of %s failed", window.window_key, record.name)
                return self._failed(record, spec, window, f"internal: {type(exc).__name__}")
            return Finish(
                name=record.name,
                idx=window.idx,
                state="done",
                now_ns=self.clock(),
                output=output,
                model_version=version,
            )

    async def _produce(self, record: ScheduleRecord, window: WindowRecord) -> tuple[str, Any]:
        series = await self.inputs.read(record.inputs, window.start_ns, window.end_ns)
        data = WindowData(record.name, window.window_key, window.start_ns, window.end_ns, series)
        version, output = await self.predict(record.model, data)
        document = {
            "schedule": record.name,
            "window": window.window_key,
            "start_ns": window.start_ns,
            "end_ns": window.end_ns,
            "model": record.model,
            "version": version,
            "output": output,
            "points": sum(len(points) for points in series.values()),
            "produced_ns": self.clock(),
        }
        await self.outputs.publish(record.output, window.window_key, document)
        return version, output

    def _failed(
        self, record: ScheduleRecord, spec: Spec, window: WindowRecord, reason: str
    ) -> Finish:
        now = self.clock()
        retry_ns = after_failure(spec, window.attempts, now)
        logger.info(
            "window %s of %s failed (attempt %d): %s",
            window.window_key,
            record.name,
            window.attempts,
            reason,
        )
        return Finish(
            name=record.name,
            idx=window.idx,
            state="failed" if retry_ns is None else "pending",
            now_ns=now,
            next_try_ns=retry_ns,
            reason=reason[:_MAX_REASON],
        )


def new_window(window: Window, state: Literal["pending", "skipped"]) -> NewWindow:
    """A planned window as the registry records it."""
    return NewWindow(
        idx=window.index,
        window_key=window.key,
        start_ns=window.start_ns,
        end_ns=window.end_ns,
        due_ns=window.due_ns,
        state=state,
    )


def _pending(window: WindowRecord, now_ns: int) -> Pending:
    """A running window whose claim's lease has expired (its proxy died) is claimable again."""
    if window.state == "running":
        is_held = window.lease_until_ns is not None and window.lease_until_ns >= now_ns
        return Pending(window.idx, window.due_ns, now_ns, is_running=is_held)
    return Pending(window.idx, window.due_ns, window.next_try_ns, is_running=False)


def _next_time(spec: Spec, cursor: int, waiting: list[WindowRecord], not_before: int) -> float:
    """When this schedule next needs a pass: its next window's due time, a retry time (not
    before the catch-up rate allows), or a lease's expiry."""
    next_due = spec.start_ns + cursor * spec.every_ns + spec.delay_ns
    retries = [max(w.next_try_ns, not_before) for w in waiting if w.state == "pending"]
    retries += [w.lease_until_ns + 1 for w in waiting if w.lease_until_ns is not None]
    return float(min([next_due, *retries]))
