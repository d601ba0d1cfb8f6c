"""Runtimes start and stop the workers that serve a model version's replicas.

A runtime knows nothing of batches or predictions: it starts a worker from a :class:`ReplicaSpec`
(the worker then connects back to the backend by itself, see :mod:`proxy.backend.worker`), tells
when it
exits, stops it and shows its log. :class:`ProcessRuntime` runs ``python -m proxy.backend.worker``
as a child process, in a bubblewrap sandbox (:mod:`proxy.backend.sandbox`);
:class:`~proxy.backend.docker.DockerRuntime` (an :class:`ImageRuntime`) runs it in a container of
the version's image. :class:`RuntimeByKind` hands each replica to the right one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import anyio
import anyio.abc

from bus.errors import InternalError
from proxy.backend.channel import TOKEN_ENV
from proxy.backend.sandbox import (
    SANDBOX_ARTIFACT,
    SANDBOX_CHANNEL_DIR,
    Sandbox,
    SandboxLimits,
)

__all__ = [
    "ImageRuntime",
    "ProcessRuntime",
    "ReplicaHandle",
    "ReplicaSpec",
    "Runtime",
    "RuntimeByKind",
]

logger = logging.getLogger(__name__)

_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")
_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Everything a runtime needs to start one replica's worker."""

    name: str
    version: str
    replica: int
    artifact: Path
    backend_url: str
    token: str  # per start, secret: the worker proves with it which replica it is
    batch_size: int
    heartbeat_s: float
    image: str | None = None  # an image version's image (``artifact`` is then its tarball)
    channel_socket: Path | None = None  # the backend's unix socket (``ipc://``), if it has one

    @property
    def label(self) -> str:
        return f"replica {self.replica} of {self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class ReplicaHandle:
    """A started worker. ``ref`` is the runtime's own id for it (a pid, a container id)."""

    spec: ReplicaSpec
    ref: str
    pid: int | None


@runtime_checkable
class Runtime(Protocol):
    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start a worker; return once it is launched (not once it is ready)."""
        ...

    async def wait(self, handle: ReplicaHandle) -> int:
        """Wait for the worker to exit and return its exit status (negative: killed by signal)."""
        ...

    def is_alive(self, handle: ReplicaHandle) -> bool: ...

    async def stop(self, handle: ReplicaHandle, *, grace_s: float = 5.0) -> None:
        """Ask the worker to exit, force it after ``grace_s``; return once it is gone."""
        ...

    async def logs(self, handle: ReplicaHandle, *, tail: int = 200) -> str:
        """The last ``tail`` lines the worker wrote, across its restarts where possible."""
        ...


@runtime_checkable
class ImageRuntime(Runtime, Protocol):
    """A runtime for versions shipped as container images (``docker save`` tarballs)."""

    async def load(self, tarball: Path, image: str) -> str:
        """Check the tarball holds a runnable ``image`` and load it; return the image id.

        Raises DecodeError or InvalidRequest for a tarball or image that cannot run."""
        ...

    async def prepare(
        self, name: str, version: str, tarball: Path, image: str, *, state: Path | None = None
    ) -> None:
        """Make ``image`` (loaded from ``tarball`` if the engine lacks it) the version's image;
        ``state``: a fitted version's state file, handed to its replicas."""
        ...

    async def release(self, name: str, version: str, *, remove_image: bool) -> None:
        """The version's replicas are gone: remove what is left of its containers, and its image
        too if ``remove_image`` and no other version uses it."""
        ...


class RuntimeByKind:
    """Closures to the process runtime, images to the image runtime (by ``spec.image``)."""

    def __init__(self, process: Runtime, image: ImageRuntime | None) -> None:
        self.process = process
        self.image = image

    def _for(self, spec: ReplicaSpec) -> Runtime:
        if spec.image is None:
            return self.process
        if self.image is None:
            raise InternalError(f"{spec.label} is an image but this service has no image runtime")
        return self.image

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        return await self._for(spec).start(spec)

    async def wait(self, handle: ReplicaHandle) -> int:
        return await self._for(handle.spec).wait(handle)

    def is_alive(self, handle: ReplicaHandle) -> bool:
        return self._for(handle.spec).is_alive(handle)

    async def stop(self, handle: ReplicaHandle, *, grace_s: float = 5.0) -> None:
        await self._for(handle.spec).stop(handle, grace_s=grace_s)

    async def logs(self, handle: ReplicaHandle, *, tail: int = 200) -> str:
        return await self._for(handle.spec).logs(handle, tail=tail)


class ProcessRuntime:
    """Workers as child processes: ``sys.executable -m proxy.backend.worker``, each in its own
    session.

    Each worker runs in a bubblewrap sandbox (:class:`~proxy.backend.sandbox.Sandbox`, detected on
    the first start unless given; SandboxUnavailable where there is none) and reaches the backend
    through its unix socket (``spec.channel_socket``). Only with ``unsafe_no_sandbox`` does a
    worker run unconfined where bubblewrap is missing — as the service's user, able to read
    everything the service can — with a warning per start.
    A sandboxed replica's ``pid`` is bubblewrap's: it leads the process group of the sandbox
    (the worker's own pid is 2 in its PID namespace), and the sandbox dies with it.

    Output goes to ``<data_dir>/logs/<name>-<version>-<hash>-r<N>.log`` (appended across
    restarts, rotated once past ``max_log_bytes``) — never to a pipe nobody reads. The worker gets
    a small environment (the sandbox's, or ``PATH``, ``HOME``, locale and the like) plus ``env``,
    not the service's.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        max_log_bytes: int = 8 * 1024 * 1024,
        sandbox: Sandbox | None = None,
        sandbox_limits: SandboxLimits | None = None,
        unsafe_no_sandbox: bool = False,
    ) -> None:
        self.log_dir = Path(data_dir) / "logs"
        self._sandbox = sandbox
        self._sandbox_limits = sandbox_limits
        self._unsafe = unsafe_no_sandbox
        self._python = python
        self._env = dict(env or {})
        self._max_log_bytes = max_log_bytes
        self._children: dict[str, anyio.abc.Process | int] = {}
        self._serial = itertools.count()

    def log_path(self, spec: ReplicaSpec) -> Path:
        digest = sha256(f"{spec.name}\0{spec.version}".encode()).hexdigest()[:8]
        stem = f"{_safe(spec.name)}-{_safe(spec.version)}-{digest}-r{spec.replica}"
        return self.log_dir / f"{stem}.log"

    async def sandbox(self) -> Sandbox | None:
        """The sandbox workers run in (detected once); None only when unsafe_no_sandbox lets
        them run without one. Raises SandboxUnavailable."""
        if self._sandbox is None:
            try:
                self._sandbox = await anyio.to_thread.run_sync(Sandbox.detect, self._sandbox_limits)
            except InternalError:
                if not self._unsafe:
                    raise
        return self._sandbox

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        sandbox = await self.sandbox()
        log = await anyio.to_thread.run_sync(self._open_log, spec)
        artifact_fd: int | None = None
        try:
            if sandbox is None:
                logger.warning(
                    "UNSAFE: %s runs without a sandbox (--unsafe-no-sandbox)", spec.label
                )
                command, env, cwd = self._command(spec), self._environment(spec), self.log_dir
            else:
                artifact_fd = os.open(spec.artifact, os.O_RDONLY | os.O_CLOEXEC)
                command = self._sandboxed(sandbox, spec, artifact_fd)
                env = sandbox.environment(TOKEN_ENV, spec.token, self._env)
                cwd = Path("/")
            process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the service, not workers
                pass_fds=() if artifact_fd is None else (artifact_fd,),
            )
        except OSError as exc:
            raise InternalError(f"cannot start {spec.label}: {exc}", replica=spec.replica) from exc
        finally:
            log.close()
            if artifact_fd is not None:
                os.close(artifact_fd)
        ref = f"{process.pid}.{next(self._serial)}"
        self._children[ref] = process
        logger.info("started %s as pid %d", spec.label, process.pid)
        return ReplicaHandle(spec=spec, ref=ref, pid=process.pid)

    async def wait(self, handle: ReplicaHandle) -> int:
        child = self._children.get(handle.ref)
        if child is None:
            raise InternalError(f"{handle.spec.label} was not started by this runtime")
        if isinstance(child, int):
            return child
        code = await child.wait()
        with anyio.CancelScope(shield=True):
            await child.aclose()
        self._children[handle.ref] = code
        return code

    def is_alive(self, handle: ReplicaHandle) -> bool:
        child = self._children.get(handle.ref)
        return child is not None and not isinstance(child, int) and child.returncode is None

    async def stop(self, handle: ReplicaHandle, *, grace_s: float = 5.0) -> None:
        child = self._children.get(handle.ref)
        if child is None or isinstance(child, int):
            return
        with anyio.CancelScope(shield=True):
            if child.returncode is None:
                _signal_group(child, signal.SIGTERM)
                with anyio.move_on_after(grace_s):
                    await self.wait(handle)
                    return
                logger.warning(
                    "%s ignored SIGTERM for %.1f s; killing it", handle.spec.label, grace_s
                )
                _signal_group(child, signal.SIGKILL)
            with anyio.move_on_after(max(grace_s, 1.0)):
                await self.wait(handle)
                return
            logger.error("%s (pid %d) survived SIGKILL", handle.spec.label, child.pid)

    async def logs(self, handle: ReplicaHandle, *, tail: int = 200) -> str:
        return await anyio.to_thread.run_sync(_tail, self.log_path(handle.spec), tail)

    def _sandboxed(self, sandbox: Sandbox, spec: ReplicaSpec, artifact_fd: int) -> list[str]:
        """The sandbox's command line: the worker reaches the backend over its unix socket."""
        if spec.channel_socket is None:
            raise InternalError(f"{spec.label}: the backend has no unix socket for a sandbox")
        channel_dir = spec.channel_socket.parent
        sandbox.admit(channel_dir)
        url = f"ipc://{SANDBOX_CHANNEL_DIR / spec.channel_socket.name}"
        worker = self._command(spec, backend_url=url, artifact=str(SANDBOX_ARTIFACT))
        return sandbox.command(worker, channel_dir=channel_dir, artifact_fd=artifact_fd)

    def _command(
        self, spec: ReplicaSpec, *, backend_url: str | None = None, artifact: str | None = None
    ) -> list[str]:
        return [
            self._python,
            "-m",
            "proxy.backend.worker",
            "--backend",
            backend_url or spec.backend_url,
            "--name",
            spec.name,
            "--version",
            spec.version,
            "--replica",
            str(spec.replica),
            "--artifact",
            artifact or str(spec.artifact.resolve()),
            "--batch-size",
            str(spec.batch_size),
            "--heartbeat-s",
            str(spec.heartbeat_s),
        ]

    def _environment(self, spec: ReplicaSpec) -> dict[str, str]:
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        env.update(self._env)
        # The worker imports proxy.backend.worker from wherever this service's packages are.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env[TOKEN_ENV] = spec.token
        return env

    def _open_log(self, spec: ReplicaSpec) -> IO[Any]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_path(spec)
        if path.exists() and path.stat().st_size > self._max_log_bytes:
            path.replace(path.with_suffix(".log.1"))
        log = path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {stamp} starting {spec.label}\n".encode())
        log.flush()
        return log


def _signal_group(process: anyio.abc.Process, signum: signal.Signals) -> None:
    """Signal the worker's whole session (it leads it), so processes it forked go too."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return
    except PermissionError:
        process.send_signal(signum)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - _TAIL_BYTES))
            data = log.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:60]
