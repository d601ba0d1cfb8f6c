"""One replica's life: start its worker, restart it after crashes with backoff, stop it.

The :class:`Supervisor` drives a :class:`Replica` through ``starting → ready → …`` using a
:class:`~proxy.backend.runtime.Runtime`; the backend owns the messages (hello, results) and hears
about every change through hooks. Restarts back off exponentially from
``restart_min_s`` to ``restart_max_s`` and the backoff resets after a run longer than the maximum.
A worker that exits with :data:`~proxy.backend.channel.EXIT_LOAD_FAILED`, or that reported a fatal
error, is not restarted: its model cannot load here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from bus.errors import BusError, InternalError
from proxy.backend.batching import PendingBatch
from proxy.backend.channel import EXIT_LOAD_FAILED
from proxy.backend.runtime import ReplicaHandle, ReplicaSpec, Runtime

__all__ = ["Replica", "ReplicaState", "ReplicaStatus", "Supervisor"]

logger = logging.getLogger(__name__)

ReplicaStatus = Literal["starting", "ready", "stopping", "failed", "stopped"]
_FATAL_TRAIL_S = 1.0  # how long a fatal message may trail its worker's exit


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """A replica as reported to operators."""

    index: int
    state: ReplicaStatus
    pid: int | None  # of the running worker, if any
    restarts: int
    batches: int  # answered, over all of this replica's restarts
    in_flight: int  # inputs the replica is predicting now
    error: str | None  # why it failed for good


@dataclass(eq=False)
class Replica:
    """Everything the backend knows about one replica of a model version."""

    model: str
    version: str
    index: int
    state: ReplicaStatus = "starting"
    restarts: int = 0
    batches: int = 0
    handle: ReplicaHandle | None = None  # the latest worker's, kept after it exits (for logs)
    pid: int | None = None  # of the running worker
    token: str = ""  # of the current start; proves a hello comes from this start
    identity: bytes | None = None  # the worker's routing id, once it said hello
    in_flight: PendingBatch | None = None
    last_dispatch: float = 0.0
    last_seen: float = 0.0
    stopping: bool = False
    failure: BusError | None = None  # why its model cannot run here
    fatal_received: anyio.Event = field(default_factory=anyio.Event)
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def label(self) -> str:
        return f"replica {self.index} of {self.model}:{self.version}"

    def is_idle(self) -> bool:
        return self.state == "ready" and self.identity is not None and self.in_flight is None

    def snapshot(self) -> ReplicaState:
        return ReplicaState(
            index=self.index,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            batches=self.batches,
            in_flight=len(self.in_flight.items) if self.in_flight else 0,
            error=self.failure.message if self.failure else None,
        )


class Supervisor:
    """Runs replicas' workers. The backend passes three hooks:

    ``spec_for(replica)``, before each start: a spec with a fresh token it will accept a hello
    for; ``exited(replica)``: the worker is gone — forget its token and routing id, rescue its
    batch; ``changed(replica)``: the state changed — waiters re-check readiness and failures.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        spec_for: Callable[[Replica], ReplicaSpec],
        exited: Callable[[Replica], None],
        changed: Callable[[Replica], None],
        restart_min_s: float,
        restart_max_s: float,
        stop_grace_s: float,
        kill_grace_s: float,
    ) -> None:
        self.runtime = runtime
        self._spec_for = spec_for
        self._exited = exited
        self._changed = changed
        self._restart_min_s = restart_min_s
        self._restart_max_s = restart_max_s
        self._stop_grace_s = stop_grace_s
        self._kill_grace_s = kill_grace_s

    async def run(self, replica: Replica) -> None:
        """Keep the replica's worker running, restarting it after crashes, until it is stopped."""
        backoff = self._restart_min_s
        try:
            while not replica.stopping:
                started = time.monotonic()
                code = await self._run_once(replica)
                if replica.stopping:
                    break
                if code == EXIT_LOAD_FAILED or replica.failure is not None:
                    await self._give_up(replica, code)
                    return
                replica.state = "failed"
                replica.restarts += 1
                if time.monotonic() - started > self._restart_max_s:
                    backoff = self._restart_min_s
                logger.warning(
                    "%s exited with status %s; restart %d in %.1f s",
                    replica.label,
                    code,
                    replica.restarts,
                    backoff,
                )
                self._changed(replica)
                with anyio.move_on_after(backoff):
                    await replica.stop_requested.wait()
                backoff = min(backoff * 2, self._restart_max_s)
            replica.state = "stopped"
        finally:
            replica.done.set()
            self._changed(replica)

    async def stop(self, replica: Replica) -> None:
        """Wait for a replica asked to shut down; terminate, then kill its worker if it lingers.

        The caller has already sent the worker ``shutdown`` if it could.
        """
        replica.stopping = True
        replica.stop_requested.set()
        with anyio.move_on_after(self._stop_grace_s):
            await replica.done.wait()
            return
        if replica.handle is not None:
            await self.runtime.stop(replica.handle, grace_s=self._kill_grace_s)
        await replica.done.wait()

    async def kill(self, replica: Replica) -> None:
        """Stop a misbehaving worker now; :meth:`run` then starts a new one."""
        if replica.handle is not None:
            await self.runtime.stop(replica.handle, grace_s=self._kill_grace_s)

    async def _run_once(self, replica: Replica) -> int | None:
        """Start the worker and wait for it to exit; its exit status (None: it did not start)."""
        replica.state = "starting"
        spec = self._spec_for(replica)
        handle: ReplicaHandle | None = None
        try:
            handle = replica.handle = await self.runtime.start(spec)
            replica.pid = handle.pid
            if replica.stopping:
                await self.runtime.stop(handle, grace_s=self._kill_grace_s)
            return await self.runtime.wait(handle)
        except BusError as exc:
            logger.error("%s did not start: %s", replica.label, exc.message)
            return None
        finally:
            if handle is not None and self.runtime.is_alive(handle):  # cancelled: leave no orphan
                with anyio.move_on_after(self._kill_grace_s + 1, shield=True):
                    await self.runtime.stop(handle, grace_s=self._kill_grace_s)
            replica.pid = None
            self._exited(replica)

    async def _give_up(self, replica: Replica, code: int | None) -> None:
        if replica.failure is None:
            with anyio.move_on_after(_FATAL_TRAIL_S):
                await replica.fatal_received.wait()
        if replica.failure is None:
            replica.failure = InternalError(
                f"{replica.label} could not load its model (exit status {code}); see its log",
                replica=replica.index,
            )
        replica.state = "failed"
        logger.error("%s will not be restarted: %s", replica.label, replica.failure.message)
