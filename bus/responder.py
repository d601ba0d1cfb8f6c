"""The service side of request/response (:mod:`bus.rpc`): answer a slot's requests.

A :class:`Responder` subscribes to a slot pattern and runs a handler per verified request, with
at most ``max_concurrency`` at once and ``max_per_sender`` of one sender; replies are cached
(:mod:`bus.replycache`) so a retried id is answered, not run again; responders that share a
:class:`ServeGate` are drained together before a shutdown. No request, whatever it holds, ends a
responder.

Several instances of one service (several processes, one service URI, one MQTT broker) each run
their responders in the share group :func:`service_share_group` of the service URI, so each
request frame reaches one instance. The replay and reply caches stay in each instance's memory:
a retry that lands on another instance runs there again (PROTOCOL.md §15.4 says why that is
safe, and what it costs).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskStatus

from bus.entity import key_to_text
from bus.errors import (
    BadSignature,
    BusError,
    DecodeError,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    Overloaded,
    ReplayedNonce,
)
from bus.message import Message, Rejected
from bus.po import PO_REPLY, PO_REQUEST, PayloadObject
from bus.replycache import ReplyCache
from bus.rpc import MAX_REPLY_BYTES, Endpoint, Handler, Request, reply_uri, request_id_of
from bus.verifier import Verifier

__all__ = ["Responder", "ServeGate", "service_share_group"]

logger = logging.getLogger(__name__)

_REPLY_TARGETS = 4096  # (slot URI, sender) pairs whose reply URI is remembered


def service_share_group(service_uri: str) -> str:
    """The share group of every instance serving ``service_uri`` (its canonical form, the
    namespace as a key): ``modelbus-`` and the first 24 hex digits of the URI's SHA-256."""
    return "modelbus-" + hashlib.sha256(service_uri.encode()).hexdigest()[:24]


class ServeGate:
    """Shared by the responders of one service to shut down gracefully: counts requests in
    flight and, once closed, answers new requests ``overloaded`` while those finish. ``refused``
    counts, by error code, the requests the responders answered without running them
    (malformed, overloaded; not the rejected frames, which the verifier counts).

    Responders in a share group (one of several instances) may instead *withdraw*: ``drain(...,
    withdraw=True)`` unsubscribes them, so that the broker hands new requests to the other
    instances, and waits for what was received; nothing is refused."""

    def __init__(self) -> None:
        self.is_closed = False
        self.in_flight = 0
        self.refused: Counter[str] = Counter()
        self._changed = anyio.Event()
        self._withdrawing: set[Callable[[], None]] = set()
        self._is_draining = False

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        if self._is_draining:
            self._changed.set()
            self._changed = anyio.Event()

    def on_withdraw(self, stop: Callable[[], None]) -> Callable[[], None]:
        """``stop()`` ends a responder's shared subscription when draining with ``withdraw``; call
        the returned function once that responder has finished (its stream and handlers)."""
        self._withdrawing.add(stop)

        def finished() -> None:
            self._withdrawing.discard(stop)
            self._wake()

        return finished

    async def drain(self, timeout_s: float, *, withdraw: bool = False) -> int:
        """Close the gate — or with ``withdraw`` end the shared subscriptions, so that the broker
        hands new requests to the other instances, and let the responders finish what they
        had received — and wait (shielded, at most ``timeout_s``) for requests in flight;
        returns how many were still running. The gate is closed afterwards either way."""
        self._is_draining = True
        if withdraw:
            for stop in list(self._withdrawing):
                stop()
        else:
            self.is_closed = True
        with anyio.move_on_after(timeout_s, shield=True):
            while self.in_flight or (withdraw and self._withdrawing):
                await self._changed.wait()
        self.is_closed = True
        return self.in_flight


class _Handlers:
    """The handlers one responder runs, as plain asyncio tasks: starting one costs about 1 µs,
    an anyio task group's ``start_soon`` about 9. Leaving the block normally waits for them;
    leaving it cancelled (or failed) cancels them and waits, shielded, until they have ended.
    A handler that raises is logged (by type), never ends the responder."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_exit: list[Callable[[], None]] = []

    def on_exit(self, callback: Callable[[], None]) -> None:
        self._on_exit.append(callback)

    def start_soon(self, handling: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(handling)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("unexpected %s handling a request", type(error).__name__)

    async def __aenter__(self) -> _Handlers:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            while exc_type is None and self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            for callback in self._on_exit:
                callback()
            if self._tasks:
                for task in self._tasks:
                    task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(set(self._tasks))


class Responder:
    """Serves requests arriving on a slot pattern with ``handler``, at most ``max_concurrency``
    at once and at most ``max_per_sender`` of one sender (more are answered ``overloaded``),
    caching replies in ``replies`` (at most ``reply_cache_size`` of them, and bounded in bytes in
    all and per sender). A reply packed larger than ``max_reply_bytes`` is answered
    ``limit_exceeded`` instead."""

    def __init__(
        self,
        client: Endpoint,
        handler: Handler,
        *,
        max_concurrency: int = 64,
        reply_cache_size: int = 4096,
        reply_cache: ReplyCache | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        gate: ServeGate | None = None,
        max_per_sender: int | None = None,
    ) -> None:
        self._gate = gate or ServeGate()
        self._client = client
        self._handler = handler
        self.max_concurrency = max_concurrency
        self.replies = reply_cache or ReplyCache(max_entries=reply_cache_size)
        self.max_reply_bytes = max_reply_bytes
        self._in_flight: set[tuple[bytes, str]] = set()
        self._verifier: Verifier | None = None  # the stream's: it counts dropped requests too
        self.max_per_sender = max_per_sender or max_concurrency
        self._per_sender: dict[bytes, int] = {}
        self._reply_targets: dict[tuple[str, bytes], str] = {}  # (slot URI, sender) -> reply URI

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(
        self, pattern: str, *, share_group: str | None = None, task_status: TaskStatus[None]
    ) -> None:
        """Serve until cancelled; with ``share_group`` the subscription is shared."""
        subscribing = self._client.subscribe(
            pattern, include_rejected=True, check_scope=False, share_group=share_group
        )
        async with (
            subscribing as stream,
            _Handlers() as handlers,
        ):
            self._verifier = stream.verifier
            if share_group is not None:
                forget = self._gate.on_withdraw(stream.subscription.close_nowait)
                handlers.on_exit(forget)
            task_status.started()
            async for item in stream:
                try:
                    if isinstance(item, Rejected):
                        await self._answer_rejection(item)
                    else:
                        await self._accept(item, handlers)
                except Exception as exc:  # one request never ends the responder
                    logger.error(
                        "unexpected %s accepting a request on %s", type(exc).__name__, pattern
                    )

    async def _accept(self, message: Message, handlers: _Handlers) -> None:
        try:
            value = message.value(PO_REQUEST)
        except DecodeError:
            value = None
        rid = request_id_of(value)
        if rid is None or not isinstance(value, dict) or "body" not in value:
            error = InvalidRequest("a request is one 2.0.11.1 payload {id, body}")
            if rid is not None:
                logger.warning("malformed request on %s from %s", message.uri, message.origin_text)
                await self._refuse(message, rid, error)
            elif self._verifier is not None:  # no reply: counted, logged at most once a second
                logger.debug(
                    "request without an id on %s from %s", message.uri, message.origin_text
                )
                self._verifier.record_rejection(error, None)
            return
        if message.persist:
            refused = InvalidRequest("a request must not be persisted (persist flag set)")
            await self._refuse(message, rid, refused)
            return
        try:
            attachment = _attachment(message.pos)
        except InvalidRequest as refused:
            await self._refuse(message, rid, refused)
            return
        key = (message.origin, rid)
        cached = self.replies.get(key)
        if cached is not None:
            await self._send_packed(message.uri, message.origin, cached)
        elif key in self._in_flight:
            logger.debug("duplicate request %s while it runs; its reply will come", rid)
        elif self._gate.is_closed:
            closing = Overloaded("the service is shutting down; retry shortly")
            await self._refuse(message, rid, closing)
        elif len(self._in_flight) >= self.max_concurrency:
            busy = Overloaded(
                f"the service is handling {self.max_concurrency} requests; retry shortly",
                limit=self.max_concurrency,
            )
            await self._refuse(message, rid, busy)
        elif self._per_sender.get(message.origin, 0) >= self.max_per_sender:
            busy = Overloaded(
                f"this sender has {self.max_per_sender} requests running here, the most one "
                "sender may; retry once they are answered",
                limit=self.max_per_sender,
                per_sender=True,
            )
            await self._refuse(message, rid, busy)
        else:
            self._in_flight.add(key)
            self._per_sender[message.origin] = self._per_sender.get(message.origin, 0) + 1
            self._gate.enter()
            request = Request(message.uri, message.origin, rid, value["body"], attachment)
            handlers.start_soon(self._handle(request))

    async def _refuse(self, message: Message, rid: str, error: BusError) -> None:
        self._gate.refused[error.code] += 1
        await self._send(message.uri, message.origin, _error_reply(rid, error))

    async def _handle(self, request: Request) -> None:
        key = (request.origin, request.id)
        try:
            reply = {"id": request.id, "ok": True, "result": await self._handler(request)}
        except BusError as error:
            reply = _error_reply(request.id, error)
        except Exception:
            logger.exception("handler failed on %s (request %s)", request.uri, request.id)
            failure = InternalError("the service failed handling this request; see its log")
            reply = _error_reply(request.id, failure)
        finally:
            self._in_flight.discard(key)
            if (left := self._per_sender.pop(request.origin) - 1) > 0:
                self._per_sender[request.origin] = left
            self._gate.leave()
        packed = self._pack(reply)
        self.replies.put(key, packed)  # before any await: a retry now finds it
        await self._send_packed(request.uri, request.origin, packed)

    def _pack(self, reply: dict[str, Any]) -> PayloadObject:
        """The reply PO; a reply too large for a frame becomes a ``limit_exceeded`` error."""
        try:
            packed = PayloadObject.msgpack(reply, PO_REPLY)
        except BusError as error:  # a result msgpack cannot carry
            logger.warning("cannot pack the reply to %s: %s", reply["id"], error.message)
            packed = PayloadObject.msgpack(_error_reply(reply["id"], error), PO_REPLY)
        if len(packed.data) <= self.max_reply_bytes:
            return packed
        too_large = LimitExceeded(
            f"the reply is {len(packed.data)} bytes packed, over the {self.max_reply_bytes} "
            "bytes a reply may carry (the bus frame limit is 16 MiB); ask for less at once "
            "(fewer inputs per request)",
            size=len(packed.data),
            limit=self.max_reply_bytes,
        )
        logger.warning("reply to %s too large: %d bytes", reply["id"], len(packed.data))
        return PayloadObject.msgpack(_error_reply(reply["id"], too_large), PO_REPLY)

    async def _answer_rejection(self, rejected: Rejected) -> None:
        """Reply with the typed error when the sender is authentic: never to a forged origin,
        never for a replay (the original gets its own reply)."""
        envelope = rejected.envelope
        if envelope is None or isinstance(rejected.error, ReplayedNonce | BadSignature):
            return
        try:
            envelope.check_signature()
            po = next((p for p in envelope.pos if p.number == PO_REQUEST), None)
            rid = request_id_of(po.value() if po else None)
        except BusError:
            return
        if rid is not None and envelope.uri == rejected.topic:
            # The reply goes under the slot the frame arrived on, never a place the sender
            # chose: a frame signed for another URI than its topic gets no answer at all.
            await self._send(rejected.topic, envelope.origin, _error_reply(rid, rejected.error))

    async def _send(self, uri: str, origin: bytes, reply: dict[str, Any]) -> None:
        await self._send_packed(uri, origin, PayloadObject.msgpack(reply, PO_REPLY))

    async def _send_packed(self, uri: str, origin: bytes, reply: PayloadObject) -> None:
        try:
            target = self._reply_targets.get((uri, origin))
            if target is None:
                target = reply_uri(uri, key_to_text(origin))
                if len(self._reply_targets) >= _REPLY_TARGETS:
                    self._reply_targets.clear()
                self._reply_targets[(uri, origin)] = target
            await self._client.publish(target, reply)
        except BusError as error:
            logger.warning("could not reply on %s: %s", uri, error.message)


def _attachment(pos: tuple[PayloadObject, ...]) -> PayloadObject | None:
    """The PO after the request PO: none, or one binary PO; InvalidRequest otherwise."""
    index = next(i for i, po in enumerate(pos) if po.number == PO_REQUEST)
    after = pos[index + 1 :]
    if not after:
        return None
    if len(after) > 1 or after[0].kind != "binary":
        numbers = ", ".join(po.number for po in after[:4])
        raise InvalidRequest(
            "a request carries at most one attachment, a binary PO (1.x.x.x) right after "
            f"its 2.0.11.1 PO; this one has {numbers}"
        )
    return after[0]


def _error_reply(rid: str, error: BusError) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": error.to_wire()}
