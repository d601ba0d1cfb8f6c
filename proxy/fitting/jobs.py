"""Fit jobs: durable in the registry, run in a one-shot sandboxed worker, ending in a new version.

:meth:`FitJobs.start` records a ``queued`` job (:mod:`proxy.registry.fit_jobs`) and runs it in
the service's task group:

1. ``running``: the training data is gathered — the persisted messages of each training stream
   whose time falls in ``[since_ns, until_ns)``, read and verified over the bus by the reader the
   service passes in, or an uploaded file (content-addressed, digest-checked by the upload) —
   and written to the job's input file; no data at all is a ``bad_data`` failure;
2. the worker runs (:func:`proxy.fitting.runner.run_fit`) — for an image version, the image's
   fit program in a one-shot container (:class:`proxy.fitting.images.ContainerFits`); its
   progress lines are copied to the job every half second;
3. the new archive (an image's: its new state) goes to ``deploy`` (the service's: store it
   like any artifact, register the new immutable version with its provenance, start its
   replicas, switch to it once one is ready if the model asks for that) and the job is
   ``succeeded``.

Any failure is recorded as ``failed`` with ``{code, message}`` and the log's tail; the serving
version is never touched before step 3. When the service stops during a fit, the job is marked
``interrupted`` (and :meth:`FitJobs.interrupt_leftovers` marks, on start, any a crashed service
left ``running``); :meth:`FitJobs.resume` runs an interrupted or failed job again as it was asked.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from bus.codec import pack
from bus.errors import BusError, Conflict
from proxy.backend.sandbox import Sandbox
from proxy.fitting.images import ContainerFits, ImageFit
from proxy.fitting.runner import FitFailed, FitLimits, FitRun, last_lines, last_progress, run_fit
from proxy.registry.fit_jobs import FitJobRecord
from proxy.registry.records import ModelVersion
from proxy.registry.registry import Registry

__all__ = ["Deploy", "FitJobs", "ReadStreams", "Training"]

logger = logging.getLogger(__name__)

ReadStreams = Callable[[Sequence[str], int, int], Awaitable[dict[str, list[tuple[int, Any]]]]]
_PROGRESS_S = 0.5
_LOG_TAIL = 40


@dataclass(frozen=True, slots=True)
class Training:
    """What a fit was trained on, for the new version's metadata."""

    streams: tuple[str, ...]
    since_ns: int
    until_ns: int
    first_ns: int | None
    last_ns: int | None
    points: int
    upload: str | None

    def metadata(self) -> dict[str, Any]:
        return {
            "training_streams": list(self.streams),
            "training_range": {"start_ns": self.first_ns, "end_ns": self.last_ns},
            "training_asked": {"since_ns": self.since_ns, "until_ns": self.until_ns},
            "training_points": self.points,
            "training_upload": self.upload,
        }


Deploy = Callable[[FitJobRecord, bytes, Training], Awaitable[dict[str, Any]]]
"""Register and start the fitted version: (job, the worker's result, training) -> its view. The
result is a closure's new archive, or an image version's new state."""


class FitJobs:
    def __init__(
        self,
        registry: Registry,
        work_dir: Path,
        *,
        task_group: TaskGroup,
        read_streams: ReadStreams,
        artifact_path: Callable[[str], Path],
        deploy: Deploy,
        sandbox: Callable[[], Awaitable[Sandbox | None]],
        containers: ContainerFits | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.registry = registry
        self.work_dir = work_dir
        self._task_group = task_group
        self._read_streams = read_streams
        self._artifact_path = artifact_path
        self._deploy = deploy
        self._sandbox = sandbox
        self._containers = containers
        self._clock = clock
        self._pids: dict[str, int] = {}

    @property
    def fits_images(self) -> bool:
        """Whether image versions can be fitted here (the service has a container engine)."""
        return self._containers is not None

    def pid(self, job_id: str) -> int | None:
        """The running worker's pid (the sandbox's, which leads its process group)."""
        return self._pids.get(job_id)

    async def interrupt_leftovers(self) -> list[FitJobRecord]:
        """On start: jobs a previous run of the service left queued or running."""
        jobs = await self.registry.interrupt_running()
        for job in jobs:
            logger.warning("fit job %s was interrupted by a service restart", job.job_id)
        return jobs

    async def start(self, job: FitJobRecord) -> FitJobRecord:
        self._task_group.start_soon(self._run, job.job_id)
        return job

    async def resume(self, job_id: str) -> FitJobRecord:
        job = await self.registry.get_fit_job(job_id)
        if job.state not in ("interrupted", "failed"):
            raise Conflict(
                f"fit job {job_id} is {job.state}; only an interrupted or failed job "
                "can be resumed",
                job=job_id,
                state=job.state,
            )
        job = await self.registry.update_fit_job(
            job_id, state="queued", progress="queued (resumed)"
        )
        return await self.start(job)

    async def _run(self, job_id: str) -> None:
        run = FitRun(self.work_dir / job_id)
        try:
            await self._attempt(job_id, run)
        except FitFailed as failed:
            await self._fail(job_id, run, failed.wire())
        except BusError as error:
            await self._fail(job_id, run, {"code": error.code, "message": error.message})
        except OSError as error:  # the job's files: a full disk, a removed directory
            message = f"the fit's files could not be written or read: {error}"
            await self._fail(job_id, run, {"code": "internal", "message": message})
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.registry.update_fit_job(
                    job_id,
                    state="interrupted",
                    progress="interrupted: the service stopped during the fit",
                    log=last_lines(run.log, _LOG_TAIL),
                )
            raise
        finally:
            self._pids.pop(job_id, None)
            for done_with in (run.input, run.output):  # the log stays, for fit.status
                done_with.unlink(missing_ok=True)

    async def _attempt(self, job_id: str, run: FitRun) -> None:
        job = await self.registry.update_fit_job(
            job_id, state="running", progress="reading the training data", started=True
        )
        shutil.rmtree(run.directory, ignore_errors=True)
        run.directory.mkdir(parents=True, mode=0o700)
        training = await self._write_input(job, run)
        parent = await self.registry.get_model(job.model_name, job.parent_version)
        await self.registry.update_fit_job(job_id, progress=f"fitting on {training.points} points")
        limits = FitLimits(
            timeout_s=float(job.request.get("timeout_s", 600.0)),
            memory_bytes=int(job.request.get("memory_mb", 2048)) * 1024 * 1024,
        )
        failure: FitFailed | None = None
        archive = b""
        async with anyio.create_task_group() as group:
            group.start_soon(self._copy_progress, job_id, run)
            try:
                archive = await self._fit(job, parent, run, limits)
            except FitFailed as failed:  # raised out of the group as itself, not in a group
                failure = failed
            finally:
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        self._pids.pop(job_id, None)
        await self.registry.update_fit_job(job_id, progress="deploying the new version")
        view = await self._deploy(job, archive, training)
        await self.registry.update_fit_job(
            job_id,
            state="succeeded",
            progress=f"done: {job.model_name}:{job.new_version}"
            + (
                " serves once ready" if view.get("is_current_version") else " deployed, not current"
            ),
            log=last_lines(run.log, _LOG_TAIL),
        )
        logger.info("fit job %s made %s:%s", job_id, job.model_name, job.new_version)

    async def _fit(
        self, job: FitJobRecord, parent: ModelVersion, run: FitRun, limits: FitLimits
    ) -> bytes:
        """The worker's result: a closure's new archive, an image's new state."""

        def started(pid: int) -> None:
            self._pids[job.job_id] = pid

        if parent.artifact_kind == "closure":
            sandbox = await self._sandbox()
            artifact = Path(parent.artifact_path)
            return await run_fit(run, artifact, sandbox=sandbox, limits=limits, on_start=started)
        if parent.artifact_kind != "image" or parent.image is None:
            raise FitFailed("not_fittable", f"{parent.key} is served remotely: it cannot be fitted")
        if self._containers is None:
            raise FitFailed(
                "not_fittable", f"{parent.key} is an image and this service has no container engine"
            )
        state = parent.state_sha256
        fit = ImageFit(
            job_id=job.job_id,
            name=job.model_name,
            new_version=job.new_version,
            tarball=Path(parent.artifact_path),
            image=parent.image,
            state=None if state is None else self._artifact_path(state),
        )
        return await self._containers.run(run, fit, limits=limits, on_start=started)

    async def _write_input(self, job: FitJobRecord, run: FitRun) -> Training:
        request = job.request
        since = int(request.get("since_ns") or 0)
        until = int(request.get("until_ns") or self._clock())
        streams = tuple(request.get("streams") or ())
        context = {
            "model": job.model_name,
            "parent_version": job.parent_version,
            "new_version": job.new_version,
            "since_ns": since,
            "until_ns": until,
            "streams": list(streams),
        }
        upload = request.get("upload")
        if upload:
            path = self._artifact_path(str(upload))
            uploaded = await anyio.to_thread.run_sync(path.read_bytes)
            body: dict[str, Any] = {"upload": uploaded, "data": None, "context": context}
            training = Training(streams, since, until, None, None, 0, str(upload))
        else:
            series = await self._read_streams(streams, since, until)
            times = [ts for points in series.values() for ts, _ in points]
            if not times:
                raise FitFailed(
                    "bad_data",
                    f"no training data: the streams hold no persisted message in [{since}, "
                    f"{until}) ns",
                )
            data = {uri: [[ts, value] for ts, value in points] for uri, points in series.items()}
            body = {"data": data, "upload": None, "context": context}
            training = Training(streams, since, until, min(times), max(times), len(times), None)
        try:
            encoded = pack(body)
        except BusError as error:
            message = f"the training data cannot be sent: {error.message}"
            raise FitFailed("bad_data", message) from error
        await anyio.to_thread.run_sync(run.input.write_bytes, encoded)
        return training

    async def _copy_progress(self, job_id: str, run: FitRun) -> None:
        shown: str | None = None
        while True:
            await anyio.sleep(_PROGRESS_S)
            progress = await anyio.to_thread.run_sync(last_progress, run.log)
            if progress is not None and progress != shown:
                shown = progress
                await self.registry.update_fit_job(job_id, progress=progress)

    async def _fail(self, job_id: str, run: FitRun, error: dict[str, Any]) -> None:
        logger.warning("fit job %s failed: %s: %s", job_id, error["code"], error["message"])
        await self.registry.update_fit_job(
            job_id,
            state="failed",
            progress=f"failed: {error['code']}",
            error=error,
            log=last_lines(run.log, _LOG_TAIL),
        )
