"""Runs one fit in a one-shot worker process (:mod:`proxy.fitting.worker`), never in the proxy.

The worker runs in the same bubblewrap sandbox as replica workers
(:class:`proxy.backend.sandbox.Sandbox`, with the fit's own limits: ``memory_bytes`` its address
space and ``cpu_s`` its CPU time), sees only a copy of the parent version's archive at
:data:`~proxy.backend.sandbox.SANDBOX_ARTIFACT`, reads its job from a file on stdin and writes
its result to a file on stdout; its stderr is the job's log. The service also bounds its wall
time (``timeout_s``): past it the sandbox's whole process group is killed. Every way a fit can
end but success is a :class:`FitFailed` with a code and a readable message:

- ``not_fittable``, ``bad_data``, ``fit_error``: the worker said so (see its module);
- ``fit_timeout``: past ``timeout_s`` (or past its CPU limit: killed by SIGXCPU/SIGKILL);
- ``fit_killed``: the worker died of a signal (SIGKILL from anyone, the memory limit);
- ``fit_crashed``: it exited without a readable result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from bus.artifact import MAX_ARCHIVE_BYTES
from bus.codec import unpack
from bus.errors import BusError, InternalError
from proxy.backend.sandbox import SANDBOX_ARTIFACT, Sandbox, SandboxLimits
from proxy.fitting.protocol import PROGRESS_PREFIX

__all__ = ["MAX_OUTPUT_BYTES", "FitFailed", "FitLimits", "FitRun", "last_progress", "run_fit"]

logger = logging.getLogger(__name__)

_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV")
_KILL_WAIT_S = 5.0
MAX_OUTPUT_BYTES = MAX_ARCHIVE_BYTES + 1024 * 1024
"""The most a fit worker may write (its result file, its log): RLIMIT_FSIZE in the sandbox."""


class FitFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class FitLimits:
    timeout_s: float = 600.0
    memory_bytes: int = 2048 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FitRun:
    """Where one run of a job keeps its files."""

    directory: Path

    @property
    def input(self) -> Path:
        return self.directory / "input.msgpack"

    @property
    def output(self) -> Path:
        return self.directory / "output.msgpack"

    @property
    def log(self) -> Path:
        return self.directory / "fit.log"


async def run_fit(
    run: FitRun,
    artifact: Path,
    *,
    sandbox: Sandbox | None,
    limits: FitLimits,
    on_start: Callable[[int], None] = lambda pid: None,
) -> bytes:
    """Run the worker on ``run.input``; the new archive's bytes, or FitFailed."""
    command, env, artifact_fd = _command(artifact, sandbox, limits)
    try:
        with (
            run.input.open("rb") as stdin,
            run.output.open("wb") as stdout,
            run.log.open("ab") as log,
        ):
            process = await anyio.open_process(
                command,
                stdin=stdin,
                stdout=stdout,
                stderr=log,
                env=env,
                cwd="/" if sandbox is not None else str(run.directory),
                start_new_session=True,
                pass_fds=() if artifact_fd is None else (artifact_fd,),
            )
    except OSError as exc:
        raise InternalError(f"cannot start the fit worker: {exc}") from exc
    finally:
        if artifact_fd is not None:
            os.close(artifact_fd)
    on_start(process.pid)
    code: int | None = None
    try:
        with anyio.move_on_after(limits.timeout_s):
            code = await process.wait()
    finally:
        if code is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_KILL_WAIT_S):
                _kill_group(process.pid)
                await process.wait()
        with anyio.CancelScope(shield=True):
            await process.aclose()
    if code is None:
        raise FitFailed("fit_timeout", f"the fit ran past its {limits.timeout_s:g} s limit")
    return await anyio.to_thread.run_sync(_result, run, code)


def _command(
    artifact: Path, sandbox: Sandbox | None, limits: FitLimits
) -> tuple[list[str], dict[str, str], int | None]:
    if sandbox is None:
        logger.warning("UNSAFE: a fit runs without a sandbox (--unsafe-no-sandbox)")
        root = str(Path(__file__).resolve().parents[2])
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        worker = [sys.executable, "-m", "proxy.fitting.worker", "--artifact", str(artifact)]
        return worker, env, None
    fit_limits = SandboxLimits(
        memory_bytes=limits.memory_bytes,
        cpu_s=max(1, int(limits.timeout_s) + 1),
        processes=sandbox.limits.processes,
        file_bytes=max(sandbox.limits.file_bytes, MAX_OUTPUT_BYTES),
        tmp_bytes=sandbox.limits.tmp_bytes,
    )
    confined = replace(sandbox, limits=fit_limits)
    fd = os.open(artifact, os.O_RDONLY | os.O_CLOEXEC)
    worker = [sys.executable, "-m", "proxy.fitting.worker", "--artifact", str(SANDBOX_ARTIFACT)]
    command = confined.command(worker, channel_dir=None, artifact_fd=fd)
    env = confined.environment("MODELBUS_FIT", "1", {})
    return command, env, fd


def _result(run: FitRun, code: int) -> bytes:
    try:
        if run.output.stat().st_size > MAX_OUTPUT_BYTES:
            _raise("fit_crashed", f"the fit's result is over {MAX_OUTPUT_BYTES} bytes")
        body = unpack(run.output.read_bytes(), max_bytes=MAX_OUTPUT_BYTES)
    except (OSError, BusError):
        body = None
    if code == 0 and isinstance(body, dict) and isinstance(body.get("archive"), bytes):
        return bytes(body["archive"])
    if isinstance(body, dict) and isinstance(error := body.get("error"), dict):
        return _raise(str(error.get("code", "fit_error")), str(error.get("message", "")))
    if code < 0 or code > 128:
        signum = -code if code < 0 else code - 128
        name = _signal_name(signum)
        if signum == signal.SIGXCPU:
            _raise("fit_timeout", f"the fit used up its CPU time limit ({name})")
        _raise("fit_killed", f"the fit worker was killed by {name}")
    tail = last_lines(run.log, 5)
    _raise("fit_crashed", f"the fit worker exited with status {code} and no result: {tail}")
    raise AssertionError("unreachable")


def _raise(code: str, message: str) -> bytes:
    raise FitFailed(code, message)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def last_lines(path: Path, count: int) -> str:
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - 16_384))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-count:])


def last_progress(path: Path) -> str | None:
    """The last progress line the worker wrote to its log, if any."""
    for line in reversed(last_lines(path, 200).splitlines()):
        if line.startswith(PROGRESS_PREFIX):
            return line[len(PROGRESS_PREFIX) :]
    return None
