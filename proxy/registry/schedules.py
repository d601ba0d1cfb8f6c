"""Schedules and their windows as stored: the durable half of :mod:`proxy.schedules`.

A schedule row holds its definition and its *cursor* (the index of the first grid window not
yet considered); a window row holds one window's state, attempts, claim and result. Windows are
keyed ``(schedule, idx)`` and ``(schedule, window_key)``, so a window exists once whatever
happens: re-running it updates its row, never adds one.

Several proxies may share the file. :meth:`ScheduleStore.advance_cursor` moves a cursor only
from the value the caller read (compare-and-set), so two proxies never both create a window;
:meth:`ScheduleStore.claim_window` lets exactly one instance run a window, and takes over a
claim whose lease has expired (its holder died); :meth:`ScheduleStore.finish_window` only counts
from the instance that holds the claim. Times are passed in by the scheduler (its clock), not
read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json, JsonValue

from bus.errors import Conflict, NotFound
from proxy.registry.sql import Database, Session, to_json

__all__ = ["NewWindow", "ScheduleRecord", "ScheduleStore", "WindowRecord", "WindowState"]

WindowState = Literal["pending", "running", "done", "failed", "skipped"]
Ns = Annotated[int, Field(ge=0)]

_WINDOW_COLUMNS = (
    "schedule, idx, window_key, start_ns, end_ns, due_ns, state, attempts, next_try_ns, "
    "claimed_by, lease_until_ns, reason, output, model_version, started_ns, finished_ns"
)


class ScheduleRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str
    inputs: Json[list[str]]
    output: str
    spec: Json[dict[str, Any]]
    """The fields of :class:`proxy.schedules.plan.Spec`."""
    owner: str
    paused: bool
    cursor: Ns
    created_ns: Ns
    updated_ns: Ns


class WindowRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: str
    idx: Ns
    window_key: str
    start_ns: int
    end_ns: int
    due_ns: int
    state: WindowState
    attempts: Ns
    next_try_ns: int
    claimed_by: str | None
    lease_until_ns: int | None
    reason: str | None
    output: Json[JsonValue] | None
    model_version: str | None
    started_ns: int | None
    finished_ns: int | None

    def view(self) -> dict[str, Any]:
        """The record as the ``schedule.runs`` operation answers it."""
        return self.model_dump()


class NewWindow(BaseModel):
    """A window to record: to run (``pending``) or ``skipped`` by the catch-up limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idx: Ns
    window_key: str
    start_ns: int
    end_ns: int
    due_ns: int
    state: Literal["pending", "skipped"]


class ScheduleStore:
    """Schedules and windows: that part of :class:`proxy.registry.registry.Registry`."""

    _db: Database

    async def add_schedule(
        self,
        name: str,
        *,
        model: str,
        inputs: Sequence[str],
        output: str,
        spec: dict[str, Any],
        owner: str,
        cursor: int,
        now_ns: int,
    ) -> ScheduleRecord:
        async with self._db.write() as s:
            if await s.row("SELECT 1 FROM schedules WHERE name = ?", (name,)):
                raise Conflict(f"a schedule named {name!r} exists; remove it first", name=name)
            await s.exec(
                "INSERT INTO schedules VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    name,
                    model,
                    to_json(list(inputs)),
                    output,
                    to_json(spec),
                    owner,
                    cursor,
                    now_ns,
                    now_ns,
                ),
            )
            return await _schedule(s, name)

    async def get_schedule(self, name: str) -> ScheduleRecord:
        async with self._db.read() as s:
            return await _schedule(s, name)

    async def list_schedules(self) -> list[ScheduleRecord]:
        async with self._db.read() as s:
            rows = await s.rows("SELECT * FROM schedules ORDER BY name")
            return [s.load(ScheduleRecord, row) for row in rows]

    async def remove_schedule(self, name: str) -> ScheduleRecord:
        """Remove a schedule with its windows (the outputs it published stay on the bus)."""
        async with self._db.write() as s:
            found = await _schedule(s, name)
            await s.exec("DELETE FROM schedules WHERE name = ?", (name,))
            return found

    async def set_paused(
        self, name: str, paused: bool, *, cursor: int | None, now_ns: int
    ) -> ScheduleRecord:
        """Pause or resume; ``cursor`` (on resume) moves the cursor past the paused time."""
        async with self._db.write() as s:
            found = await _schedule(s, name)
            new_cursor = found.cursor if cursor is None else max(found.cursor, cursor)
            await s.exec(
                "UPDATE schedules SET paused = ?, cursor = ?, updated_ns = ? WHERE name = ?",
                (int(paused), new_cursor, now_ns, name),
            )
            return await _schedule(s, name)

    async def advance_cursor(
        self, name: str, expected: int, cursor: int, windows: Sequence[NewWindow], now_ns: int
    ) -> bool:
        """Record ``windows`` and move the cursor from ``expected`` to ``cursor``, in one
        transaction; False (nothing written) when another proxy moved it first."""
        async with self._db.write() as s:
            moved = await s.exec(
                "UPDATE schedules SET cursor = ?, updated_ns = ? WHERE name = ? AND cursor = ? "
                "AND paused = 0",
                (cursor, now_ns, name, expected),
            )
            if not moved:
                return False
            for w in windows:
                skipped = w.state == "skipped"
                await s.exec(
                    f"INSERT INTO schedule_windows ({_WINDOW_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, ?, NULL, NULL, NULL, ?) "
                    "ON CONFLICT DO NOTHING",
                    (
                        name,
                        w.idx,
                        w.window_key,
                        w.start_ns,
                        w.end_ns,
                        w.due_ns,
                        w.state,
                        w.due_ns,
                        "outside the catch-up limits" if skipped else None,
                        now_ns if skipped else None,
                    ),
                )
            return True

    async def open_windows(self, name: str) -> list[WindowRecord]:
        """The schedule's pending and running windows, in order."""
        async with self._db.read() as s:
            rows = await s.rows(
                f"SELECT {_WINDOW_COLUMNS} FROM schedule_windows WHERE schedule = ? "
                "AND state IN ('pending', 'running') ORDER BY idx",
                (name,),
            )
            return [s.load(WindowRecord, row) for row in rows]

    async def list_windows(
        self, name: str, *, limit: int = 100, state: WindowState | None = None
    ) -> list[WindowRecord]:
        """The schedule's newest ``limit`` windows (optionally of one state), oldest first."""
        async with self._db.read() as s:
            await _schedule(s, name)
            rows = await s.rows(
                f"SELECT {_WINDOW_COLUMNS} FROM schedule_windows WHERE schedule = ? "
                "AND (? IS NULL OR state = ?) ORDER BY idx DESC LIMIT ?",
                (name, state, state, limit),
            )
            return [s.load(WindowRecord, row) for row in reversed(rows)]

    async def get_window(self, name: str, key: str) -> WindowRecord:
        async with self._db.read() as s:
            return await _window(s, name, key)

    async def claim_window(
        self, name: str, idx: int, *, instance: str, now_ns: int, lease_ns: int
    ) -> WindowRecord | None:
        """Claim a pending window whose retry time has come, or a running one whose lease has
        expired; the claimed window (its attempts counted), or None if not claimable."""
        async with self._db.write() as s:
            claimed = await s.exec(
                "UPDATE schedule_windows SET state = 'running', claimed_by = ?, "
                "lease_until_ns = ?, attempts = attempts + 1, started_ns = ? "
                "WHERE schedule = ? AND idx = ? AND ((state = 'pending' AND next_try_ns <= ?) "
                "OR (state = 'running' AND lease_until_ns < ?))",
                (instance, now_ns + lease_ns, now_ns, name, idx, now_ns, now_ns),
            )
            if not claimed:
                return None
            row = await s.row(
                f"SELECT {_WINDOW_COLUMNS} FROM schedule_windows WHERE schedule = ? AND idx = ?",
                (name, idx),
            )
            assert row is not None
            return s.load(WindowRecord, row)

    async def finish_window(
        self,
        name: str,
        idx: int,
        *,
        instance: str,
        state: Literal["pending", "done", "failed"],
        now_ns: int,
        next_try_ns: int | None = None,
        reason: str | None = None,
        output: JsonValue = None,
        model_version: str | None = None,
    ) -> bool:
        """Record a run's end: ``done`` with its output, ``pending`` again (a retry at
        ``next_try_ns``) or ``failed`` with its reason. False if ``instance`` no longer holds
        the claim (it was taken over): then nothing is written."""
        async with self._db.write() as s:
            changed = await s.exec(
                "UPDATE schedule_windows SET state = ?, next_try_ns = coalesce(?, next_try_ns), "
                "reason = ?, output = coalesce(?, output), model_version = coalesce(?, "
                "model_version), finished_ns = ?, claimed_by = NULL, lease_until_ns = NULL "
                "WHERE schedule = ? AND idx = ? AND state = 'running' AND claimed_by = ?",
                (
                    state,
                    next_try_ns,
                    reason,
                    None if output is None else to_json(output),
                    model_version,
                    now_ns if state != "pending" else None,
                    name,
                    idx,
                    instance,
                ),
            )
            return bool(changed)

    async def rerun_window(self, name: str, key: str, *, now_ns: int) -> WindowRecord:
        """Make a finished window pending again, now, with its attempts reset; Conflict if it
        is pending or running already."""
        async with self._db.write() as s:
            found = await _window(s, name, key)
            if found.state in ("pending", "running"):
                raise Conflict(
                    f"window {key} of {name!r} is {found.state} already", state=found.state
                )
            await s.exec(
                "UPDATE schedule_windows SET state = 'pending', attempts = 0, next_try_ns = ?, "
                "reason = NULL, finished_ns = NULL WHERE schedule = ? AND idx = ?",
                (now_ns, name, found.idx),
            )
            return await _window(s, name, key)


async def _schedule(s: Session, name: str) -> ScheduleRecord:
    row = await s.row("SELECT * FROM schedules WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"no schedule named {name!r}", schedule=name)
    return s.load(ScheduleRecord, row)


async def _window(s: Session, name: str, key: str) -> WindowRecord:
    await _schedule(s, name)
    row = await s.row(
        f"SELECT {_WINDOW_COLUMNS} FROM schedule_windows WHERE schedule = ? AND window_key = ?",
        (name, key),
    )
    if row is None:
        raise NotFound(f"schedule {name!r} has no window {key!r}", schedule=name, window=key)
    return s.load(WindowRecord, row)
