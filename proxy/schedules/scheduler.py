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
   window, verified by the bus client), calls the model with the window's data, publishes
   the result as a signed, persisted message on ``<output URI>/<window key>`` and stores it in
   the window's row. A re-run of a window replaces both: the same row, the same URI. The
   claimed windows of one model are run together, at most ``batch_windows`` of them in one
   call of :data:`Predict` (one input per window: the backend batches them for its replicas as
   it batches concurrent requests); each window still succeeds or fails on its own;
3. a run that fails is retried with back-off (:func:`proxy.schedules.plan.after_failure`), then
   recorded ``failed`` with its reason; the schedule goes on with its later windows.

:meth:`Scheduler.run` ticks forever, sleeping until the next window falls due or a retry comes
(at most ``tick_s``), and wakes early when :meth:`Scheduler.nudge` is called (a schedule added,
resumed or a window re-run) or a run ends; its windows run in the background (at most
``max_parallel`` model calls at once), so a slow model holds up no other model's schedules.
A window's claim lasts ``lease_ns`` (120 s: longer than the service's prediction timeout),
after which another instance — or this one restarted — takes it over. The seams (inputs,
model, outputs) and a window's data are in :mod:`proxy.schedules.windows`. Tests call
:meth:`tick` with their own clock instead: nothing here reads the time but through ``clock``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus

from bus.errors import BusError, InternalError, InvalidRequest
from proxy.registry.registry import Registry
from proxy.registry.schedules import (
    Claim,
    Finish,
    NewWindow,
    PassPlan,
    ScheduleRecord,
    WindowRecord,
    window_record,
)
from proxy.registry.sql import to_json
from proxy.schedules.plan import NS, Pending, Spec, Window, advance, after_failure, pick_runnable
from proxy.schedules.windows import (
    Outcome,
    Point,
    Predict,
    PredictOne,
    WindowData,
    WindowInputs,
    WindowOutputs,
    model_input,
    one_at_a_time,
)

__all__ = [
    "Clock",
    "Outcome",
    "Point",
    "Predict",
    "PredictOne",
    "Scheduler",
    "WindowData",
    "WindowInputs",
    "WindowOutputs",
    "model_input",
    "new_window",
    "one_at_a_time",
    "spec_of",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], int]
DEFAULT_LEASE_NS = 120 * NS
_MAX_REASON = 2_000


def spec_of(record: ScheduleRecord) -> Spec:
    return Spec(**record.spec)


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
        batch_windows: int = 64,
    ) -> None:
        self.registry = registry
        self.inputs = inputs
        self.outputs = outputs
        self.predict = predict
        self.clock = clock
        self.instance = instance
        self.lease_ns = lease_ns
        self.tick_s = tick_s
        self.batch_windows = batch_windows
        self._limit = anyio.CapacityLimiter(max_parallel)
        self._specs: dict[str, tuple[dict[str, Any], Spec]] = {}
        self._last_backfill: dict[str, int | None] = {}
        self._wake = anyio.Event()
        self._nudged = False
        self._next_pass: dict[str, float] = {}
        self._seen_ns = 0
        self._ends: list[Finish] = []
        self.windows_run = 0

    def nudge(self) -> None:
        """Look at every schedule again, now (a schedule changed or a window is to re-run).
        Taken at the next pass's start: a nudge during a pass is never overwritten by the plans
        that pass was making from what it read before."""
        self._nudged = True
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
        if self._nudged:
            self._nudged = False
            self._next_pass.clear()
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
            spec = self._spec(record)
            by_name[record.name] = (record, spec)
            plans.append(self._plan(record, spec, opened.get(record.name, []), now))
        claimed = await self.registry.apply_pass(
            plans, instance=self.instance, now_ns=now, lease_ns=self.lease_ns
        )
        batches = self._batches([(*by_name[claim.schedule], claim) for claim in claimed])
        if background is not None:
            for model, batch in batches:
                background.start_soon(self._run_batch, model, batch)
        else:
            async with anyio.create_task_group() as group:
                for model, batch in batches:
                    group.start_soon(self._run_batch, model, batch)
            await self._record_ends()
        taken = {(claim.schedule, claim.idx) for claim in claimed}
        next_ns = math.inf
        for plan in plans:
            record, spec = by_name[plan.name]
            waiting = [w for w in opened.get(plan.name, []) if (plan.name, w.idx) not in taken]
            waiting += [
                window_record(plan.name, w)
                for w in plan.windows
                if w.state == "pending" and (plan.name, w.idx) not in taken
            ]
            last = self._last_backfill.get(plan.name)
            gap_ns = 0 if spec.catchup_rate == 0 else round(NS / spec.catchup_rate)
            not_before = 0 if last is None else last + gap_ns
            planned = _next_time(spec, plan.cursor, waiting, not_before)
            self._next_pass[plan.name] = planned
            next_ns = min(next_ns, planned)
        return next_ns

    def _spec(self, record: ScheduleRecord) -> Spec:
        """The record's :class:`Spec`, built once per schedule while its stored spec is equal."""
        known = self._specs.get(record.name)
        if known is not None and known[0] == record.spec:
            return known[1]
        spec = spec_of(record)
        self._specs[record.name] = (record.spec, spec)
        return spec

    def _batches(self, runs: list[_Run]) -> list[tuple[str, list[_Run]]]:
        """The claimed windows by model, in claim order, cut into calls of ``batch_windows``."""
        by_model: dict[str, list[_Run]] = {}
        for run in runs:
            by_model.setdefault(run[0].model, []).append(run)
        size = max(1, self.batch_windows)
        return [
            (model, group[start : start + size])
            for model, group in by_model.items()
            for start in range(0, len(group), size)
        ]

    def _plan(
        self, record: ScheduleRecord, spec: Spec, open_windows: list[WindowRecord], now: int
    ) -> PassPlan:
        """One schedule's part of a pass, worked out in memory."""
        step = advance(spec, record.cursor, now)
        if not open_windows and len(step.run) == 1 and not step.skipped:
            only = step.run[0]
            if now - only.due_ns <= spec.every_ns:  # the common case, as pick_runnable decides
                # it: one window due on time and nothing before it: it runs, not a backfill
                new_one = new_window(only, "pending")
                return PassPlan(record.name, record.cursor, step.cursor, (new_one,), (only.index,))
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

    async def _run_batch(self, model: str, batch: list[_Run]) -> None:
        try:
            async with self._limit:
                ends = await self._run(model, batch)
        finally:
            for record, _, _ in batch:
                self._next_pass.pop(record.name, None)  # its next window may start now
            self._wake.set()
        self._ends += ends

    async def _run(self, model: str, batch: list[_Run]) -> list[Finish]:
        """Run windows of one model: read each one's inputs, call the model once for those
        read, publish each output. Returns how each ended; none fails another."""
        ends: list[Finish] = []
        ready: list[tuple[ScheduleRecord, Spec, Claim, WindowData]] = []
        for record, spec, claim in batch:
            try:
                series = await self.inputs.read(record.inputs, claim.start_ns, claim.end_ns)
            except Exception as exc:  # a bug in an adapter must not stop the scheduler
                ends.append(self._failed(record, spec, claim, _reason(exc, claim, record)))
                continue
            data = WindowData(record.name, claim.window_key, claim.start_ns, claim.end_ns, series)
            ready.append((record, spec, claim, data))
        if not ready:
            return ends
        outcomes: list[Outcome | _Failure]
        try:
            outcomes = list(await self.predict(model, [item[3] for item in ready]))
            if len(outcomes) != len(ready):
                raise InternalError(f"{len(outcomes)} outcomes for {len(ready)} windows")
        except Exception as exc:  # the whole call failed: each of its windows did
            first = ready[0]
            outcomes = [_Failure(_reason(exc, first[2], first[0]))] * len(ready)
        for (record, spec, claim, data), outcome in zip(ready, outcomes, strict=True):
            ends.append(await self._finish(record, spec, claim, data, outcome))
        return ends

    async def _finish(
        self,
        record: ScheduleRecord,
        spec: Spec,
        claim: Claim,
        data: WindowData,
        outcome: Outcome | _Failure,
    ) -> Finish:
        """Publish a window's output (and store it), or record its failure."""
        if isinstance(outcome, _Failure):
            return self._failed(record, spec, claim, outcome.reason)
        if isinstance(outcome, BusError):
            return self._failed(record, spec, claim, f"{outcome.code}: {outcome.message}")
        version, output = outcome
        document = {
            "schedule": record.name,
            "window": claim.window_key,
            "start_ns": claim.start_ns,
            "end_ns": claim.end_ns,
            "model": record.model,
            "version": version,
            "output": output,
            "points": sum(len(points) for points in data.series.values()),
            "produced_ns": self.clock(),
        }
        try:
            stored = _stored(output)
            await self.outputs.publish(record.output, claim.window_key, document)
        except Exception as exc:  # a bug in an adapter must not stop the scheduler
            return self._failed(record, spec, claim, _reason(exc, claim, record))
        return Finish(record.name, claim.idx, "done", self.clock(), None, None, stored, version)

    def _failed(self, record: ScheduleRecord, spec: Spec, claim: Claim, reason: str) -> Finish:
        now = self.clock()
        retry_ns = after_failure(spec, claim.attempts, now)
        logger.info(
            "window %s of %s failed (attempt %d): %s",
            claim.window_key,
            record.name,
            claim.attempts,
            reason,
        )
        return Finish(
            name=record.name,
            idx=claim.idx,
            state="failed" if retry_ns is None else "pending",
            now_ns=now,
            next_try_ns=retry_ns,
            reason=reason[:_MAX_REASON],
        )


_Run = tuple[ScheduleRecord, Spec, Claim]
"""A claimed window to run, with its schedule."""


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str


def _reason(exc: Exception, claim: Claim, record: ScheduleRecord) -> str:
    """Why a window failed, as recorded: a bus error's code and message; for anything else
    (a bug) only its type, and the traceback in the log."""
    if isinstance(exc, BusError):
        return f"{exc.code}: {exc.message}"
    logger.error("window %s of %s failed", claim.window_key, record.name, exc_info=exc)
    return f"internal: {type(exc).__name__}"


def _stored(output: Any) -> str:
    """The output as the registry stores it (JSON); InvalidRequest if it is not storable."""
    try:
        return to_json(output)
    except TypeError as exc:
        raise InvalidRequest(f"the model's output is not storable as JSON: {exc}") from exc


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
