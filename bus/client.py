"""The bus client: publish, persist, subscribe, query and request/response over any transport.

Every frame it sends is sealed with its entity and carries a proof (a grant chain) chosen from
the chains it holds; every frame it receives is verified before user code sees it, and rejected
frames are counted (``client.verifier.rejected``) and logged, never raised out of a loop.
A frame over the bus limit is refused with ``FrameTooLarge`` before it is sent, and the client
stays usable. ``on_reconnect`` hooks run when the transport's connection comes back, before
anything else is published on it.
The request/response mechanics live in :mod:`bus.rpc`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bus import envelope as envelopes
from bus import uri as uris
from bus.entity import Entity
from bus.errors import BusError, PermissionMissing, TransportError
from bus.grants import Grant
from bus.message import MessageStream, Rejected, consume_right
from bus.po import PayloadObject
from bus.responder import Responder, ServeGate
from bus.rpc import Handler, Requester
from bus.transport import (
    DEFAULT_BUFFER,
    ReconnectHook,
    Subscription,
    Transport,
    Will,
    check_frame_size,
)
from bus.verifier import Verifier

__all__ = ["BusClient"]

logger = logging.getLogger(__name__)

_PROOF_CACHE_SIZE = 4096


class BusClient:
    """A connection to the bus as one entity. Use as ``async with BusClient(...) as client``.

    ``proofs`` are grant chains (root first) this entity may present; the client picks, per
    URI and permission, the first that authorizes the action. The namespace owner needs none.
    """

    def __init__(
        self,
        transport: Transport,
        entity: Entity,
        *,
        proofs: Sequence[Sequence[Grant]] = (),
        verifier: Verifier | None = None,
        will: tuple[str, Sequence[PayloadObject]] | None = None,
    ) -> None:
        self.transport = transport
        self.entity = entity
        self.verifier = verifier or Verifier()
        self.proofs = [tuple(grant.encode() for grant in chain) for chain in proofs]
        self._will = will
        self._proof_cache: dict[tuple[str, str], tuple[tuple[bytes, ...], int]] = {}
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self.task_group: TaskGroup | None = None
        self._requester: Requester | None = None

    async def __aenter__(self) -> BusClient:
        will = None
        if self._will is not None:
            uri, pos = self._will
            will = Will(uri, self.seal(uri, pos, persist=True))
        async with contextlib.AsyncExitStack() as stack:
            await self.transport.connect(will=will)
            stack.push_async_callback(self._close_transport)
            self.task_group = await stack.enter_async_context(anyio.create_task_group())
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return
        if self.task_group is not None:
            self.task_group.cancel_scope.cancel()
        try:
            await stack.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as group:
            # The body's own error, wrapped by the task group: let it propagate as itself.
            if exc is None or group.exceptions != (exc,):
                raise

    async def _close_transport(self) -> None:
        with anyio.move_on_after(5, shield=True):
            await self.transport.close()

    @property
    def key_text(self) -> str:
        return self.entity.key_text

    def proof_for(self, asked: str, right: str) -> tuple[bytes, ...]:
        """A chain from ``proofs`` that lets this entity do ``right`` on ``asked``."""
        now_ns = time.time_ns()
        cached = self._proof_cache.get((asked, right))
        if cached is not None and now_ns < cached[1]:
            return cached[0]
        canonical = self.verifier.canonical(asked)
        if uris.namespace_of(canonical) == self.key_text:
            return ()
        errors: list[BusError] = []
        for proof in self.proofs:
            try:
                self.verifier.authorize(self.entity.public_key, proof, asked, right, now_ns=now_ns)
            except BusError as error:
                errors.append(error)
                continue
            expires = self.verifier.verdicts.verdict(proof, now_ns=now_ns).expires_ns
            if len(self._proof_cache) >= _PROOF_CACHE_SIZE:
                self._proof_cache.clear()  # a URI per scheduled window must not grow it forever
            self._proof_cache[(asked, right)] = (proof, expires)
            return proof
        if len(errors) == 1:
            raise errors[0]
        raise PermissionMissing(
            f"none of the {len(self.proofs)} grant chains this entity holds lets it {right!r} "
            f"on {asked!r}; ask the namespace owner: modelbus grant --to {self.key_text} "
            f"--uri '{asked}' --perms {right}",
            uri=asked,
            needed=right,
            reasons=[error.message for error in errors],
        )

    def seal(self, uri: str, pos: Sequence[PayloadObject], *, persist: bool = False) -> bytes:
        """The signed frame; ``FrameTooLarge`` if it is over the verifier's frame limit."""
        frame = envelopes.seal(
            self.entity, uri, tuple(pos), persist=persist, proof=self.proof_for(uri, "P")
        )
        check_frame_size(uri, frame, self.verifier.max_frame_bytes)
        return frame

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        """Run ``hook`` each time the transport reconnects, before anything else is published
        on the connection (the transport's ``on_reconnect``); returns its remover."""
        return self.transport.on_reconnect(hook)

    async def publish(
        self, uri: str, pos: PayloadObject | Sequence[PayloadObject], *, persist: bool = False
    ) -> None:
        """Sign and publish; ``persist`` keeps it as the latest message on ``uri``."""
        items = (pos,) if isinstance(pos, PayloadObject) else tuple(pos)
        await self.transport.publish(uri, self.seal(uri, items, persist=persist), persist=persist)

    async def unpersist(self, uri: str) -> None:
        """Publish a signed tombstone: queries no longer return a message on ``uri``."""
        await self.publish(uri, (), persist=True)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        pattern: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        include_rejected: bool = False,
        check_scope: bool = True,
        share_group: str | None = None,
    ) -> AsyncIterator[MessageStream]:
        """Receive verified live messages on ``pattern``. With ``check_scope`` the client first
        checks that its own grants allow consuming there (C, C+ or C*). With ``share_group``
        each message goes to one subscriber of the group (:mod:`bus.transport`)."""
        if check_scope:
            self.proof_for(pattern, consume_right(pattern))
        subscription = await self.transport.subscribe(
            pattern, buffer=buffer, share_group=share_group
        )
        stream = MessageStream(subscription, self.verifier, include_rejected=include_rejected)
        try:
            yield stream
        finally:
            await subscription.close()

    async def query(
        self, pattern: str, *, timeout_s: float = 5.0, include_rejected: bool = False
    ) -> list[Any]:
        """The persisted messages matching ``pattern`` (tombstones left out), verified.
        Like BOSSWAVE, querying needs the same right as subscribing (C, C+ or C*)."""
        self.proof_for(pattern, consume_right(pattern))
        deliveries = await self.transport.query(pattern, timeout_s=timeout_s)
        checker = MessageStream(Subscription(pattern), self.verifier)
        results: list[Any] = []
        for delivery in deliveries:
            item = checker.verify(delivery.topic, delivery.frame)
            if isinstance(item, Rejected):
                if include_rejected:
                    results.append(item)
            elif item.pos:
                results.append(item)
        return results

    async def request(
        self,
        uri: str,
        body: Any,
        *,
        timeout_s: float = 10.0,
        request_id: str | None = None,
        attachment: PayloadObject | None = None,
    ) -> Any:
        """Send ``body`` to the slot ``uri`` and return the reply's result, or raise the typed
        error the service replied with (or RequestTimeout). Retrying with the same
        ``request_id`` returns the first reply instead of running the request twice.
        ``attachment`` (a binary PO) travels beside the body, as :mod:`bus.rpc` describes."""
        if self._requester is None:
            self._requester = Requester(self)
        return await self._requester.request(
            uri, body, timeout_s=timeout_s, request_id=request_id, attachment=attachment
        )

    def expect_replies_from(self, slot_uri: str, origin: bytes) -> None:
        """Pin the service's key: replies to requests on ``slot_uri``'s prefix count only when
        signed by ``origin`` (others are dropped and counted, :mod:`bus.rpc`)."""
        if self._requester is None:
            self._requester = Requester(self)
        self._requester.expect(slot_uri, origin)

    async def serve(
        self,
        pattern: str,
        handler: Handler,
        *,
        max_concurrency: int = 64,
        max_per_sender: int | None = None,
        gate: ServeGate | None = None,
        share_group: str | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on the slot(s) ``pattern`` until cancelled; start it with
        ``await task_group.start(client.serve, pattern, handler)``. Responders sharing a
        ``gate`` can be drained together before shutting down (``await gate.drain(10)``).
        Instances of one service pass the same ``share_group`` so that each request reaches
        one of them (:func:`bus.responder.service_share_group`)."""
        responder = Responder(
            self, handler, max_concurrency=max_concurrency, max_per_sender=max_per_sender, gate=gate
        )
        await responder.run(pattern, share_group=share_group, task_status=task_status)

    def require_task_group(self) -> TaskGroup:
        if self.task_group is None:
            raise TransportError("the client is not connected; use 'async with BusClient(...)'")
        return self.task_group
