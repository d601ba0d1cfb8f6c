"""The forwarder: the bus hub that ``modelbus bus`` (or an embedding ``modelbus serve``) runs.

It binds XSUB (P), XPUB (P+1) and ROUTER (P+2) — see :mod:`transports.zeromq` for the wire —
forwards every data frame to the subscribers whose prefix matches, keeps persisted frames in
memory and answers control requests (ping, persist, query). Data messages it drops are counted
by reason in ``Forwarder.dropped`` (``parts``: not [topic, frame]; ``oversized``: a frame over
the limit but under ZeroMQ's hard limit, which disconnects the sending peer instead); the
connections of subscribers are never disturbed.

Kept frames are bounded, in count and in bytes (``max_persisted``, ``max_persisted_bytes``):
anyone who reaches the control port may persist, so a persist that would go over either bound
is refused with ``[error, message, b"limit_exceeded"]`` and the frame kept before stays.
Replacing a kept frame counts only the difference; a deletion is always accepted.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import anyio
import zmq
import zmq.asyncio

from bus import uri as uris
from bus.errors import BusError, InvalidRequest, LimitExceeded, TransportError
from transports.zeromq.client import ZmqTransport
from transports.zeromq.sockets import (
    DEFAULT_HWM,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PORT,
    ERROR,
    HARD_LIMIT_MARGIN,
    OK,
    Frames,
    LocalLink,
    Parts,
    Pump,
    SocketSet,
    SyncSocket,
    send_parts,
    split_url,
)

__all__ = ["DEFAULT_MAX_PERSISTED", "DEFAULT_MAX_PERSISTED_BYTES", "Forwarder"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PERSISTED = 65_536  # kept frames (topics)
DEFAULT_MAX_PERSISTED_BYTES = 64 * 1024 * 1024  # their bytes, in all
LIMIT_CODE = b"limit_exceeded"


class Relay:
    """What the forwarder does with each message: synchronous, and never raises on bad input."""

    def __init__(
        self,
        xpub: SyncSocket,
        router: SyncSocket,
        max_frame_bytes: int,
        dropped: Counter[str],
        *,
        max_persisted: int = DEFAULT_MAX_PERSISTED,
        max_persisted_bytes: int = DEFAULT_MAX_PERSISTED_BYTES,
    ) -> None:
        self.persisted: dict[str, bytes] = {}
        self.persisted_bytes = 0
        self.dropped = dropped
        self._xpub = xpub
        self._router = router
        self._max_frame_bytes = max_frame_bytes
        self._max_persisted = max_persisted
        self._max_persisted_bytes = max_persisted_bytes

    def on_data(self, frames: Frames) -> None:
        """Forward a published message as the frames ZeroMQ received: its bytes never copied."""
        if len(frames) != 2:
            self.dropped["parts"] += 1
            logger.debug("dropped a data message of %d parts (expected topic, frame)", len(frames))
        elif len(frames[1]) > self._max_frame_bytes:
            self.dropped["oversized"] += 1
            logger.warning(
                "dropped a frame of %d bytes on %r: the bus limit is %d bytes",
                len(frames[1]),
                frames[0].bytes[:100],
                self._max_frame_bytes,
            )
        else:
            send_parts(self._xpub, frames)

    def on_subscription(self, parts: Parts) -> None:
        change = parts[0] if parts else b""
        logger.debug(
            "subscriber %s %r", "joined" if change[:1] == b"\x01" else "left", change[1:100]
        )

    def on_control(self, parts: Parts) -> None:
        identity, request = parts[0], parts[1:]
        try:
            reply = self._answer(request)
        except (BusError, UnicodeDecodeError) as exc:
            logger.warning("refused a control request %r: %s", request[:1], exc)
            reply = [ERROR, str(exc).encode()]
        except Exception:
            logger.exception("failed to answer a control request %r", request[:1])
            reply = [ERROR, b"internal error in the bus forwarder; see its log"]
        send_parts(self._router, [identity, *reply])

    def _answer(self, request: Parts) -> Parts:
        verb, args = (request[0], request[1:]) if request else (b"", [])
        if verb == b"ping" and not args:
            return [OK]
        if verb == b"persist" and len(args) == 2:
            return self._persist(args[0], args[1])
        if verb == b"query" and len(args) == 1:
            return self._query(args[0])
        raise InvalidRequest(
            f"unknown control request {verb[:32]!r} with {len(args)} arguments; "
            "expected [ping], [persist, topic, frame] or [query, pattern]"
        )

    def _persist(self, raw_topic: bytes, frame: bytes) -> Parts:
        topic = raw_topic.decode()
        uris.parse(topic)
        if len(frame) > self._max_frame_bytes:
            raise LimitExceeded(
                f"a frame of {len(frame)} bytes is over the bus limit of "
                f"{self._max_frame_bytes} bytes"
            )
        if frame:
            refusal = self._refusal(topic, len(frame))
            if refusal is not None:
                logger.warning("refused a persist on %r: %s", topic[:100], refusal)
                return [ERROR, refusal.encode(), LIMIT_CODE]
            self.persisted_bytes += len(frame) - len(self.persisted.get(topic, b""))
            self.persisted[topic] = frame
        else:
            self.persisted_bytes -= len(self.persisted.pop(topic, b""))
        send_parts(self._xpub, [raw_topic, frame])
        return [OK]

    def _refusal(self, topic: str, size: int) -> str | None:
        """Why keeping ``size`` bytes on ``topic`` would go over the bounds; None if it fits."""
        old = self.persisted.get(topic)
        count = len(self.persisted) + (old is None)
        total = self.persisted_bytes + size - len(old or b"")
        if count <= self._max_persisted and total <= self._max_persisted_bytes:
            return None
        return (
            f"the bus keeps at most {self._max_persisted} persisted frames of "
            f"{self._max_persisted_bytes} bytes in all; it keeps {len(self.persisted)} of "
            f"{self.persisted_bytes} bytes"
        )

    def _query(self, raw_pattern: bytes) -> Parts:
        pattern = raw_pattern.decode()
        prefix = uris.literal_prefix(pattern)
        reply = [OK]
        for topic in sorted(self.persisted):
            if topic.startswith(prefix) and uris.matches(pattern, topic):
                reply += [topic.encode(), self.persisted[topic]]
        return reply


class Forwarder:
    """The hub of a ZeroMQ bus: ``async with Forwarder(url) as fwd:`` serves until the block ends.

    A command line runs it with ``bus.runner.run(Forwarder(url).serve_forever)``.
    ``max_frame_bytes`` bounds every frame it forwards or keeps; ``max_persisted`` and
    ``max_persisted_bytes`` bound the frames it keeps (module docstring); ``hwm`` is every
    socket's high-water mark.
    """

    def __init__(
        self,
        url: str = f"zmq://127.0.0.1:{DEFAULT_PORT}",
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        hwm: int = DEFAULT_HWM,
        max_persisted: int = DEFAULT_MAX_PERSISTED,
        max_persisted_bytes: int = DEFAULT_MAX_PERSISTED_BYTES,
    ) -> None:
        self.url = url
        self.max_frame_bytes = max_frame_bytes
        self.max_persisted = max_persisted
        self.max_persisted_bytes = max_persisted_bytes
        self.relay: Relay | None = None
        self._hwm = hwm
        self.dropped: Counter[str] = Counter()
        split_url(url)  # a bad URL fails here, not at __aenter__
        self._stack: AsyncExitStack | None = None
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._link: LocalLink | None = None

    async def __aenter__(self) -> Forwarder:
        if self._stack is not None:
            raise RuntimeError(f"the forwarder {self.url} is already running")
        async with AsyncExitStack() as stack:
            sockets = SocketSet(self.url, hwm=self._hwm)
            stack.callback(sockets.close)
            link = LocalLink(sockets.context, f"modelbus-bus-{secrets.token_hex(8)}")
            self._sockets = self._bind(sockets, link)
            self._link = link
            task_group = await stack.enter_async_context(anyio.create_task_group())
            task_group.start_soon(self._serve, self._sockets)
            stack.callback(task_group.cancel_scope.cancel)
            self._stack = stack.pop_all()
        logger.info(
            "bus forwarder on %s: publishers %s, subscribers %s, control %s",
            self.url,
            *(sockets.endpoint(offset) for offset in range(3)),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack, self._sockets, self._link = self._stack, None, {}, None
        if stack is not None:
            await stack.aclose()

    async def serve_forever(self) -> None:
        """Bind and serve until cancelled."""
        async with self:
            await anyio.sleep_forever()

    def socket_options(self) -> dict[str, dict[str, int]]:
        """High-water marks and size limits as the running sockets report them."""
        options = {"sndhwm": zmq.SNDHWM, "rcvhwm": zmq.RCVHWM, "maxmsgsize": zmq.MAXMSGSIZE}
        return {
            role: {name: int(sock.getsockopt(option)) for name, option in options.items()}
            for role, sock in self._sockets.items()
        }

    def local_transport(self, **options: Any) -> ZmqTransport:
        """A transport to this running forwarder from its own process, over ``inproc://``
        endpoints: the same bus, without TCP or ZeroMQ's I/O thread in between (the service
        that embeds the bus talks to it this way). ``options`` as for :class:`ZmqTransport`."""
        if self._link is None:
            raise RuntimeError(f"the forwarder {self.url} is not running")
        return ZmqTransport(self.url, local=self._link, **options)

    def _bind(self, sockets: SocketSet, link: LocalLink) -> dict[str, zmq.asyncio.Socket]:
        hard_limit = self.max_frame_bytes + HARD_LIMIT_MARGIN
        bound = {
            "xsub": sockets.open(zmq.XSUB, 0, is_bind=True, options={zmq.MAXMSGSIZE: hard_limit}),
            "xpub": sockets.open(zmq.XPUB, 1, is_bind=True),
            "router": sockets.open(
                zmq.ROUTER, 2, is_bind=True, options={zmq.MAXMSGSIZE: hard_limit}
            ),
        }
        try:  # subscribe to everything, once; the XPUB filters per subscriber
            for offset, role in enumerate(("xsub", "xpub", "router")):
                bound[role].bind(link.endpoint(offset))
            zmq.Socket.shadow(bound["xsub"]).send(b"\x01")
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot start the forwarder {self.url}: {exc}") from exc
        return bound

    async def _serve(self, sockets: dict[str, zmq.asyncio.Socket]) -> None:
        shadows: dict[str, SyncSocket] = {
            role: zmq.Socket.shadow(sock) for role, sock in sockets.items()
        }
        relay = self.relay = Relay(
            shadows["xpub"],
            shadows["router"],
            self.max_frame_bytes,
            self.dropped,
            max_persisted=self.max_persisted,
            max_persisted_bytes=self.max_persisted_bytes,
        )
        pump = Pump(
            [(shadows["xpub"], relay.on_subscription), (shadows["router"], relay.on_control)],
            frames=[(shadows["xsub"], relay.on_data)],
        )
        try:
            await pump.failed
        except zmq.ZMQError as exc:
            raise TransportError(f"the forwarder {self.url} failed: {exc}", url=self.url) from exc
        finally:
            pump.stop()
