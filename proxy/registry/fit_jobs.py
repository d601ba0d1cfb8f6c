"""Fit jobs as stored: who asked to fit which version on what, and how it went.

A job is ``queued`` when accepted, ``running`` while its worker runs, then ``succeeded`` (the
new version is registered), ``failed`` (with a readable error) or ``interrupted`` (the proxy
stopped while it ran: :meth:`FitJobStore.interrupt_running` marks them on start, and
``fit.resume`` runs one again). The whole request is kept (``request``), so a job can be
resumed as it was asked.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json

from bus.errors import Conflict, NotFound
from proxy.registry.sql import Database, Session, to_json

__all__ = ["FitJobRecord", "FitJobStore", "FitState"]

FitState = Literal["queued", "running", "succeeded", "failed", "interrupted"]
Ns = Annotated[int, Field(ge=0)]
_LOG_CHARS = 16_000


class FitJobRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    model_name: str
    parent_version: str
    new_version: str
    requester: str
    state: FitState
    request: Json[dict[str, Any]]
    progress: str
    error: Json[dict[str, Any]] | None
    log: str
    attempts: Ns
    created_ns: Ns
    updated_ns: Ns
    finished_ns: Ns | None

    @property
    def is_finished(self) -> bool:
        return self.state in ("succeeded", "failed", "interrupted")

    def view(self) -> dict[str, Any]:
        """The job as ``fit.status`` answers it (the request's proofs left out)."""
        view = self.model_dump(exclude={"request"})
        view["request"] = {k: v for k, v in self.request.items() if k != "proofs"}
        return view


class FitJobStore:
    """Fit jobs: that part of :class:`proxy.registry.registry.Registry`."""

    _db: Database

    async def create_fit_job(
        self,
        job_id: str,
        *,
        model_name: str,
        parent_version: str,
        new_version: str,
        requester: str,
        request: dict[str, Any],
    ) -> FitJobRecord:
        async with self._db.write() as s:
            if await s.row("SELECT 1 FROM fit_jobs WHERE job_id = ?", (job_id,)):
                raise Conflict(f"fit job {job_id!r} exists", job=job_id)
            busy = await s.row(
                "SELECT job_id FROM fit_jobs WHERE model_name = ? AND new_version = ? "
                "AND state IN ('queued', 'running')",
                (model_name, new_version),
            )
            if busy is not None:
                raise Conflict(
                    f"fit job {busy['job_id']} is already making {model_name}:{new_version}",
                    job=busy["job_id"],
                )
            now = s.clock()
            await s.exec(
                "INSERT INTO fit_jobs VALUES (?, ?, ?, ?, ?, 'queued', ?, 'queued', NULL, '', 0, "
                "?, ?, NULL)",
                (
                    job_id,
                    model_name,
                    parent_version,
                    new_version,
                    requester,
                    to_json(request),
                    now,
                    now,
                ),
            )
            return await _job(s, job_id)

    async def get_fit_job(self, job_id: str) -> FitJobRecord:
        async with self._db.read() as s:
            return await _job(s, job_id)

    async def list_fit_jobs(self, model_name: str | None = None, limit: int = 50) -> list[Any]:
        async with self._db.read() as s:
            rows = await s.rows(
                "SELECT * FROM fit_jobs WHERE ? IS NULL OR model_name = ? "
                "ORDER BY created_ns DESC LIMIT ?",
                (model_name, model_name, limit),
            )
            return [s.load(FitJobRecord, row) for row in rows]

    async def update_fit_job(
        self,
        job_id: str,
        *,
        state: FitState | None = None,
        progress: str | None = None,
        error: dict[str, Any] | None = None,
        log: str | None = None,
        started: bool = False,
    ) -> FitJobRecord:
        """Record a job's progress; a finished state stamps ``finished_ns``, ``started``
        counts an attempt."""
        async with self._db.write() as s:
            await _job(s, job_id)
            now = s.clock()
            keep_finished = state is None
            finished = now if state in ("succeeded", "failed", "interrupted") else None
            await s.exec(
                "UPDATE fit_jobs SET state = coalesce(?, state), progress = coalesce(?, progress),"
                " error = CASE WHEN ? THEN ? ELSE error END, log = coalesce(?, log), "
                "attempts = attempts + ?, updated_ns = ?, "
                "finished_ns = CASE WHEN ? THEN finished_ns ELSE ? END WHERE job_id = ?",
                (
                    state,
                    progress,
                    error is not None,
                    None if error is None else to_json(error),
                    None if log is None else log[-_LOG_CHARS:],
                    int(started),
                    now,
                    keep_finished,
                    finished,
                    job_id,
                ),
            )
            return await _job(s, job_id)

    async def interrupt_running(self) -> list[FitJobRecord]:
        """Mark every queued or running job interrupted (the proxy that ran them stopped)."""
        async with self._db.write() as s:
            rows = await s.rows("SELECT job_id FROM fit_jobs WHERE state IN ('queued', 'running')")
            now = s.clock()
            await s.exec(
                "UPDATE fit_jobs SET state = 'interrupted', progress = 'interrupted: the service "
                "stopped during the fit', updated_ns = ?, finished_ns = ? "
                "WHERE state IN ('queued', 'running')",
                (now, now),
            )
            return [await _job(s, row["job_id"]) for row in rows]


async def _job(s: Session, job_id: str) -> FitJobRecord:
    row = await s.row("SELECT * FROM fit_jobs WHERE job_id = ?", (job_id,))
    if row is None:
        raise NotFound(f"no fit job {job_id!r}", job=job_id)
    return s.load(FitJobRecord, row)
