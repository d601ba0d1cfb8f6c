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
read here. The records themselves are in :mod:`proxy.registry.schedule_records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import JsonValue

from bus.errors import Conflict, NotFound
from proxy.registry.schedule_records import (
    Claim,
    Finish,
    NewWindow,
    PassPlan,
    ScheduleRecord,
    WindowRecord,
    WindowState,
    window_record,
)
from proxy.registry.sql import Database, Session, to_json

__all__ = [
    "Claim",
    "Finish",
    "NewWindow",
    "PassPlan",
    "ScheduleRecord",
    "ScheduleStore",
    "WindowRecord",
    "WindowState",
    "window_record",
]

_WINDOW_COLUMNS = (
    "schedule, idx, window_key, start_ns, end_ns, due_ns, state, attempts, next_try_ns, "
    "claimed_by, lease_until_ns, reason, output, model_version, started_ns, finished_ns"
)


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
            return await _advance(s, name, expected, cursor, windows, now_ns)

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
                "AND (CAST(? AS TEXT) IS NULL OR state = ?) ORDER BY idx DESC LIMIT ?",
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
            return await _claim(s, name, idx, instance, now_ns, lease_ns)

    async def open_windows_by_schedule(self) -> dict[str, list[WindowRecord]]:
        """Every schedule's pending and running windows, in order (one read for a pass)."""
        async with self._db.read() as s:
            rows = await s.rows(
                f"SELECT {_WINDOW_COLUMNS} FROM schedule_windows "
                "WHERE state IN ('pending', 'running') ORDER BY schedule, idx"
            )
            found: dict[str, list[WindowRecord]] = {}
            for row in rows:
                window = s.load(WindowRecord, row)
                found.setdefault(window.schedule, []).append(window)
            return found

    async def apply_pass(
        self, plans: Sequence[PassPlan], *, instance: str, now_ns: int, lease_ns: int
    ) -> list[Claim]:
        """A scheduler pass in one transaction: each plan's cursor moved (compare-and-set, as
        :meth:`advance_cursor`) with its new windows, then its chosen windows claimed (as
        :meth:`claim_window`). Returns the windows this instance claimed, in plan order."""
        claimed: list[Claim] = []
        lease = (instance, now_ns, now_ns + lease_ns)
        async with self._db.write() as s:
            moving = [plan for plan in plans if plan.cursor != plan.expected_cursor]
            movable = await _movable(s, moving)
            await s.exec_many(
                "UPDATE schedules SET cursor = ?, updated_ns = ? WHERE name = ?",
                [(plan.cursor, now_ns, plan.name) for plan in movable],
            )
            rows = []
            fresh: set[tuple[str, int]] = set()
            for plan in movable:
                running = set(plan.claim).intersection(w.idx for w in plan.windows)
                rows += [_window_row(plan.name, w, now_ns, running, lease) for w in plan.windows]
                for w in plan.windows:
                    if w.idx in running:
                        claimed.append(
                            Claim(plan.name, w.idx, w.window_key, w.start_ns, w.end_ns, 1)
                        )
                        fresh.add((plan.name, w.idx))
            await s.exec_many(_INSERT_WINDOW, rows)
            for plan in plans:
                for idx in plan.claim:
                    if (plan.name, idx) not in fresh:
                        window = await _claim(s, plan.name, idx, instance, now_ns, lease_ns)
                        if window is not None:
                            claimed.append(_claim_of(window))
        return claimed

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
        end = Finish(
            name=name,
            idx=idx,
            state=state,
            now_ns=now_ns,
            next_try_ns=next_try_ns,
            reason=reason,
            output_json=None if output is None else to_json(output),
            model_version=model_version,
        )
        async with self._db.write() as s:
            return await s.exec(_FINISH_WINDOW, _finish_row(end, instance)) == 1

    async def finish_windows(self, ends: Sequence[Finish], *, instance: str) -> None:
        """Several :meth:`finish_window` in one statement (a pass's ends); an end whose claim
        ``instance`` no longer holds writes nothing, as there."""
        async with self._db.write() as s:
            await s.exec_many(_FINISH_WINDOW, [_finish_row(end, instance) for end in ends])

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


async def _advance(
    s: Session,
    name: str,
    expected: int,
    cursor: int,
    windows: Sequence[NewWindow],
    now_ns: int | None = None,
) -> bool:
    """Move the cursor from ``expected`` (compare-and-set) and record the windows."""
    now = s.clock() if now_ns is None else now_ns
    moved = await s.exec(
        "UPDATE schedules SET cursor = ?, updated_ns = ? WHERE name = ? AND cursor = ? "
        "AND paused = 0",
        (cursor, now, name, expected),
    )
    if moved:
        await s.exec_many(_INSERT_WINDOW, [_window_row(name, w, now, set(), None) for w in windows])
    return bool(moved)


async def _movable(s: Session, plans: Sequence[PassPlan]) -> list[PassPlan]:
    """The plans whose schedule still has the cursor they read and is not paused (inside the
    write transaction: no other proxy can move it before the commit)."""
    if not plans:
        return []
    rows = await s.rows("SELECT name, cursor, paused FROM schedules")
    current = {row["name"]: (row["cursor"], row["paused"]) for row in rows}
    return [plan for plan in plans if current.get(plan.name) == (plan.expected_cursor, 0)]


_INSERT_WINDOW = (
    f"INSERT INTO schedule_windows ({_WINDOW_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?) ON CONFLICT DO NOTHING"
)


def _window_row(
    name: str,
    w: NewWindow,
    now_ns: int,
    running: set[int],
    lease: tuple[str, int, int] | None,
) -> tuple[object, ...]:
    """A new window's row; those in ``running`` are recorded already claimed with ``lease`` =
    (instance, started_ns, lease_until_ns): only the instance whose cursor move succeeds inserts
    them, so no claim can race it."""
    skipped = w.state == "skipped"
    claim = lease if w.idx in running else None
    return (
        name,
        w.idx,
        w.window_key,
        w.start_ns,
        w.end_ns,
        w.due_ns,
        "running" if claim else w.state,
        1 if claim else 0,
        w.due_ns,
        claim[0] if claim else None,
        claim[2] if claim else None,
        "outside the catch-up limits" if skipped else None,
        claim[1] if claim else None,
        now_ns if skipped else None,
    )


def _claim_of(window: WindowRecord) -> Claim:
    return Claim(
        window.schedule,
        window.idx,
        window.window_key,
        window.start_ns,
        window.end_ns,
        window.attempts,
    )


async def _claim(
    s: Session, name: str, idx: int, instance: str, now_ns: int, lease_ns: int
) -> WindowRecord | None:
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


_FINISH_WINDOW = (
    "UPDATE schedule_windows SET state = ?, next_try_ns = coalesce(?, next_try_ns), "
    "reason = ?, output = coalesce(?, output), model_version = coalesce(?, model_version), "
    "finished_ns = ?, claimed_by = NULL, lease_until_ns = NULL "
    "WHERE schedule = ? AND idx = ? AND state = 'running' AND claimed_by = ?"
)


def _finish_row(end: Finish, instance: str) -> tuple[object, ...]:
    finished = end.now_ns if end.state != "pending" else None
    return (
        end.state,
        end.next_try_ns,
        end.reason,
        end.output_json,
        end.model_version,
        finished,
        end.name,
        end.idx,
        instance,
    )
