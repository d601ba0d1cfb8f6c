"""Runs one fit of an image version in a one-shot container, never in the proxy (PROTOCOL §18.9).

The image says how it fits in its label ``modelbus.fit``: its fit program, a JSON array (exec
form, :func:`proxy.backend.images.parse_fit_command`). :meth:`ContainerFits.run` loads the parent
version's image (from its tarball, unless the engine has it) and runs that program as the
container's entrypoint with these arguments::

    --input /run/modelbus-fit/input --output-dir /run/modelbus-fit/out
    (--artifact PATH | --function PATH)        from the image's modelbus.entry, as replicas get
    [--state /run/modelbus-state/state]        the parent's fitted state, if it was fitted

``input`` is the job's input file (the msgpack map :mod:`proxy.fitting.worker` reads) and the
parent's state are bound read-only, ``out`` is the one writable directory. The container is
confined as replicas are (:mod:`proxy.backend.docker_engine`: no network, no capabilities, user
65534, read-only root, a size-capped ``/tmp``, the runtime's pids and CPU limits) with the fit's
own memory limit (no swap: past it the kernel OOM-kills it) and wall time (``timeout_s``: then it
is removed by force). Its output and error lines are the job's log (copied every half second, so
``modelbus-progress:`` lines show as the job's progress). The result:

- exit 0 and ``out/state`` a regular file of at most :data:`MAX_STATE_BYTES`: the new state;
- ``out/error.json`` ``{"code", "message"}``: that failure (``not_fittable``, ``bad_data``,
  ``fit_error`` …);
- OOM-killed or killed by a signal: ``fit_killed`` (a SIGKILL the service did not send is
  taken for the memory limit: Podman under cgroup v2 does not always report ``OOMKilled``);
  past ``timeout_s``: ``fit_timeout``;
- anything else (another exit status, no state, a state too large or not a regular file):
  ``fit_crashed``.

Files the container wrote are opened without following symbolic links: a fit cannot make the
service read a host file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bus.artifact import MAX_ARCHIVE_BYTES
from bus.errors import BusError, NotFound
from proxy.backend.images import STATE_PATH
from proxy.backend.sandbox import NOBODY
from proxy.fitting.runner import FitFailed, FitLimits, FitRun

if TYPE_CHECKING:  # docker-py only where an engine is used
    from proxy.backend.docker import DockerRuntime

__all__ = ["FIT_DIR", "MAX_STATE_BYTES", "ContainerFits", "ImageFit"]

logger = logging.getLogger(__name__)

FIT_DIR = "/run/modelbus-fit"
MAX_STATE_BYTES = MAX_ARCHIVE_BYTES
"""The largest state a fit may write (the largest closure archive: the base images' state)."""
JOB_LABEL = "modelbus.fit-job"
_LOG_S = 0.5
_LOG_LINES = 2_000
_MAX_ERROR_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ImageFit:
    """The parent version a fit starts from: its image, and its state if it was fitted."""

    job_id: str
    name: str
    new_version: str
    tarball: Path
    image: str
    state: Path | None


class ContainerFits:
    """Fits of image versions on the docker runtime's engine (see the module docstring)."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self.runtime = runtime
        self.engine = runtime.engine

    async def run(
        self,
        run: FitRun,
        fit: ImageFit,
        *,
        limits: FitLimits,
        on_start: Callable[[int], None] = lambda pid: None,
    ) -> bytes:
        """The new state's bytes, or FitFailed."""
        saved = await self.runtime.saved_image(fit.tarball, fit.image)
        command = saved.fit_command
        if command is None:
            raise FitFailed(
                "not_fittable",
                f"the image {fit.image} declares no fit program (label modelbus.fit)",
            )
        output = run.directory / "out"
        volumes = await anyio.to_thread.run_sync(_volumes, run, output, fit.state)
        args = [
            *("--input", f"{FIT_DIR}/input", "--output-dir", f"{FIT_DIR}/out"),
            *saved.entry.worker_args(),
            *(["--state", STATE_PATH] if fit.state is not None else []),
        ]
        name = f"modelbus-fit-{fit.job_id}"
        await anyio.to_thread.run_sync(self.engine.remove, name)  # an earlier attempt's, if left
        container_id, pid = await self.runtime.run_once(
            saved.id,
            name=name,
            model=(fit.name, fit.new_version),
            entrypoint=command,
            command=args,
            volumes=volumes,
            memory_bytes=limits.memory_bytes,
            labels={JOB_LABEL: fit.job_id},
        )
        logger.info("fit job %s runs in container %s", fit.job_id, container_id[:12])
        if pid:
            on_start(pid)
        try:
            exited = await self._wait(container_id, run, limits.timeout_s)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await self._copy_log(container_id, run)
                await anyio.to_thread.run_sync(self.engine.remove, container_id)
        if exited is None:
            raise FitFailed("fit_timeout", f"the fit ran past its {limits.timeout_s:g} s limit")
        try:
            return await anyio.to_thread.run_sync(_result, output, *exited, limits)
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(output, ignore_errors=True))

    async def _wait(
        self, container_id: str, run: FitRun, timeout_s: float
    ) -> tuple[int, bool] | None:
        """The exit (code, OOM-killed), or None past ``timeout_s``; copies the log meanwhile."""
        with anyio.move_on_after(timeout_s):
            async with anyio.create_task_group() as group:
                group.start_soon(self._follow_log, container_id, run)
                with contextlib.suppress(NotFound):  # removed meanwhile: exit_state says so
                    await anyio.to_thread.run_sync(
                        self.engine.wait, container_id, abandon_on_cancel=True
                    )
                group.cancel_scope.cancel()
            try:
                return await anyio.to_thread.run_sync(self.engine.exit_state, container_id)
            except NotFound:
                return (-1, False)
        return None

    async def _follow_log(self, container_id: str, run: FitRun) -> None:
        while True:
            await anyio.sleep(_LOG_S)
            await self._copy_log(container_id, run)

    async def _copy_log(self, container_id: str, run: FitRun) -> None:
        try:
            text = await anyio.to_thread.run_sync(
                lambda: self.engine.logs(container_id, tail=_LOG_LINES)
            )
        except BusError as error:
            logger.warning("cannot read the fit container's log: %s", error.message)
            return
        await anyio.to_thread.run_sync(run.log.write_text, text)


def _volumes(run: FitRun, output: Path, state: Path | None) -> dict[Path, tuple[str, str]]:
    """Bind the input (and the parent's state) read-only, an empty output directory writable by
    the container's user: as root, owned by it; otherwise (a rootless engine maps it to a
    subordinate id) writable by all, not listable."""
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(output, NOBODY, NOBODY)
    else:
        os.chmod(output, 0o733)
    os.chmod(run.input, 0o644)
    volumes = {run.input: (f"{FIT_DIR}/input", "ro"), output: (f"{FIT_DIR}/out", "rw")}
    if state is not None:
        os.chmod(state, 0o644)  # stored or cached 0600 under serve's umask; user 65534 reads it
        volumes[state] = (STATE_PATH, "ro")
    return volumes


def _result(output: Path, code: int, oom_killed: bool, limits: FitLimits) -> bytes:
    mib = limits.memory_bytes // (1024 * 1024)
    if oom_killed:
        raise FitFailed("fit_killed", f"the fit was killed: over its memory limit of {mib} MiB")
    if code == 0:
        state = _read_regular(output / "state", MAX_STATE_BYTES)
        if state is None:
            raise FitFailed(
                "fit_crashed",
                "the fit exited 0 without writing its state (a regular file of at most "
                f"{MAX_STATE_BYTES} bytes at {FIT_DIR}/out/state)",
            )
        return state
    error = _error(output / "error.json")
    if error is not None:
        raise FitFailed(*error)
    if code == 128 + signal.SIGKILL:  # engines under cgroup v2 do not always say OOMKilled
        raise FitFailed(
            "fit_killed",
            f"the fit was killed by SIGKILL: most likely past its memory limit of {mib} MiB",
        )
    if 128 < code < 128 + 65:
        raise FitFailed("fit_killed", f"the fit was killed by signal {code - 128}")
    raise FitFailed("fit_crashed", f"the fit's container exited with status {code} and no result")


def _error(path: Path) -> tuple[str, str] | None:
    raw = _read_regular(path, _MAX_ERROR_BYTES)
    try:
        body: Any = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(code := body.get("code"), str):
        return None
    if not 0 < len(code) <= 64:
        return None
    return code, str(body.get("message", ""))[:2_000]


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is a regular file (not followed if a link) of at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with contextlib.closing(os.fdopen(fd, "rb")) as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = file.read(limit + 1)
    return data if len(data) <= limit else None
