"""The docker runtime: replicas as containers of a model image, on any Docker-API engine.

It drives the engine through :class:`~proxy.backend.docker_engine.DockerEngine` (the only
importer of docker-py), on worker threads: docker-py blocks.

Images: :meth:`DockerRuntime.load` checks the tarball first (:mod:`proxy.backend.images`: it holds
the image, which says where its model is) and loads it, streamed from the file, only if the engine
lacks the image's id — an untagged copy holding only that image
(:mod:`proxy.backend.image_tarball`), so
a tarball never re-points a tag. ``prepare`` (before a version starts; again after a restart of
the service, or of a version stopped earlier: its tarball is kept) loads it the same way and tags
it ``modelbus/<name>:<version>`` (its only tag). A version runs its image by id. A fitted
version (``prepare(..., state=PATH)``) runs its parent's image with the state file mounted
read-only at :data:`~proxy.backend.images.STATE_PATH` and ``--state`` after the worker's arguments.

Containers are confined at least as ``container.run``'s are: no network (``network_mode=none``;
the worker reaches the backend through its unix socket, the channel directory mounted read-only
at ``/run/modelbus``, over ZeroMQ ``ipc://``), every capability dropped, ``no-new-privileges``,
user ``65534:65534``, a read-only root filesystem with a size-capped tmpfs ``/tmp``, and memory,
pids and CPU limits (:class:`~proxy.backend.sandbox.SandboxLimits`). They run with
an init process (so ``stop`` reaches the worker), the start token in ``MODELBUS_REPLICA_TOKEN``,
labels ``modelbus.model``, ``modelbus.version``, ``modelbus.replica`` and ``modelbus.owner`` (this
service's data directory, hashed), and the name ``modelbus-<name>-<version>-r<i>-<token hash>``.
A container that exits has its log appended to ``<data_dir>/logs/`` and is removed; ``stop`` is
docker's stop (SIGTERM, SIGKILL after the grace), then remove. The first ``prepare`` removes
containers an earlier run of this service left behind.

Garbage collection: when a version is stopped (``release(remove_image=True)``) its containers go,
and its image too unless another started version — or any container at all — still uses it.
When the service stops, containers go but images stay, for its next start.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio

from bus.errors import (
    BusError,
    InternalError,
    NotFound,
)
from proxy.backend.channel import TOKEN_ENV
from proxy.backend.docker_engine import (
    MODEL_LABEL,
    OWNER_LABEL,
    REPLICA_LABEL,
    VERSION_LABEL,
    DockerEngine,
)
from proxy.backend.image_tarball import untagged_copy
from proxy.backend.images import (
    STATE_PATH,
    WORKER_COMMAND,
    Entry,
    SavedImage,
    check_saved_image,
)
from proxy.backend.runtime import ReplicaHandle, ReplicaSpec, _safe, _tail
from proxy.backend.sandbox import NOBODY, SANDBOX_CHANNEL_DIR, SandboxLimits, admit_channel

__all__ = ["DockerRuntime"]

logger = logging.getLogger(__name__)

_LOG_LINES_KEPT = 2_000  # of an exited container, appended to its replica's log file

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Prepared:
    image_id: str
    entry: Entry
    has_entrypoint: bool
    tag: str
    state: Path | None


class DockerRuntime:
    """Replicas of image versions as containers; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        data_dir: Path,
        *,
        engine: DockerEngine | None = None,
        limits: SandboxLimits | None = None,
    ) -> None:
        self.engine = engine or DockerEngine(base_url)
        self.limits = limits or SandboxLimits()
        self.log_dir = Path(data_dir) / "logs"
        self.owner = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        self._prepared: dict[tuple[str, str], _Prepared] = {}
        self._alive: set[str] = set()
        self._exit_codes: dict[str, int] = {}
        self._retired: dict[str, anyio.Event] = {}
        self._latest: dict[tuple[str, str, int], str] = {}  # each replica's latest container
        self._swept = False
        self._calls = anyio.CapacityLimiter(8)  # quick calls
        self._slow = anyio.CapacityLimiter(1_000)  # waits (one per container), stops, loads

    # --- images -----------------------------------------------------------------------------------

    async def load(self, tarball: Path, image: str) -> str:
        return (await self._load(tarball, image)).id

    async def prepare(
        self, name: str, version: str, tarball: Path, image: str, *, state: Path | None = None
    ) -> None:
        await self._sweep()
        saved = await self._load(tarball, image)
        tag = f"modelbus/{_repository(name)}:{_safe(version)}"
        await self._call(self.engine.tag, saved.id, tag)
        self._prepared[(name, version)] = _Prepared(
            saved.id, saved.entry, saved.has_entrypoint, tag, state
        )
        logger.info("%s:%s runs image %s (%s)", name, version, image, saved.id[:19])

    async def saved_image(self, tarball: Path, image: str) -> SavedImage:
        """The tarball's image, loaded into the engine unless it has it (for a one-shot
        container of it: a fit, :mod:`proxy.fitting.images`)."""
        await self._sweep()
        return await self._load(tarball, image)

    async def run_once(
        self,
        image_id: str,
        *,
        name: str,
        model: tuple[str, str],
        entrypoint: list[str],
        command: list[str],
        volumes: dict[Path, tuple[str, str]],
        memory_bytes: int,
        labels: dict[str, str],
    ) -> tuple[str, int | None]:
        """Start a one-shot container of a loaded image (a fit), confined as replicas are but
        with its own memory limit, labelled with ``model`` (name, version), this service and
        ``labels``; its id and main pid. The caller waits for it and removes it."""
        return await self._call(
            self.engine.run,
            image_id,
            name=name,
            command=command,
            entrypoint=entrypoint,
            environment={"PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
            labels={MODEL_LABEL: model[0], VERSION_LABEL: model[1], OWNER_LABEL: self.owner}
            | labels,
            volumes=volumes,
            limits=self.limits.model_copy(update={"memory_bytes": memory_bytes}),
        )

    async def release(self, name: str, version: str, *, remove_image: bool) -> None:
        labels = [f"{MODEL_LABEL}={name}", f"{VERSION_LABEL}={version}", self._owner_label]
        for container_id in await self._call(self.engine.containers, label=labels):
            await self._call(self.engine.remove, container_id)
        for replica in [key for key in self._latest if key[:2] == (name, version)]:
            container_id = self._latest.pop(replica)
            self._retired.pop(container_id, None)
            self._exit_codes.pop(container_id, None)
        prepared = self._prepared.pop((name, version), None)
        if prepared is None or not remove_image:
            return
        if any(other.image_id == prepared.image_id for other in self._prepared.values()):
            await self._call(self.engine.remove_image, prepared.tag)  # untag only
            return
        users = await self._call(self.engine.containers, ancestor=prepared.image_id)
        if users:
            logger.info("keeping image %s: %d containers use it", prepared.image_id, len(users))
            return
        await self._call(self.engine.remove_image, prepared.image_id, force=True)
        logger.info("removed image %s of %s:%s", prepared.image_id[:19], name, version)

    async def _load(self, tarball: Path, image: str) -> SavedImage:
        saved = await anyio.to_thread.run_sync(check_saved_image, tarball, image)
        if not await self._call(self.engine.has_image, saved.id):
            started = time.monotonic()
            await anyio.to_thread.run_sync(self._load_untagged, tarball, limiter=self._slow)
            logger.info("loaded %s in %.1f s", image, time.monotonic() - started)
            if not await self._call(self.engine.has_image, saved.id):
                raise InternalError(
                    f"the engine loaded {image} but shows no image {saved.id}", image=image
                )
        return saved

    def _load_untagged(self, tarball: Path) -> None:
        """Load the tarball's one image without any tag (proxy.backend.image_tarball): a tarball
        cannot re-point a tag on the engine."""
        copy = tarball.with_name(f".{tarball.name}.{uuid.uuid4().hex[:8]}.load.tar")
        try:
            untagged_copy(tarball, copy)
            self.engine.load(copy)
        finally:
            copy.unlink(missing_ok=True)

    # --- replicas (the Runtime protocol) ----------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        prepared = self._prepared.get((spec.name, spec.version))
        if prepared is None:
            raise InternalError(f"{spec.label}: its image was not prepared", replica=spec.replica)
        if spec.channel_socket is None:
            raise InternalError(f"{spec.label}: the backend has no unix socket for a container")
        channel_dir = spec.channel_socket.parent
        await anyio.to_thread.run_sync(admit_channel, channel_dir, NOBODY)
        backend = f"ipc://{SANDBOX_CHANNEL_DIR / spec.channel_socket.name}"
        command = [
            *("--backend", backend, "--name", spec.name, "--version", spec.version),
            *("--replica", str(spec.replica), "--batch-size", str(spec.batch_size)),
            *("--heartbeat-s", str(spec.heartbeat_s), *prepared.entry.worker_args()),
        ]
        volumes = {channel_dir: (str(SANDBOX_CHANNEL_DIR), "ro")}
        if prepared.state is not None:  # a fitted version: its state, read-only
            volumes[prepared.state] = (STATE_PATH, "ro")
            command += ["--state", STATE_PATH]
        container_id, pid = await self._call(
            self.engine.run,
            prepared.image_id,
            name=_container_name(spec),
            command=command,
            entrypoint=None if prepared.has_entrypoint else list(WORKER_COMMAND),
            environment={TOKEN_ENV: spec.token, "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
            labels={
                MODEL_LABEL: spec.name,
                VERSION_LABEL: spec.version,
                REPLICA_LABEL: str(spec.replica),
                OWNER_LABEL: self.owner,
            },
            volumes=volumes,
            limits=self.limits,
        )
        self._alive.add(container_id)
        self._forget_previous((spec.name, spec.version, spec.replica), container_id)
        logger.info("started %s as container %s", spec.label, container_id[:12])
        return ReplicaHandle(spec=spec, ref=container_id, pid=pid)

    async def wait(self, handle: ReplicaHandle) -> int:
        if handle.ref in self._alive:
            try:
                code = await anyio.to_thread.run_sync(
                    self.engine.wait, handle.ref, limiter=self._slow, abandon_on_cancel=True
                )
            except NotFound:
                code = -1
            except BusError as error:  # the engine went away: make sure the worker goes too
                logger.error("lost track of %s: %s", handle.spec.label, error.message)
                await self.stop(handle, grace_s=0)
                code = -1
            self._alive.discard(handle.ref)
            self._exit_codes[handle.ref] = _exit_status(code)
            with anyio.CancelScope(shield=True):
                await self._retire(handle)
        return self._exit_codes.get(handle.ref, -1)

    def is_alive(self, handle: ReplicaHandle) -> bool:
        return handle.ref in self._alive

    async def stop(self, handle: ReplicaHandle, *, grace_s: float = 5.0) -> None:
        with anyio.CancelScope(shield=True):
            if handle.ref in self._alive:
                try:
                    await anyio.to_thread.run_sync(
                        functools.partial(self.engine.stop, handle.ref, grace_s=grace_s),
                        limiter=self._slow,
                    )
                except BusError as error:
                    logger.error("could not stop %s: %s", handle.spec.label, error.message)
                self._alive.discard(handle.ref)
            await self._retire(handle)

    async def logs(self, handle: ReplicaHandle, *, tail: int = 200) -> str:
        earlier = await anyio.to_thread.run_sync(_tail, self.log_path(handle.spec), tail)
        if handle.ref not in self._alive:
            return earlier
        current = await self._call(self.engine.logs, handle.ref, tail=tail)
        lines = [*earlier.splitlines(), *current.splitlines()]
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def log_path(self, spec: ReplicaSpec) -> Path:
        digest = hashlib.sha256(f"{spec.name}\0{spec.version}".encode()).hexdigest()[:8]
        stem = f"{_safe(spec.name)}-{_safe(spec.version)}-{digest}-r{spec.replica}"
        return self.log_dir / f"{stem}.log"

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def _owner_label(self) -> str:
        return f"{OWNER_LABEL}={self.owner}"

    async def _retire(self, handle: ReplicaHandle) -> None:
        """Keep an exited container's log, then remove it (once, whoever asks first)."""
        retired = self._retired.get(handle.ref)
        if retired is not None:
            await retired.wait()
            return
        retired = self._retired[handle.ref] = anyio.Event()
        try:
            text = await self._call(self.engine.logs, handle.ref, tail=_LOG_LINES_KEPT)
            await anyio.to_thread.run_sync(self._append_log, handle.spec, text)
            await self._call(self.engine.remove, handle.ref)
        except BusError as error:
            logger.warning(
                "could not remove the container of %s: %s", handle.spec.label, error.message
            )
        finally:
            retired.set()

    def _append_log(self, spec: ReplicaSpec, text: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log_path(spec).open("a", encoding="utf-8") as log:
            log.write(f"--- {stamp} {spec.label} exited; its container's log:\n{text}")
            if text and not text.endswith("\n"):
                log.write("\n")

    def _forget_previous(self, replica: tuple[str, str, int], container_id: str) -> None:
        """A replica's new container: forget its previous one, if that one is done with."""
        previous = self._latest.get(replica)
        self._latest[replica] = container_id
        retired = self._retired.get(previous or "")
        if previous is not None and previous not in self._alive and retired and retired.is_set():
            del self._retired[previous]
            self._exit_codes.pop(previous, None)

    async def _sweep(self) -> None:
        """Once: remove containers an earlier run of this service left (same owner label)."""
        if self._swept:
            return
        self._swept = True
        for container_id in await self._call(self.engine.containers, label=[self._owner_label]):
            logger.info("removing container %s left by an earlier run", container_id[:12])
            await self._call(self.engine.remove, container_id)

    async def _call(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await anyio.to_thread.run_sync(
            functools.partial(func, *args, **kwargs), limiter=self._calls
        )


def _exit_status(code: int) -> int:
    """Docker's 128+N for a container killed by signal N, as a negative status like Popen's."""
    return -(code - 128) if 128 < code < 128 + 65 else code


def _repository(name: str) -> str:
    """A model name as an image repository component (lowercase, no spaces)."""
    return _safe(name).lower().strip("._-") or "model"


def _container_name(spec: ReplicaSpec) -> str:
    """``modelbus-<name>-<version>-r<i>-<hash of the token>``: unique per start, not the secret."""
    token = hashlib.sha256(spec.token.encode()).hexdigest()[:8]
    return f"modelbus-{_safe(spec.name)}-{_safe(spec.version)}-r{spec.replica}-{token}"
