"""The embedded model backend: model versions served by replicas in worker processes.

Each started model version has replicas; each replica is a worker started by a
:class:`~proxy.backend.runtime.Runtime` that connects back to this backend's ROUTER socket and
speaks the replica protocol (:mod:`proxy.backend.worker`). ``predict`` queues its inputs
(:mod:`proxy.backend.batching`); an idle ready replica is sent a batch of whatever is queued right
then — the one given work least recently goes first. :mod:`proxy.backend.supervisor` restarts
workers that exit.

Failures: the batch of a worker that died is retried once, and inputs whose batch has crashed two
workers fail with :class:`~bus.errors.InternalError`; a model function that raises fails only the
predictions in that batch; a worker that cannot load its model reports why, is not restarted, and
its version's predictions fail with that reason; a ready worker silent for ``silence_limit_s`` is
killed and restarted.

A version started with ``remote=V2Endpoint(...)`` has no replicas: it is served by an Open
Inference Protocol server (:mod:`proxy.backend.remote_v2`), and each method below hands it on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from bus.artifact import check_compatible, read_manifest
from bus.codec import pack
from bus.errors import (
    BusError,
    Conflict,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    RequestTimeout,
)
from proxy.backend.batching import BatchQueue
from proxy.backend.channel import RouterChannel
from proxy.backend.images import check_saved_image
from proxy.backend.remote_v2 import RemoteV2Versions, V2Endpoint
from proxy.backend.replica_link import Dispatcher, ServedVersion
from proxy.backend.runtime import ImageRuntime, ProcessRuntime, ReplicaSpec, Runtime, RuntimeByKind
from proxy.backend.supervisor import Replica, ReplicaState, ReplicaStatus, Supervisor

__all__ = ["BackendSettings", "EmbeddedBackend", "ReplicaState", "ReplicaStatus", "VersionStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    host: str = "127.0.0.1"  # where the ROUTER binds; workers in containers need it reachable
    queue_limit: int = 10_000  # queued inputs per version before predict raises Overloaded
    max_replicas: int = 64  # per version
    max_replicas_total: int = 64  # over every version of the service
    max_batch_size: int = 10_000
    max_input_bytes: int = 16 * 1024 * 1024  # one packed input
    max_batch_bytes: int = 32 * 1024 * 1024  # a batch stops growing past this
    heartbeat_s: float = 1.0
    silence_limit_s: float = 10.0
    stop_grace_s: float = 5.0  # a replica asked to shut down, before it is terminated
    kill_grace_s: float = 2.0  # terminated, before it is killed
    restart_min_s: float = 0.2
    restart_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class VersionStats:
    queued: int
    in_flight: int
    predictions: int  # inputs answered with an output
    errors: int  # inputs answered with an error
    retries: int  # batches retried after their worker died
    batch_sizes: dict[int, int]  # batch size → how many batches of that size were sent


class EmbeddedBackend:
    """Model versions served by replicas; an async context manager that owns them all.

    ``async with EmbeddedBackend(data_dir) as backend: ...`` binds the replica channel on a free
    port and runs the backend's loops; leaving the block stops every worker (bounded).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        runtime: Runtime | None = None,
        image_runtime: ImageRuntime | None = None,
        settings: BackendSettings | None = None,
    ) -> None:
        self.settings = s = settings or BackendSettings()
        self._image_runtime = image_runtime
        self._supervisor = Supervisor(
            RuntimeByKind(runtime or ProcessRuntime(Path(data_dir)), image_runtime),
            spec_for=self._spec_for,
            exited=self._exited,
            changed=self._changed,
            restart_min_s=s.restart_min_s,
            restart_max_s=s.restart_max_s,
            stop_grace_s=s.stop_grace_s,
            kill_grace_s=s.kill_grace_s,
        )
        self._versions: dict[tuple[str, str], ServedVersion] = {}
        self._images: dict[tuple[str, str], str] = {}  # image versions → their image
        self._dispatcher: Dispatcher | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._remote = RemoteV2Versions()

    async def __aenter__(self) -> Self:
        channel = RouterChannel(self.settings.host)
        self._dispatcher = Dispatcher(
            channel,
            self._versions,
            heartbeat_s=self.settings.heartbeat_s,
            silence_limit_s=self.settings.silence_limit_s,
            kill=self._kill,
            changed=self._changed,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._dispatcher.receive_loop)
        self._tg.start_soon(self._dispatcher.heartbeat_loop)
        await self._tg.start(self._remote.serve)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, dispatcher = self._running()
        try:
            bound = self.settings.stop_grace_s + self.settings.kill_grace_s + 5
            with anyio.move_on_after(bound, shield=True):
                async with anyio.create_task_group() as stopping:
                    for state in list(self._versions.values()):
                        stopping.start_soon(self._stop_version, state)
            tg.cancel_scope.cancel()  # supervisors still running stop their workers (shielded)
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            dispatcher.channel.close()

    @property
    def url(self) -> str:
        """Where workers connect: the ROUTER's ``tcp://host:port``."""
        return self._running()[1].channel.url

    # --- model versions ---------------------------------------------------------------------------

    async def start_version(
        self,
        name: str,
        version: str,
        artifact_path: str | Path,
        *,
        replicas: int = 1,
        batch_size: int = 64,
        image: str | None = None,
        remote: V2Endpoint | None = None,
        state_file: Path | None = None,
    ) -> None:
        """Check the archive can run here and start its replicas (returns before they are ready).
        With ``remote``, the version is served by that V2 server instead (no artifact). With
        ``image``, the artifact is a ``docker save`` tarball holding that image, run by the
        image runtime (the worker inside checks the closure it carries); ``state_file`` is a fitted
        image version's state file. Raises InvalidRequest (or DecodeError) for an archive this
        server cannot run, Conflict if the version is already started.
        """
        self._running()
        _check_name("model name", name)
        _check_name("model version", version)
        _check_count("replicas", replicas, 1, self.settings.max_replicas)
        self.check_replica_budget(name, version, replicas)
        _check_count("batch_size", batch_size, 1, self.settings.max_batch_size)
        self._refuse_started(name, version)
        if remote is not None:
            return self._remote.start(name, version, remote)
        artifact = Path(artifact_path).resolve()
        if image is None:
            manifest = await anyio.to_thread.run_sync(read_manifest, artifact)
            await anyio.to_thread.run_sync(check_compatible, manifest)
        else:
            await self._images_runtime().prepare(name, version, artifact, image, state=state_file)
        self._refuse_started(name, version)  # another start may have won while we checked
        if image is not None:
            self._images[(name, version)] = image
        queue = BatchQueue(
            f"{name}:{version}",
            batch_size=batch_size,
            limit=self.settings.queue_limit,
            max_batch_bytes=self.settings.max_batch_bytes,
        )
        state = self._versions[(name, version)] = ServedVersion(name, version, artifact, queue)
        for index in range(replicas):
            self._add_replica(state, index)
        logger.info("started %s: %d replicas, batch size %d", state.label, replicas, batch_size)

    async def stop_version(self, name: str, version: str) -> None:
        """Stop every replica (gracefully, then by force) and forget the version (and remove
        its image, if it has one no other version uses)."""
        if (name, version) in self._remote:
            return self._remote.stop(name, version)
        await self._stop_version(self._live(name, version), remove_image=True)

    async def load_image(self, tarball: str | Path, image: str) -> str:
        """Load ``image`` from a ``docker save`` tarball into the container engine; its id.

        Raises DecodeError if the tarball is not one, InvalidRequest if it lacks the image or
        the image cannot run as a modelbus replica, or if this service has no container engine.
        """
        await anyio.to_thread.run_sync(check_saved_image, Path(tarball), image)  # engine or not
        return await self._images_runtime().load(Path(tarball), image)

    async def set_replicas(self, name: str, version: str, count: int) -> None:
        """Start or stop replicas until ``count`` run; returns once surplus workers exited."""
        if (name, version) in self._remote:
            return  # the V2 server sizes itself
        state = self._live(name, version)
        _check_count("replicas", count, 0, self.settings.max_replicas)
        self.check_replica_budget(name, version, count)
        running = sorted(i for i, r in state.replicas.items() if not r.stopping)
        free = (i for i in itertools.count() if i not in state.replicas)
        while len(running) < count:
            running.append(self._add_replica(state, next(free)).index)
        await self._stop_replicas([state.replicas[i] for i in sorted(running)[count:]])

    def check_replica_budget(self, name: str, version: str, count: int) -> None:
        """LimitExceeded if ``count`` replicas of ``name:version`` would put the service over
        ``max_replicas_total`` with the replicas of its other versions."""
        others = sum(
            sum(1 for r in state.replicas.values() if not r.stopping)
            for key, state in self._versions.items()
            if key != (name, version) and not state.stopping
        )
        if others + count > (limit := self.settings.max_replicas_total):
            raise LimitExceeded(
                f"this service runs at most {limit} replicas in all and {others} run for other "
                f"versions: {count} more do not fit; stop or shrink some first",
                limit=limit,
                running=others,
            )

    def versions(self) -> list[tuple[str, str]]:
        local = [key for key, state in self._versions.items() if not state.stopping]
        return sorted(local + self._remote.versions())

    def is_ready(self, name: str, version: str) -> bool:
        if (name, version) in self._remote:
            return self._remote.is_ready(name, version)
        state = self._versions.get((name, version))
        return state is not None and not state.stopping and state.is_ready()

    async def wait_ready(self, name: str, version: str, timeout_s: float) -> None:
        """Return once a replica is ready; RequestTimeout after ``timeout_s``.

        Raises the load error at once if every replica failed to load the model.
        """
        if (name, version) in self._remote:
            return await self._remote.wait_ready(name, version, timeout_s)
        state = self._live(name, version)
        with anyio.move_on_after(timeout_s):
            while not state.is_ready():
                if state.stopping:
                    raise NotFound(f"model version {state.label} was stopped", model=name)
                if (failure := state.failure) is not None:
                    raise _copy(failure)
                await state.changed.wait()
            return
        raise RequestTimeout(
            f"no replica of {state.label} is ready after {timeout_s} s; its replicas' logs say why",
            model=name,
            version=version,
        )

    def replicas(self, name: str, version: str) -> list[ReplicaState]:
        if (name, version) in self._remote:
            return []
        state = self._live(name, version)
        return [state.replicas[i].snapshot() for i in sorted(state.replicas)]

    def stats(self, name: str, version: str) -> VersionStats:
        if (name, version) in self._remote:
            in_flight, done, errors, sizes = self._remote.stats(name, version)
            return VersionStats(0, in_flight, done, errors, 0, sizes)
        state = self._live(name, version)
        queue = state.queue
        return VersionStats(
            queued=len(queue),
            in_flight=sum(r.snapshot().in_flight for r in state.replicas.values()),
            predictions=queue.predictions,
            errors=queue.errors,
            retries=queue.retries,
            batch_sizes=dict(sorted(queue.batch_sizes.items())),
        )

    async def logs(self, name: str, version: str, replica: int, *, tail: int = 200) -> str:
        state = self._live(name, version)
        found = state.replicas.get(replica)
        if found is None:
            raise NotFound(f"{state.label} has no replica {replica}", replica=replica)
        if found.handle is None:
            return ""
        return await self._supervisor.runtime.logs(found.handle, tail=tail)

    # --- predictions ------------------------------------------------------------------------------

    async def predict(
        self, name: str, version: str, inputs: list[Any], timeout_s: float
    ) -> list[Any]:
        """Outputs for ``inputs``, in order. Waits for a ready replica within ``timeout_s``.

        Raises NotFound (no such version), InvalidRequest or LimitExceeded (bad inputs),
        Overloaded (queue full), RequestTimeout, InternalError (the model or its workers failed),
        or the reason the model cannot load here.
        """
        if (name, version) in self._remote:
            return await self._remote.predict(name, version, inputs, timeout_s)
        dispatcher = self._running()[1]
        state = self._live(name, version)
        if not isinstance(inputs, list):
            raise InvalidRequest(f"inputs must be a list, got {type(inputs).__name__}")
        if not inputs:
            return []
        if (failure := state.failure) is not None:
            raise _copy(failure)
        sizes = [self._input_size(value, position) for position, value in enumerate(inputs)]
        request = state.queue.submit(inputs, sizes)
        dispatcher.dispatch(state)
        try:
            async with asyncio.timeout(timeout_s):
                await request.done.wait()
        except TimeoutError:
            pass  # abandoned below
        finally:
            request.abandon()  # timed out or cancelled: late outputs are dropped
            state.queue.withdraw(request)
        if request.error is not None:
            raise _copy(request.error)
        if request.abandoned:
            why = "no replica is ready" if not state.is_ready() else f"{len(state.queue)} queued"
            raise RequestTimeout(
                f"no prediction from {state.label} within {timeout_s} s ({why})",
                model=name,
                version=version,
            )
        return request.outputs

    def _input_size(self, value: Any, position: int) -> int:
        try:
            size = len(pack(value))
        except BusError as exc:
            raise InvalidRequest(
                f"input {position} cannot be sent to a model: {exc.message}", position=position
            ) from exc
        if size > self.settings.max_input_bytes:
            raise LimitExceeded(
                f"input {position} is {size} bytes packed, over the "
                f"{self.settings.max_input_bytes}-byte limit",
                position=position,
                size=size,
            )
        return size

    # --- replicas ---------------------------------------------------------------------------------

    def _add_replica(self, state: ServedVersion, index: int) -> Replica:
        replica = Replica(state.name, state.version, index)
        state.replicas[index] = replica
        self._running()[0].start_soon(self._supervisor.run, replica)
        return replica

    def _spec_for(self, replica: Replica) -> ReplicaSpec:
        state = self._versions[(replica.model, replica.version)]
        token = self._running()[1].admit(replica)
        return ReplicaSpec(
            name=replica.model,
            version=replica.version,
            replica=replica.index,
            artifact=state.artifact,
            backend_url=self.url,
            token=token,
            batch_size=state.queue.batch_size,
            heartbeat_s=self.settings.heartbeat_s,
            image=self._images.get((replica.model, replica.version)),
            channel_socket=self._running()[1].channel.ipc_path,
        )

    def _exited(self, replica: Replica) -> None:
        batch = self._running()[1].forget(replica)
        state = self._versions.get((replica.model, replica.version))
        if state is not None and batch is not None:
            logger.warning("%s died holding %d inputs", replica.label, len(batch.items))
            state.queue.rescue(batch, replica.label)
        self._changed(replica)

    def _changed(self, replica: Replica) -> None:
        state = self._versions.get((replica.model, replica.version))
        if state is None:
            return
        if (
            replica.done.is_set()
            and replica.stopping
            and state.replicas.get(replica.index) is replica
        ):
            del state.replicas[replica.index]  # stopped on purpose: forget it
        self._refresh(state)

    def _refresh(self, state: ServedVersion) -> None:
        """Wake waiters; fail what can no longer be served, or dispatch what can."""
        state.changed.notify()
        if (failure := state.failure) is not None:
            state.queue.fail_all(lambda: _copy(failure))
        elif state.stopping:
            gone = f"model version {state.label} was stopped"
            state.queue.fail_all(lambda: NotFound(gone, model=state.name))
        else:
            self._running()[1].dispatch(state)

    def _kill(self, replica: Replica) -> None:
        """Kill a worker that misbehaves, in the background; its supervisor starts a new one."""
        self._running()[0].start_soon(self._supervisor.kill, replica)

    async def _stop_version(self, state: ServedVersion, *, remove_image: bool = False) -> None:
        state.stopping = True
        self._refresh(state)
        await self._stop_replicas(list(state.replicas.values()))
        self._versions.pop((state.name, state.version), None)
        if self._images.pop((state.name, state.version), None) is not None:
            try:
                await self._images_runtime().release(
                    state.name, state.version, remove_image=remove_image
                )
            except BusError as error:
                logger.warning("could not clean up after %s: %s", state.label, error.message)
        logger.info("stopped %s", state.label)

    async def _stop_replicas(self, replicas: list[Replica]) -> None:
        dispatcher = self._running()[1]
        for replica in replicas:
            replica.stopping = True
            dispatcher.shut_down(replica)  # it finishes its batch first
        async with anyio.create_task_group() as tg:
            for replica in replicas:
                tg.start_soon(self._supervisor.stop, replica)

    # --- helpers ----------------------------------------------------------------------------------

    def _running(self) -> tuple[anyio.abc.TaskGroup, Dispatcher]:
        if self._tg is None or self._dispatcher is None:
            raise InternalError("the backend is not running; use it in 'async with'")
        return self._tg, self._dispatcher

    def _images_runtime(self) -> ImageRuntime:
        if self._image_runtime is None:
            raise InvalidRequest(
                "this service has no container engine, so it cannot run images; start it with "
                "--docker-url (or DOCKER_HOST) pointing at Docker or Podman's API, or deploy a "
                "closure instead"
            )
        return self._image_runtime

    def _refuse_started(self, name: str, version: str) -> None:
        if (name, version) in self._versions or (name, version) in self._remote:
            raise Conflict(f"model version {name}:{version} is already started", model=name)

    def _live(self, name: str, version: str) -> ServedVersion:
        state = self._versions.get((name, version))
        if state is None or state.stopping:
            raise NotFound(
                f"model version {name}:{version} is not started here",
                model=name,
                version=version,
            )
        return state


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 253:  # the registry's ModelName
        raise InvalidRequest(f"{what} must be a string of 1 to 253 characters, got {value!r}")


def _check_count(what: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{what} must be an integer from {low} to {high}, got {value!r}")


def _copy(error: BusError) -> BusError:
    """A fresh exception to raise, so concurrent callers do not share one traceback."""
    fresh = type(error)(error.message)
    fresh.details = dict(error.details)
    return fresh
