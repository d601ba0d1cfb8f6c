"""Request/response over pub/sub.

A request is published on a service's slot, ``<prefix>/slot/<name>``, with one payload object
``2.0.11.1`` = msgpack ``{id, body}``; the id is unique per requester. The reply goes to the
requester's own signal, ``<prefix>/signal/reply/<requester key>``, as ``2.0.11.2`` = msgpack
``{id, ok: true, result}`` or ``{id, ok: false, error: {code, message, details}}``. A request id
seen again returns the cached reply instead of running twice; while the first is still running
the duplicate is ignored (its reply will come).

A request may carry one *attachment*: a binary PO (``1.x.x.x``) right after the request PO, for
bulk bytes that should not be msgpack-encoded into the body (an upload's chunks). Over 64 KiB it
travels detached, so the envelope's signed digest of it is its SHA-256
(``Request.attachment.sha256``); a PO after the request PO that is not binary, or more than one,
is answered ``invalid_request``.

A requester accepts replies only from the entity it expects to answer: :meth:`Requester.expect`
pins the key whose replies count on a reply URI (the service's key, §11 of the protocol); a
reply signed by anyone else — another user granted ``P`` on the reply URI — is dropped and
counted in ``Requester.foreign_replies``, and the real reply still arrives.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bus import uri as uris
from bus.entity import key_to_text
from bus.errors import (
    BadSignature,
    BusError,
    Conflict,
    DecodeError,
    InternalError,
    InvalidRequest,
    InvalidUri,
    Overloaded,
    ReplayedNonce,
    RequestTimeout,
    error_from_wire,
)
from bus.message import Message, MessageStream, Rejected
from bus.po import PO_REPLY, PO_REQUEST, PayloadObject

__all__ = ["MAX_ID_LENGTH", "Request", "Requester", "Responder", "ServeGate", "reply_uri"]

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 128
Handler = Callable[["Request"], Awaitable[Any]]


class Endpoint(Protocol):
    """What request/response needs of a bus client (:class:`bus.BusClient` is one)."""

    @property
    def key_text(self) -> str: ...

    async def publish(
        self, uri: str, pos: PayloadObject | tuple[PayloadObject, ...], *, persist: bool = False
    ) -> None: ...

    def subscribe(
        self, pattern: str, *, include_rejected: bool = False, check_scope: bool = True
    ) -> AbstractAsyncContextManager[MessageStream]: ...

    def require_task_group(self) -> TaskGroup: ...


def reply_uri(request_uri: str, requester: str) -> str:
    """``<prefix>/slot/<name>`` → ``<prefix>/signal/reply/<requester>``."""
    segments = uris.parse(request_uri)
    if len(segments) < 3 or segments[-2] != "slot":
        raise InvalidUri("a request URI ends in .../slot/<name>", uri=request_uri)
    return "/".join((*segments[:-2], "signal", "reply", requester))


@dataclass(frozen=True, slots=True)
class Request:
    uri: str
    origin: bytes
    id: str
    body: Any
    attachment: PayloadObject | None = None

    @property
    def origin_text(self) -> str:
        return key_to_text(self.origin)


def _request_id(message_value: Any) -> str | None:
    if isinstance(message_value, dict):
        rid = message_value.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
            return rid
    return None


class Requester:
    """Sends requests for one client and routes replies back to the waiting callers."""

    def __init__(self, client: Endpoint) -> None:
        self._client = client
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._routes: set[str] = set()
        self._route_lock = anyio.Lock()
        self._expected: dict[str, bytes] = {}
        self.foreign_replies = 0

    def expect(self, slot_uri: str, origin: bytes) -> None:
        """Accept replies to requests on ``slot_uri`` (and every slot of its prefix) only when
        signed by ``origin``."""
        self._expected[reply_uri(slot_uri, self._client.key_text)] = origin

    async def request(
        self,
        uri: str,
        body: Any,
        *,
        timeout_s: float = 10.0,
        request_id: str | None = None,
        attachment: PayloadObject | None = None,
    ) -> Any:
        """``attachment``, a binary PO, travels next to the request PO (module docstring)."""
        if attachment is not None and attachment.kind != "binary":
            raise InvalidRequest(f"an attachment is a binary PO (1.x.x.x), not {attachment.number}")
        await self._ensure_route(reply_uri(uri, self._client.key_text))
        rid = request_id or uuid.uuid4().hex
        if rid in self._pending:
            raise Conflict(f"request id {rid!r} is already waiting for a reply")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            request = PayloadObject.msgpack({"id": rid, "body": body}, PO_REQUEST)
            await self._client.publish(
                uri, request if attachment is None else (request, attachment)
            )
            with anyio.fail_after(timeout_s):
                reply = await future
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {uri} within {timeout_s:g} s (is the service running?)",
                uri=uri,
                id=rid,
            ) from None
        finally:
            self._pending.pop(rid, None)
        return _result_of(reply)

    async def _ensure_route(self, reply_to: str) -> None:
        if reply_to in self._routes:
            return
        async with self._route_lock:
            if reply_to not in self._routes:
                await self._client.require_task_group().start(self._route, reply_to)
                self._routes.add(reply_to)

    async def _route(self, reply_to: str, *, task_status: TaskStatus[None]) -> None:
        async with self._client.subscribe(reply_to, check_scope=False) as stream:
            task_status.started()
            async for message in stream:
                expected = self._expected.get(reply_to)
                if expected is not None and message.origin != expected:
                    self.foreign_replies += 1
                    if self.foreign_replies & (self.foreign_replies - 1) == 0:  # 1, 2, 4, 8…
                        logger.warning(
                            "dropped a reply on %s signed by %s, not by the service (%d so far)",
                            reply_to,
                            message.origin_text,
                            self.foreign_replies,
                        )
                    continue
                try:
                    reply = message.value(PO_REPLY)
                except DecodeError as error:
                    logger.warning("undecodable reply on %s: %s", reply_to, error.message)
                    continue
                future = self._pending.get(_request_id(reply) or "")
                if future is not None and not future.done():
                    future.set_result(reply)


def _result_of(reply: Any) -> Any:
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise DecodeError("a reply is {id, ok, result | error}")
    if reply["ok"]:
        return reply.get("result")
    error = reply.get("error")
    if not isinstance(error, dict):
        raise DecodeError("an error reply carries {code, message, details}")
    raise error_from_wire(error.get("code"), error.get("message"), error.get("details"))


class ServeGate:
    """Shared by the responders of one service to shut down gracefully: counts requests in
    flight and, once closed, answers new requests ``overloaded`` while those finish."""

    def __init__(self) -> None:
        self.is_closed = False
        self.in_flight = 0
        self._changed = anyio.Event()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.is_closed:  # someone may be draining: wake them
            self._changed.set()
            self._changed = anyio.Event()

    async def drain(self, timeout_s: float) -> int:
        """Close the gate and wait (shielded, at most ``timeout_s``) for requests in flight;
        returns how many were still running."""
        self.is_closed = True
        with anyio.move_on_after(timeout_s, shield=True):
            while self.in_flight:
                await self._changed.wait()
        return self.in_flight


class Responder:
    """Serves requests arriving on a slot pattern with ``handler``, at most ``max_concurrency``
    at once and at most ``max_per_sender`` of one sender (more are answered ``overloaded``),
    caching the last ``reply_cache_size`` replies."""

    def __init__(
        self,
        client: Endpoint,
        handler: Handler,
        *,
        max_concurrency: int = 64,
        reply_cache_size: int = 4096,
        gate: ServeGate | None = None,
        max_per_sender: int | None = None,
    ) -> None:
        self._gate = gate or ServeGate()
        self._client = client
        self._handler = handler
        self.max_concurrency = max_concurrency
        self._cache_size = reply_cache_size
        self._replies: OrderedDict[tuple[bytes, str], dict[str, Any]] = OrderedDict()
        self._in_flight: set[tuple[bytes, str]] = set()
        self.max_per_sender = max_per_sender or max_concurrency
        self._per_sender: dict[bytes, int] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self, pattern: str, *, task_status: TaskStatus[None]) -> None:
        async with (
            self._client.subscribe(pattern, include_rejected=True, check_scope=False) as stream,
            anyio.create_task_group() as task_group,
        ):
            task_status.started()
            async for item in stream:
                try:
                    if isinstance(item, Rejected):
                        await self._answer_rejection(item)
                    else:
                        await self._accept(item, task_group)
                except Exception as exc:  # one request never ends the responder
                    logger.error(
                        "unexpected %s accepting a request on %s", type(exc).__name__, pattern
                    )

    async def _accept(self, message: Message, task_group: TaskGroup) -> None:
        try:
            value = message.value(PO_REQUEST)
        except DecodeError:
            value = None
        rid = _request_id(value)
        if rid is None or not isinstance(value, dict) or "body" not in value:
            logger.warning("malformed request on %s from %s", message.uri, message.origin_text)
            if rid is not None:
                error = InvalidRequest("a request is one 2.0.11.1 payload {id, body}")
                await self._send(message.uri, message.origin, _error_reply(rid, error))
            return
        if message.persist:
            refused = InvalidRequest("a request must not be persisted (persist flag set)")
            await self._send(message.uri, message.origin, _error_reply(rid, refused))
            return
        try:
            attachment = _attachment(message.pos)
        except InvalidRequest as refused:
            await self._send(message.uri, message.origin, _error_reply(rid, refused))
            return
        key = (message.origin, rid)
        if key in self._replies:
            await self._send(message.uri, message.origin, self._replies[key])
        elif key in self._in_flight:
            logger.debug("duplicate request %s while it runs; its reply will come", rid)
        elif self._gate.is_closed:
            closing = Overloaded("the service is shutting down; retry shortly")
            await self._send(message.uri, message.origin, _error_reply(rid, closing))
        elif len(self._in_flight) >= self.max_concurrency:
            busy = Overloaded(
                f"the service is handling {self.max_concurrency} requests; retry shortly",
                limit=self.max_concurrency,
            )
            await self._send(message.uri, message.origin, _error_reply(rid, busy))
        elif self._per_sender.get(message.origin, 0) >= self.max_per_sender:
            busy = Overloaded(
                f"this sender has {self.max_per_sender} requests running here, the most one "
                "sender may; retry once they are answered",
                limit=self.max_per_sender,
                per_sender=True,
            )
            await self._send(message.uri, message.origin, _error_reply(rid, busy))
        else:
            self._in_flight.add(key)
            self._per_sender[message.origin] = self._per_sender.get(message.origin, 0) + 1
            self._gate.enter()
            request = Request(message.uri, message.origin, rid, value["body"], attachment)
            task_group.start_soon(self._handle, request)

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
        self._replies[key] = reply
        while len(self._replies) > self._cache_size:
            self._replies.popitem(last=False)
        await self._send(request.uri, request.origin, reply)

    async def _answer_rejection(self, rejected: Rejected) -> None:
        """Reply with the typed error when the sender is authentic: never to a forged origin,
        never for a replay (the original gets its own reply)."""
        envelope = rejected.envelope
        if envelope is None or isinstance(rejected.error, ReplayedNonce | BadSignature):
            return
        try:
            envelope.check_signature()
            po = next((p for p in envelope.pos if p.number == PO_REQUEST), None)
            rid = _request_id(po.value() if po else None)
        except BusError:
            return
        if rid is not None and envelope.uri == rejected.topic:
            # The reply goes under the slot the frame arrived on, never a place the sender
            # chose: a frame signed for another URI than its topic gets no answer at all.
            await self._send(rejected.topic, envelope.origin, _error_reply(rid, rejected.error))

    async def _send(self, uri: str, origin: bytes, reply: dict[str, Any]) -> None:
        try:
            target = reply_uri(uri, key_to_text(origin))
            await self._client.publish(target, PayloadObject.msgpack(reply, PO_REPLY))
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
