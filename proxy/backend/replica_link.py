"""The backend's end of the replica protocol: who is who, batches out, results in, heartbeats.

A worker proves which replica it is with the token of its start (``hello``); from then on its
ZeroMQ routing id names it. The :class:`Dispatcher` sends an idle ready replica a batch of what is
queued right then — the idle replica that was given work least recently goes first — and matches
results to batches. A ready worker silent for ``silence_limit_s``, or one a batch cannot be sent
to, is handed to ``kill`` (its supervisor then restarts it).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from bus.errors import BusError, InternalError, InvalidRequest, error_from_wire
from proxy.backend.batching import BatchQueue, PendingBatch
from proxy.backend.channel import (
    PROTOCOL,
    Batch,
    Fatal,
    Heartbeat,
    Hello,
    Result,
    RouterChannel,
    Shutdown,
    WorkerMessage,
)
from proxy.backend.supervisor import Replica

__all__ = ["Dispatcher", "ServedVersion", "Signal"]

logger = logging.getLogger(__name__)


class Signal:
    """Wakes every waiter on each notify; waiters then re-check their condition."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(eq=False)
class ServedVersion:
    """A started model version: its archive, queue and replicas."""

    name: str
    version: str
    artifact: Path
    queue: BatchQueue
    replicas: dict[int, Replica] = field(default_factory=dict)
    changed: Signal = field(default_factory=Signal)
    stopping: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def failure(self) -> BusError | None:
        """The load error, once every replica has failed to load the model."""
        replicas = list(self.replicas.values())
        if replicas and all(r.failure is not None for r in replicas):
            return replicas[0].failure
        return None

    def is_ready(self) -> bool:
        return any(r.state == "ready" for r in self.replicas.values())


class Dispatcher:
    def __init__(
        self,
        channel: RouterChannel,
        versions: Mapping[tuple[str, str], ServedVersion],
        *,
        heartbeat_s: float,
        silence_limit_s: float,
        kill: Callable[[Replica], None],
        changed: Callable[[Replica], None],
    ) -> None:
        self.channel = channel
        self._versions = versions
        self._heartbeat_s = heartbeat_s
        self._silence_limit_s = silence_limit_s
        self._kill = kill
        self._changed = changed
        self._by_token: dict[str, Replica] = {}
        self._by_identity: dict[bytes, Replica] = {}
        self._batch_ids = 0

    def admit(self, replica: Replica) -> str:
        """A fresh token for the replica's next start; its worker's hello must carry it."""
        replica.token = secrets.token_hex(16)
        self._by_token[replica.token] = replica
        return replica.token

    def forget(self, replica: Replica) -> PendingBatch | None:
        """The replica's worker is gone: forget its token and routing id; return its batch."""
        self._by_token.pop(replica.token, None)
        self.disconnect(replica)
        batch, replica.in_flight = replica.in_flight, None
        return batch

    def disconnect(self, replica: Replica) -> None:
        """Stop talking to the replica's worker (messages from it get ``shutdown``)."""
        if replica.identity is not None:
            self._by_identity.pop(replica.identity, None)
            replica.identity = None

    def shut_down(self, replica: Replica) -> None:
        """Ask the replica's worker to finish its batch and exit."""
        if replica.identity is not None:
            self.channel.send(replica.identity, Shutdown())
            replica.state = "stopping"

    def dispatch(self, state: ServedVersion) -> None:
        """Send every idle ready replica a batch of what is queued now."""
        while state.queue and not state.stopping:
            idle = [r for r in state.replicas.values() if r.is_idle()]
            if not idle:
                return
            replica = min(idle, key=lambda r: r.last_dispatch)
            self._batch_ids += 1
            batch = state.queue.take(self._batch_ids)
            if batch is None:
                return
            assert replica.identity is not None
            message = Batch(batch_id=batch.batch_id, inputs=batch.inputs)
            if self.channel.send(replica.identity, message):
                replica.in_flight = batch
                replica.last_dispatch = time.monotonic()
            else:
                state.queue.give_back(batch)
                self._restart(replica, "it cannot be reached")

    async def receive_loop(self) -> None:
        await self.channel.serve(self._handle_safely)

    def _handle_safely(self, identity: bytes, message: WorkerMessage) -> None:
        try:
            self._handle(identity, message)
        except Exception:  # one bad message must not take the backend down
            logger.exception("failed to handle a %s from a worker", message.type)

    async def heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_s)
            now = time.monotonic()
            for replica in list(self._by_identity.values()):
                silent_s = now - replica.last_seen
                if silent_s > self._silence_limit_s and not replica.stopping:
                    self._restart(replica, f"it has been silent for {silent_s:.1f} s")
                elif replica.identity is not None:
                    self.channel.send(replica.identity, Heartbeat())

    def _handle(self, identity: bytes, message: WorkerMessage) -> None:
        if isinstance(message, Hello):
            self._on_hello(identity, message)
        elif isinstance(message, Fatal):
            replica = self._by_token.get(message.token)
            if replica is not None:
                error = message.error
                replica.failure = error_from_wire(error.code, error.message, error.details)
                replica.fatal_received.set()
        elif (replica := self._by_identity.get(identity)) is None:
            self.channel.send(identity, Shutdown())  # a worker from an earlier start, a stranger
        else:
            replica.last_seen = time.monotonic()
            if isinstance(message, Result):
                self._on_result(replica, message)

    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        replica = self._by_token.get(hello.token)
        claimed = (hello.name, hello.version, hello.replica)
        if replica is None or claimed != (replica.model, replica.version, replica.index):
            logger.warning("refused a hello from pid %d: unknown start token", hello.pid)
            self.channel.send(identity, Shutdown())
            return
        if hello.protocol != PROTOCOL:
            replica.failure = InvalidRequest(
                f"{replica.label}'s worker speaks replica protocol {hello.protocol}; this backend "
                f"speaks {PROTOCOL}"
            )
            replica.fatal_received.set()
        if replica.stopping or replica.failure is not None:
            self.channel.send(identity, Shutdown())
            return
        replica.identity = identity
        replica.last_seen = time.monotonic()
        replica.state = "ready"
        self._by_identity[identity] = replica
        logger.info("%s is ready (pid %d)", replica.label, hello.pid)
        self._changed(replica)

    def _on_result(self, replica: Replica, result: Result) -> None:
        batch = replica.in_flight
        if batch is None or batch.batch_id != result.batch_id:
            logger.warning("%s answered batch %d, not its own", replica.label, result.batch_id)
            return
        replica.in_flight = None
        replica.batches += 1
        state = self._versions[(replica.model, replica.version)]
        if result.outputs is not None and len(result.outputs) == len(batch.items):
            state.queue.complete(batch, result.outputs)
        elif state.queue.split(batch):  # several requesters' inputs: retry them one by one
            logger.warning(
                "%s failed on a batch of %d inputs from several requests (%s); retrying each "
                "input alone",
                replica.label,
                len(batch.items),
                result.error.code if result.error else "bad_output",
            )
        else:
            state.queue.fail(batch, _model_error(replica, result))
        self.dispatch(state)

    def _restart(self, replica: Replica, why: str) -> None:
        logger.warning("restarting %s: %s", replica.label, why)
        self.disconnect(replica)
        replica.state = "failed"
        self._kill(replica)


def _model_error(replica: Replica, result: Result) -> InternalError:
    label = f"{replica.model}:{replica.version}"
    error = result.error
    if error is None:
        return InternalError(
            f"model {label} returned the wrong number of outputs on replica {replica.index}",
            model=label,
            replica=replica.index,
            cause="bad_output",
        )
    details = {key: error.details[key] for key in ("exception",) if key in error.details}
    return InternalError(
        f"model {label} failed on replica {replica.index}: {error.message}",
        model=label,
        replica=replica.index,
        cause=error.code,
        **details,
    )
