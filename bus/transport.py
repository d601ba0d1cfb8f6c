"""The transport seam: how signed frames move, and nothing about what they mean.

A transport carries opaque frames (encoded envelopes) on concrete topics (bus URIs). It does not
verify anything: the bus client does. Implementations live in ``transports/`` (memory, zeromq,
mqtt) and are opened from a URL by ``transports.open_transport``.

Back-pressure: every subscription is a bounded stream (``buffer`` deliveries, default 10,000,
and ``buffer_bytes`` of frames, default 64 MiB — counts alone would let 10,000 frames near the
16 MiB limit hold 160 GB). When a consumer falls that far behind, the transport drops the
*newest* deliveries for that subscription only (a delivery larger than ``buffer_bytes`` still
passes when nothing is queued), counts them in ``Subscription.dropped`` and logs a warning:
one slow consumer never stalls the connection or other subscriptions. Flow control that must
not lose data (chunked uploads) is done above the transport with acknowledged windows.

Persisted messages: ``publish(..., persist=True)`` keeps the frame as the latest for that exact
topic (MQTT retained); ``query(pattern)`` returns the kept frames whose topics match; publishing an
empty frame with ``persist=True`` deletes the kept frame. ``subscribe`` delivers live frames only,
never persisted ones, on every transport.

Limits: ``publish`` refuses a frame over the transport's ``max_frame_bytes`` (16 MiB) with
``FrameTooLarge`` before anything is sent (:func:`check_frame_size`): the connection stays usable.

Shared subscriptions: ``subscribe(pattern, share_group=G)`` joins the group ``G`` of
subscribers to ``pattern``; each frame matching it goes to exactly one member of the group (on
any connection), not to every one (MQTT 5 ``$share/G/<filter>``; round robin on the memory
transport). Deliveries carry the real topic and are matched against ``pattern`` as any other.
A group name is 1-64 of ``[A-Za-z0-9._-]``. ZeroMQ has no such thing and raises
``Unsupported``.

Reconnection: a transport that reconnects on its own (MQTT) runs the hooks given to
``on_reconnect`` in order once the connection is back, before anything else is published on it
(a service re-announces its birth there; a requester re-sends what is waiting for a reply).
ZeroMQ sockets reconnect invisibly and the memory transport never disconnects: they keep the
hooks and never call them.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bus.envelope import DEFAULT_MAX_FRAME
from bus.errors import BusError, FrameTooLarge, InvalidUri, TransportClosed

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "Delivery",
    "ReconnectHook",
    "ReconnectHooks",
    "Subscription",
    "Transport",
    "Will",
    "check_frame_size",
    "check_share_group",
]

logger = logging.getLogger(__name__)

DEFAULT_BUFFER = 10_000
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = DEFAULT_MAX_FRAME  # the bus frame limit (PROTOCOL.md §9)
_SHARE_GROUP = re.compile(r"[A-Za-z0-9._-]{1,64}")

ReconnectHook = Callable[[], Awaitable[None]]
_IN_RECONNECT_HOOK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_reconnect_hook", default=False
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One frame as it came off the bus: untrusted until the bus client verifies it."""

    topic: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Will:
    """A persisted frame the broker publishes if this connection dies uncleanly (MQTT only)."""

    topic: str
    frame: bytes


class Subscription:
    """A bounded stream of deliveries for one pattern; iterate it with ``async for``.

    Transports feed it with :meth:`offer` from the event loop's thread. ``close()`` ends the
    iteration; it is idempotent and also called by the transport's ``close()``.
    """

    def __init__(
        self,
        pattern: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self.pattern = pattern
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self.dropped = 0
        self.queued_bytes = 0
        self._items: collections.deque[Delivery] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close: list[Callable[[], None]] = []

    @property
    def is_closed(self) -> bool:
        return self._closed

    def offer(self, delivery: Delivery) -> None:
        """Queue a delivery without blocking; drop and count it if the buffer is full."""
        if self._closed:
            return
        size = len(delivery.frame)
        over_bytes = bool(self._items) and self.queued_bytes + size > self.buffer_bytes
        if len(self._items) >= self.buffer or over_bytes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "subscription %s is %d deliveries (%d bytes) behind; dropped %d so far",
                    self.pattern,
                    len(self._items),
                    self.queued_bytes,
                    self.dropped,
                )
            return
        self._items.append(delivery)
        self.queued_bytes += size
        self._ready.set()

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` (sync) once when the subscription closes; transports unsubscribe."""
        self._on_close.append(callback)

    async def close(self) -> None:
        self.close_nowait()

    def close_nowait(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        delivery = self._items.popleft()
        self.queued_bytes -= len(delivery.frame)
        return delivery

    def drain_nowait(self) -> list[Delivery]:
        """Take every queued delivery at once (for consumers that batch)."""
        items = list(self._items)
        self._items.clear()
        self.queued_bytes = 0
        return items

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@runtime_checkable
class Transport(Protocol):
    """Five async methods and a reconnect hook. ``close`` is idempotent and ends every
    subscription's stream."""

    url: str

    async def connect(self, *, will: Will | None = None) -> None:
        """Open the connection; ready to publish and subscribe when it returns."""

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        """Send a frame on a concrete topic; returns once the transport has taken it.
        A frame over the limit raises ``FrameTooLarge`` and nothing is sent."""

    async def subscribe(
        self, pattern: str, *, buffer: int = DEFAULT_BUFFER, share_group: str | None = None
    ) -> Subscription:
        """Start receiving live frames on a pattern; frames published after this returns arrive.
        With ``share_group``, each frame goes to one subscriber of the group (module docstring);
        a transport that cannot share raises ``Unsupported``."""

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Delivery]:
        """The persisted frames whose topics match ``pattern``."""

    async def close(self) -> None:
        """Disconnect cleanly (no Will is published) and end every subscription."""

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        """Run ``hook`` after every reconnection, before anything else is published on the
        connection; returns a function that removes it."""


def check_frame_size(topic: str, frame: bytes, max_frame_bytes: int) -> None:
    """Refuse a frame over the limit before it is sent: a broker or forwarder would drop it,
    or the whole connection with it."""
    if len(frame) > max_frame_bytes:
        raise FrameTooLarge(
            f"a frame of {len(frame)} bytes for {topic} is over the bus limit of "
            f"{max_frame_bytes} bytes; nothing was sent (files go by the chunked transfer, "
            "PROTOCOL.md §14; split a large batch of inputs into several requests)",
            size=len(frame),
            limit=max_frame_bytes,
        )


def check_share_group(group: str) -> str:
    """``group`` if it is a valid share group name, else ``InvalidUri``."""
    if not _SHARE_GROUP.fullmatch(group):
        raise InvalidUri(
            "a share group name is 1-64 letters, digits, '.', '_' or '-'", uri=group[:80]
        )
    return group


class ReconnectHooks:
    """The hooks of one transport's ``on_reconnect``, run in order by :meth:`run`. A hook that
    fails is logged and the next one runs; cancellation propagates."""

    def __init__(self) -> None:
        self._hooks: list[ReconnectHook] = []

    def add(self, hook: ReconnectHook) -> Callable[[], None]:
        self._hooks.append(hook)

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    async def run(self) -> None:
        token = _IN_RECONNECT_HOOK.set(True)
        try:
            for hook in list(self._hooks):
                try:
                    await hook()
                except BusError as error:
                    logger.warning("a reconnect hook failed: %s", error.message)
                except Exception:
                    logger.exception("a reconnect hook failed")
        finally:
            _IN_RECONNECT_HOOK.reset(token)

    @staticmethod
    def is_running() -> bool:
        """True inside a hook: its publishes go before the reconnected connection opens."""
        return _IN_RECONNECT_HOOK.get()


def closed_error(url: str) -> TransportClosed:
    return TransportClosed(f"the transport {url} is closed", url=url)
