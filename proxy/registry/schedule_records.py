"""The records of schedules and their windows, as :mod:`proxy.registry.schedules` stores them
and the scheduler (:mod:`proxy.schedules.scheduler`) hands them over.

Rows read back are validated (:class:`ScheduleRecord`, :class:`WindowRecord`); what a pass hands
the store (:class:`NewWindow`, :class:`PassPlan`, :class:`Finish`) and gets back
(:class:`Claim`) is built by the scheduler from its own plan — no untrusted data — so those are
plain tuples, cheap to build a thousand times a pass.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, Json, JsonValue

__all__ = [
    "Claim",
    "Finish",
    "NewWindow",
    "PassPlan",
    "ScheduleRecord",
    "WindowRecord",
    "WindowState",
    "window_record",
]

WindowState = Literal["pending", "running", "done", "failed", "skipped"]
Ns = Annotated[int, Field(ge=0)]


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


class NewWindow(NamedTuple):
    """A window to record: to run (``pending``) or ``skipped`` by the catch-up limits."""

    idx: int
    window_key: str
    start_ns: int
    end_ns: int
    due_ns: int
    state: Literal["pending", "skipped"]


class PassPlan(NamedTuple):
    """One schedule's part of a pass: its cursor move, new windows and windows to claim."""

    name: str
    expected_cursor: int
    cursor: int
    windows: tuple[NewWindow, ...] = ()
    claim: tuple[int, ...] = ()


class Claim(NamedTuple):
    """A window this instance claimed in a pass: what running it needs."""

    schedule: str
    idx: int
    window_key: str
    start_ns: int
    end_ns: int
    attempts: int


class Finish(NamedTuple):
    """How one run of a window ended (see :meth:`ScheduleStore.finish_window`)."""

    name: str
    idx: int
    state: Literal["pending", "done", "failed"]
    now_ns: int
    next_try_ns: int | None = None
    reason: str | None = None
    output_json: str | None = None
    """The output as stored (:func:`proxy.registry.sql.to_json`); None keeps the old one."""
    model_version: str | None = None


def window_record(name: str, w: NewWindow) -> WindowRecord:
    """A new window as a pass records it when it does not claim it: pending."""
    return WindowRecord(
        schedule=name,
        idx=w.idx,
        window_key=w.window_key,
        start_ns=w.start_ns,
        end_ns=w.end_ns,
        due_ns=w.due_ns,
        state="pending",
        attempts=0,
        next_try_ns=w.due_ns,
        claimed_by=None,
        lease_until_ns=None,
        reason=None,
        output=None,
        model_version=None,
        started_ns=None,
        finished_ns=None,
    )
