"""Request/response over pub/sub.

A request is published on a service's slot, ``<prefix>/slot/<name>``, with one payload object
``2.0.11.1`` = msgpack ``{id, body}``; the id is unique per requester. The reply goes to the
requester's own signal, ``<prefix>/signal/reply/<requester key>``, as ``2.0.11.2`` = msgpack
``{id, ok: true, result}`` or ``{id, ok: false, error: {code, message, details}}``. A request id
seen again returns the cached reply instead of running twice; while the first is still running
the duplicate is ignored (its reply will come). So a requester re-sends a request under the same
id — freshly signed — when its transport reconnects and whenever no reply came for a third of its
timeout (at least RETRY_MIN_S, at most RETRY_MAX_S): a request survives a broker restart, and a
service that was not yet subscribed again when it was sent, and is answered once. Replies are
cached within bounds (:mod:`bus.replycache`); a reply too large for a frame is replaced by a
``limit_exceeded`` error reply.

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
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bus import uri as uris
from bus.entity import key_to_text
from bus.errors import (
    Conflict,
    DecodeError,
    InvalidRequest,
    InvalidUri,
    RequestTimeout,
    TransportClosed,
    TransportError,
    error_from_wire,
)
from bus.message import MessageStream
from bus.po import PO_REPLY, PO_REQUEST, PayloadObject
from bus.transport import DEFAULT_MAX_FRAME_BYTES, ReconnectHook

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_REPLY_BYTES",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "Request",
    "Requester",
    "reply_uri",
    "request_id_of",
]

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 128
MAX_REPLY_BYTES = DEFAULT_MAX_FRAME_BYTES - 64 * 1024  # room for the envelope around it
RETRY_MIN_S = 1.0
RETRY_MAX_S = 5.0
Handler = Callable[["Request"], Awaitable[Any]]
_REPLY_URIS = 1024  # reply URIs remembered per requester or responder (a few slots in use)


class Endpoint(Protocol):
    """What request/response needs of a bus client (:class:`bus.BusClient` is one)."""

    @property
    def key_text(self) -> str: ...

    async def publish(
        self, uri: str, pos: PayloadObject | tuple[PayloadObject, ...], *, persist: bool = False
    ) -> None: ...

    def subscribe(
        self,
        pattern: str,
        *,
        include_rejected: bool = False,
        check_scope: bool = True,
        share_group: str | None = None,
    ) -> AbstractAsyncContextManager[MessageStream]: ...

    def require_task_group(self) -> TaskGroup: ...

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]: ...


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


def request_id_of(message_value: Any) -> str | None:
    if isinstance(message_value, dict):
        rid = message_value.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
            return rid
    return None


class _Waiter:
    """One request waiting for its reply; ``wake`` is set by the reply or by a reconnect."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.has_reply = False
        self.reply: Any = None
        self.send_error: str | None = None  # why the latest send failed, if it did


class Requester:
    """Sends requests for one client and routes replies back to the waiting callers."""

    def __init__(self, client: Endpoint) -> None:
        self._client = client
        self._pending: dict[str, _Waiter] = {}
        self._routes: set[str] = set()
        self._route_lock = anyio.Lock()
        self._remove_hook: Callable[[], None] | None = None
        self._expected: dict[str, bytes] = {}
        self._reply_uris: dict[str, str] = {}  # slot URI -> this requester's reply URI
        self.foreign_replies = 0

    def _reply_uri(self, uri: str) -> str:
        known = self._reply_uris.get(uri)
        if known is None:
            known = reply_uri(uri, self._client.key_text)
            if len(self._reply_uris) >= _REPLY_URIS:
                self._reply_uris.clear()
            self._reply_uris[uri] = known
        return known

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
        await self._ensure_route(self._reply_uri(uri))
        rid = request_id or secrets.token_hex(16)
        if rid in self._pending:
            raise Conflict(f"request id {rid!r} is already waiting for a reply")
        request = PayloadObject.msgpack({"id": rid, "body": body}, PO_REQUEST)
        pos = request if attachment is None else (request, attachment)
        waiter = self._pending[rid] = _Waiter()
        try:
            with anyio.fail_after(timeout_s):
                retry_after_s = max(RETRY_MIN_S, min(RETRY_MAX_S, timeout_s / 3))
                reply = await self._exchange(uri, pos, waiter, retry_after_s)
        except TimeoutError:
            if waiter.send_error is not None:  # the bus, not the service, is the likely cause
                raise RequestTimeout(
                    f"no reply from {uri} within {timeout_s:g} s; the last attempt to send "
                    f"the request failed: {waiter.send_error}",
                    uri=uri,
                    id=rid,
                ) from None
            raise RequestTimeout(
                f"no reply from {uri} within {timeout_s:g} s (is the service running?)",
                uri=uri,
                id=rid,
            ) from None
        finally:
            self._pending.pop(rid, None)
        return _result_of(reply)

    async def _exchange(
        self,
        uri: str,
        pos: PayloadObject | tuple[PayloadObject, ...],
        waiter: _Waiter,
        retry_after_s: float,
    ) -> Any:
        """Publish until the reply comes: again (same id, signed afresh) after a reconnect, a
        failed send, or ``retry_after_s`` without a reply. The caller bounds the whole."""
        loop = asyncio.get_running_loop()
        while True:
            waiter.wake = wake = asyncio.Event()
            try:
                await self._client.publish(uri, pos)
                waiter.send_error = None
            except TransportClosed:
                raise
            except TransportError as error:
                waiter.send_error = error.message
                logger.info("sending a request on %s failed, will retry: %s", uri, error.message)
            retry = loop.call_later(retry_after_s, wake.set)  # a timer, not a cancel scope
            try:
                await wake.wait()
            finally:
                retry.cancel()
            if waiter.has_reply:
                return waiter.reply

    async def _wake_all(self) -> None:
        """The transport reconnected: replies sent meanwhile may be lost; ask again."""
        for waiter in self._pending.values():
            waiter.wake.set()

    async def _ensure_route(self, reply_to: str) -> None:
        if reply_to in self._routes:
            return
        async with self._route_lock:
            if self._remove_hook is None:
                self._remove_hook = self._client.on_reconnect(self._wake_all)
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
                waiter = self._pending.get(request_id_of(reply) or "")
                if waiter is not None and not waiter.has_reply:
                    waiter.reply, waiter.has_reply = reply, True
                    waiter.wake.set()


def _result_of(reply: Any) -> Any:
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise DecodeError("a reply is {id, ok, result | error}")
    if reply["ok"]:
        return reply.get("result")
    error = reply.get("error")
    if not isinstance(error, dict):
        raise DecodeError("an error reply carries {code, message, details}")
    raise error_from_wire(error.get("code"), error.get("message"), error.get("details"))
