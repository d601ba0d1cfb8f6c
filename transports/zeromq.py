"""The ZeroMQ transport and its forwarder, the hub that ``modelbus bus`` runs.

Ports: a bus URL ``zmq://host:P`` names three consecutive TCP ports on the forwarder.

    P     XSUB    publishers connect their XPUB here; the forwarder subscribes to everything
    P+1   XPUB    subscribers connect their SUB here; ZeroMQ filters by topic prefix per subscriber
    P+2   ROUTER  control requests from a DEALER

Wire: multipart ZeroMQ messages and nothing else; topics are UTF-8 bus URIs, frames are opaque.

    data      [topic, frame]                     XPUB -> XSUB, forwarded XPUB -> SUB
    control   [b"ping"]                          -> [b"ok"]
              [b"persist", topic, frame]         -> [b"ok"]  after keeping ``frame`` as the latest
                                                    for ``topic`` (empty deletes it) and forwarding
                                                    [topic, frame] to live subscribers
              [b"query", pattern]                -> [b"ok", topic1, frame1, topic2, frame2, ...]
                                                    kept frames matching ``pattern``, by topic
              anything else                      -> [b"error", message]

A client subscribes its SUB to the literal prefix of a pattern (``bus.uri.literal_prefix``) and
filters every delivery with ``bus.uri.matches``. Readiness is awaited, never slept for:
``connect()`` waits for the forwarder's subscription to arrive on the client's XPUB, and
``subscribe()`` sends a private probe (topic ``\\x00probe\\x00<hex>``, never a valid URI, forwarded
but never kept or validated) through the forwarder and returns once it comes back on the SUB. A
probe can overtake the subscription it checks, so it is re-sent with a growing interval until it
returns. ``close()`` sends one more probe so that frames published before it reach the forwarder.

Limits and ordering: high-water marks of 100,000 messages on every socket, set before bind and
connect. A publisher blocks (up to ``request_timeout_s``) instead of dropping when its own queue
is full; the forwarder drops per slow subscriber. Frames above ``max_frame_bytes`` (16 MiB) are
dropped by the forwarder with a warning; a peer sending a frame 1 MiB above that is disconnected by
ZeroMQ itself (MAXMSGSIZE). Live frames from one transport arrive in publish order; persisted
publishes are acknowledged one by one and are not ordered with live ones. Kept frames live in the
forwarder's memory and go when it stops.

ZeroMQ has no Last Will: a ``will`` passed to ``connect()`` is ignored (and logged). Liveness on
this transport is by staleness of ``!meta/lastalive``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import zmq
import zmq.asyncio

from bus import uri as uris
from bus.errors import BusError, InvalidRequest, InvalidUri, LimitExceeded, TransportError
from bus.transport import DEFAULT_BUFFER, Delivery, Subscription, Will, closed_error

__all__ = ["DEFAULT_HWM", "DEFAULT_MAX_FRAME_BYTES", "DEFAULT_PORT", "Forwarder", "ZmqTransport"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7700
DEFAULT_HWM = 100_000
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_HARD_LIMIT_MARGIN = 1024 * 1024
_DRAIN_BATCH = 1000
_PUMP_ROUNDS = 8
_PROBE_PREFIX = b"\x00probe\x00"
_OK = b"ok"
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_ZERO_COPY_OVER = 64 * 1024
_ERROR = b"error"

Parts = list[bytes]
Frames = list[zmq.Frame]
_SyncSocket = zmq.Socket[bytes]


# -- sockets ---------------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, int, bool]:
    """``zmq://host:P`` -> (``tcp://host``, P, is IPv6); TransportError if it is no bus URL."""
    split = urlsplit(url)
    try:
        port = DEFAULT_PORT if split.port is None else split.port
    except ValueError as exc:
        raise TransportError(f"bad port in the bus URL {url!r}", url=url) from exc
    host = split.hostname
    if split.scheme != "zmq" or not host or not 0 < port <= 65533:
        raise TransportError(
            f"a ZeroMQ bus URL looks like zmq://127.0.0.1:{DEFAULT_PORT} "
            f"(it uses ports P, P+1 and P+2), not {url!r}",
            url=url,
        )
    is_ipv6 = ":" in host
    return (f"tcp://[{host}]" if is_ipv6 else f"tcp://{host}"), port, is_ipv6


@dataclass(frozen=True)
class _LocalLink:
    """A running forwarder's in-process endpoints: its context and ``inproc://`` names."""

    context: zmq.asyncio.Context
    name: str

    def endpoint(self, offset: int) -> str:
        return f"inproc://{self.name}-{offset}"


class _SocketSet:
    """The sockets made for one bus URL, on a private context (or, ``local``, on an in-process
    forwarder's context, to its ``inproc://`` endpoints); ``close()`` is linger=0."""

    def __init__(self, url: str, *, hwm: int, local: _LocalLink | None = None) -> None:
        self.url = url
        self._base, self._port, self._is_ipv6 = _split_url(url)
        self._hwm = hwm
        self._local = local
        self._context = zmq.asyncio.Context() if local is None else local.context
        self._sockets: list[zmq.asyncio.Socket] = []

    @property
    def context(self) -> zmq.asyncio.Context:
        return self._context

    def endpoint(self, offset: int) -> str:
        if self._local is not None:
            return self._local.endpoint(offset)
        return f"{self._base}:{self._port + offset}"

    def open(
        self, kind: int, offset: int, *, is_bind: bool, options: dict[int, int] | None = None
    ) -> zmq.asyncio.Socket:
        """A socket with high-water marks set *before* it binds or connects (later is ignored)."""
        endpoint = self.endpoint(offset)
        settings: dict[int, int] = {zmq.LINGER: 0, zmq.SNDHWM: self._hwm, zmq.RCVHWM: self._hwm}
        settings |= {zmq.IPV6: int(self._is_ipv6), **(options or {})}
        try:
            sock = self._context.socket(kind)
            self._sockets.append(sock)
            for option, value in settings.items():
                sock.setsockopt(option, value)
            if is_bind:
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            action = "bind" if is_bind else "connect to"
            raise TransportError(
                f"cannot {action} {endpoint} for the bus {self.url}: {exc}", url=self.url
            ) from exc
        return sock

    def close(self) -> None:
        if self._local is None:
            self._context.destroy(linger=0)
            return
        for sock in self._sockets:  # the context is the forwarder's: close only ours
            sock.close(linger=0)


def _publish(sock: _SyncSocket, parts: Parts) -> None:
    """Send without blocking (``zmq.Again`` when full). Big frames are handed to ZeroMQ by
    reference instead of copied (bytes are immutable; pyzmq keeps them alive until sent)."""
    sock.send_multipart(parts, _NOBLOCK, copy=len(parts[-1]) < _ZERO_COPY_OVER)


def _readable(sock: _SyncSocket) -> bool:
    """Whether a whole message waits (plain ints: pyzmq's flag enums cost more than the call)."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def _drain(sock: _SyncSocket, handle: Callable[[Parts], None]) -> None:
    """Take what is queued, a batch at most, without awaiting (10x faster than awaiting each);
    ``EVENTS`` is asked before each receive, which is cheaper than a ``zmq.Again`` raised."""
    for _ in range(_DRAIN_BATCH):
        if not _readable(sock):
            return
        handle(sock.recv_multipart(_NOBLOCK))


def _drain_frames(sock: _SyncSocket, handle: Callable[[Frames], None]) -> None:
    """``_drain`` without copying the bytes out of ZeroMQ: each part a ``zmq.Frame``."""
    for _ in range(_DRAIN_BATCH):
        if not _readable(sock):
            return
        handle(sock.recv_multipart(_NOBLOCK, copy=False))


class _Pump:
    """Drains sockets straight from the event loop's reader callbacks: no task, no future per
    wake-up. A ZeroMQ socket's FD is edge-triggered and any operation on the socket may consume
    the edge, so every run drains until ``EVENTS`` shows nothing readable, and ``kick()`` runs it
    after operations that could have swallowed an edge (subscribing, sending). Sockets given to a
    pump must never be awaited through zmq.asyncio (that would claim the same FD). The sockets
    in ``frames`` are drained without copying (their handlers take ``zmq.Frame`` parts)."""

    def __init__(
        self,
        pairs: list[tuple[_SyncSocket, Callable[[Parts], None]]],
        *,
        frames: Sequence[tuple[_SyncSocket, Callable[[Frames], None]]] = (),
    ) -> None:
        self._pairs = pairs
        self._frame_pairs = list(frames)
        self._loop = asyncio.get_running_loop()
        sockets = [sock for sock, _ in pairs] + [sock for sock, _ in self._frame_pairs]
        self._fds = [int(sock.getsockopt(zmq.FD)) for sock in sockets]
        self.failed: asyncio.Future[None] = self._loop.create_future()
        for fd in self._fds:
            self._loop.add_reader(fd, self.kick)
        self._loop.call_soon(self.kick)

    def kick(self) -> None:
        if self.failed.done():
            return
        try:
            for _ in range(_PUMP_ROUNDS):
                if not self._drain_once():
                    return
        except zmq.ZMQError as exc:
            self.stop()
            self.failed.set_exception(exc)
            return
        self._loop.call_soon(self.kick)  # more is waiting: let other callbacks run first

    def _drain_once(self) -> bool:
        busy = False
        for sock, handle in self._pairs:
            if _readable(sock):
                _drain(sock, handle)
                busy = True
        for sock, on_frames in self._frame_pairs:
            if _readable(sock):
                _drain_frames(sock, on_frames)
                busy = True
        return busy

    def stop(self) -> None:
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds = []


# -- the forwarder ---------------------------------------------------------------------------------


class _Relay:
    """What the forwarder does with each message: synchronous, and never raises on bad input."""

    def __init__(self, xpub: _SyncSocket, router: _SyncSocket, max_frame_bytes: int) -> None:
        self.persisted: dict[str, bytes] = {}
        self._xpub = xpub
        self._router = router
        self._max_frame_bytes = max_frame_bytes

    def on_data(self, frames: Frames) -> None:
        """Forward a published message as the frames ZeroMQ received: its bytes never copied."""
        if len(frames) != 2:
            logger.debug("dropped a data message of %d parts (expected topic, frame)", len(frames))
        elif len(frames[1]) > self._max_frame_bytes:
            logger.warning(
                "dropped a frame of %d bytes on %r: the bus limit is %d bytes",
                len(frames[1]),
                frames[0].bytes[:100],
                self._max_frame_bytes,
            )
        else:
            _send(self._xpub, frames)

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
            reply = [_ERROR, str(exc).encode()]
        except Exception:
            logger.exception("failed to answer a control request %r", request[:1])
            reply = [_ERROR, b"internal error in the bus forwarder; see its log"]
        _send(self._router, [identity, *reply])

    def _answer(self, request: Parts) -> Parts:
        verb, args = (request[0], request[1:]) if request else (b"", [])
        if verb == b"ping" and not args:
            return [_OK]
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
            self.persisted[topic] = frame
        else:
            self.persisted.pop(topic, None)
        _send(self._xpub, [raw_topic, frame])
        return [_OK]

    def _query(self, raw_pattern: bytes) -> Parts:
        pattern = raw_pattern.decode()
        prefix = uris.literal_prefix(pattern)
        reply = [_OK]
        for topic in sorted(self.persisted):
            if topic.startswith(prefix) and uris.matches(pattern, topic):
                reply += [topic.encode(), self.persisted[topic]]
        return reply


def _send(sock: _SyncSocket, parts: Parts | Frames) -> None:
    """Send without blocking: XPUB drops for a full subscriber, ROUTER for a vanished peer.
    Frames and large byte strings are handed to ZeroMQ without a copy."""
    try:
        sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
    except zmq.ZMQError as exc:
        logger.warning("could not forward a message: %s", exc)


class Forwarder:
    """The hub of a ZeroMQ bus: ``async with Forwarder(url) as fwd:`` serves until the block ends.

    A command line runs it with ``bus.runner.run(Forwarder(url).serve_forever)``.
    ``max_frame_bytes`` bounds every frame it forwards or keeps; ``hwm`` is every socket's
    high-water mark.
    """

    def __init__(
        self,
        url: str = f"zmq://127.0.0.1:{DEFAULT_PORT}",
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        self.url = url
        self.max_frame_bytes = max_frame_bytes
        self._hwm = hwm
        _split_url(url)  # a bad URL fails here, not at __aenter__
        self._stack: AsyncExitStack | None = None
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._link: _LocalLink | None = None

    async def __aenter__(self) -> Forwarder:
        if self._stack is not None:
            raise RuntimeError(f"the forwarder {self.url} is already running")
        async with AsyncExitStack() as stack:
            sockets = _SocketSet(self.url, hwm=self._hwm)
            stack.callback(sockets.close)
            link = _LocalLink(sockets.context, f"modelbus-bus-{secrets.token_hex(8)}")
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
        transport = ZmqTransport(self.url, **options)
        transport._local = self._link
        return transport

    def _bind(self, sockets: _SocketSet, link: _LocalLink) -> dict[str, zmq.asyncio.Socket]:
        hard_limit = self.max_frame_bytes + _HARD_LIMIT_MARGIN
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
        shadows: dict[str, _SyncSocket] = {
            role: zmq.Socket.shadow(sock) for role, sock in sockets.items()
        }
        relay = _Relay(shadows["xpub"], shadows["router"], self.max_frame_bytes)
        pump = _Pump(
            [(shadows["xpub"], relay.on_subscription), (shadows["router"], relay.on_control)],
            frames=[(shadows["xsub"], relay.on_data)],
        )
        try:
            await pump.failed
        except zmq.ZMQError as exc:
            raise TransportError(f"the forwarder {self.url} failed: {exc}", url=self.url) from exc
        finally:
            pump.stop()


# -- the transport ---------------------------------------------------------------------------------


@dataclass
class _Connection:
    """One client's sockets: XPUB to the forwarder's XSUB, SUB from its XPUB, DEALER to ROUTER."""

    sockets: _SocketSet
    pub: zmq.asyncio.Socket
    sub: zmq.asyncio.Socket
    dealer: zmq.asyncio.Socket
    pub_out: _SyncSocket
    sub_in: _SyncSocket

    @classmethod
    def open(cls, sockets: _SocketSet) -> _Connection:
        pub = sockets.open(zmq.XPUB, 0, is_bind=False, options={zmq.XPUB_NODROP: 1})
        sub = sockets.open(zmq.SUB, 1, is_bind=False)
        dealer = sockets.open(zmq.DEALER, 2, is_bind=False)
        return cls(sockets, pub, sub, dealer, zmq.Socket.shadow(pub), zmq.Socket.shadow(sub))

    def replace_dealer(self) -> None:
        """A fresh DEALER identity, so that a late reply to a timed-out request is never read."""
        self.dealer.close(linger=0)
        self.dealer = self.sockets.open(zmq.DEALER, 2, is_bind=False)


class ZmqTransport:
    """A bus client of a ZeroMQ forwarder at ``zmq://host:P`` (see the module docstring).

    ``connect_timeout_s`` bounds finding the forwarder; ``request_timeout_s`` bounds persisting,
    subscribing and a full send queue; ``flush_timeout_s`` bounds ``close()`` making sure frames
    published before it reached the forwarder; ``hwm`` is every socket's high-water mark.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 5.0,
        flush_timeout_s: float = 1.0,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        _split_url(url)  # a bad URL fails here, not at connect()
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._hwm = hwm
        self._local: _LocalLink | None = None  # set by Forwarder.local_transport()
        self._conn: _Connection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._pump: _Pump | None = None
        self._subscriptions: dict[Subscription, bytes] = {}
        self._probes: dict[bytes, asyncio.Event] = {}
        self._control_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._is_closing = False
        self._has_unconfirmed = False

    async def connect(self, *, will: Will | None = None) -> None:
        if self._is_closing:
            raise closed_error(self.url)
        if self._conn is not None:
            return
        if will is not None:
            logger.info(
                "ZeroMQ has no Last Will; %s will not be published for %s", will.topic, self
            )
        sockets = _SocketSet(self.url, hwm=self._hwm, local=self._local)
        try:
            conn = _Connection.open(sockets)
            with anyio.fail_after(self._connect_timeout_s):
                await self._handshake(conn)
        except TimeoutError:
            sockets.close()
            raise TransportError(
                f"no bus at {self.url}: nothing answered within {self._connect_timeout_s:g} s; "
                "start one with `modelbus bus`",
                url=self.url,
            ) from None
        except BaseException:
            sockets.close()
            raise
        self._conn = conn
        # The one task this adapter owns: the Transport protocol lets connect() and close() run
        # in different tasks, so no task group can span them; close() cancels and awaits it.
        self._receiver = asyncio.create_task(self._receive(conn), name=f"receive {self.url}")

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        conn = self._connection()
        uris.parse(topic)
        if persist:
            await self._request(conn, [b"persist", topic.encode(), frame], self._request_timeout_s)
        else:
            await self._send_live(conn, [topic.encode(), frame])
            self._has_unconfirmed = True

    async def subscribe(self, pattern: str, *, buffer: int = DEFAULT_BUFFER) -> Subscription:
        conn = self._connection()
        prefix = uris.literal_prefix(pattern).encode()  # validates the pattern
        subscription = Subscription(pattern, buffer=buffer)
        with self._translating("subscribe"):
            conn.sub.subscribe(prefix)  # counted by ZeroMQ: one unsubscribe per subscribe
        self._kick()
        self._subscriptions[subscription] = prefix
        subscription.add_close_callback(lambda: self._forget(subscription))
        try:
            await self._round_trip(conn)
            if self._is_closing:
                raise closed_error(self.url)
        except BaseException:
            subscription.close_nowait()
            raise
        return subscription

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Delivery]:
        conn = self._connection()
        uris.parse(pattern, allow_wildcards=True)
        reply = await self._request(conn, [b"query", pattern.encode()], timeout_s)
        if len(reply) % 2:
            raise TransportError(
                f"the bus at {self.url} sent a malformed query reply", url=self.url
            )
        try:
            return [Delivery(t.decode(), f) for t, f in zip(reply[::2], reply[1::2], strict=True)]
        except UnicodeDecodeError as exc:
            raise TransportError(f"the bus at {self.url} sent a non-UTF-8 topic") from exc

    async def close(self) -> None:
        if self._is_closing:
            return
        self._is_closing = True
        conn, self._conn = self._conn, None
        try:
            if conn is not None and self._has_unconfirmed:
                await self._flush(conn)
        finally:
            for subscription in list(self._subscriptions):
                subscription.close_nowait()
            for probe in self._probes.values():
                probe.set()
            if self._pump is not None:
                self._pump.stop()  # before the sockets close: their FD numbers may be reused
            if self._receiver is not None:
                self._receiver.cancel()  # it waits on its pump: it never sees a closed socket
            if conn is not None:
                conn.sockets.close()
        if self._receiver is not None:
            await asyncio.wait([self._receiver])

    def __repr__(self) -> str:
        return f"ZmqTransport({self.url!r})"

    # -- internals ---------------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        if self._is_closing or self._conn is None:
            raise closed_error(self.url)
        return self._conn

    async def _handshake(self, conn: _Connection) -> None:
        with self._translating("connect"):
            await conn.dealer.send_multipart([b"ping"])
            reply = await conn.dealer.recv_multipart()
            while (await conn.pub.recv())[:1] != b"\x01":
                pass  # the forwarder's XSUB subscribing to everything: publishing is safe now
        if reply != [_OK]:
            raise TransportError(
                f"{self.url} answered a ping with {reply[:1]!r}; is it a modelbus bus?",
                url=self.url,
            )

    async def _send_live(self, conn: _Connection, parts: Parts) -> None:
        with self._translating("publish"):
            if not self._send_lock.locked():
                try:
                    _publish(conn.pub_out, parts)
                    return
                except zmq.Again:
                    pass
            async with self._send_lock:
                await self._send_when_room(conn, parts)

    async def _send_when_room(self, conn: _Connection, parts: Parts) -> None:
        # An XPUB always reports POLLOUT, even with XPUB_NODROP and a full queue, so room
        # cannot be awaited: retry with a growing interval, bounded.
        wait_s = 0.001
        try:
            with anyio.fail_after(self._request_timeout_s):
                while True:
                    try:
                        _publish(conn.pub_out, parts)
                        return
                    except zmq.Again:
                        await anyio.sleep(wait_s)
                        wait_s = min(wait_s * 2, 0.05)
        except TimeoutError:
            raise TransportError(
                f"the bus at {self.url} took no frame for {self._request_timeout_s:g} s "
                f"({self._hwm} frames queued); is the forwarder alive?",
                url=self.url,
            ) from None

    async def _request(self, conn: _Connection, request: Parts, timeout_s: float) -> Parts:
        verb = request[0].decode()
        async with self._control_lock:
            try:
                with anyio.fail_after(timeout_s), self._translating(verb):
                    await conn.dealer.send_multipart(request)
                    reply = await conn.dealer.recv_multipart()
            except TimeoutError:
                if self._is_closing:
                    raise closed_error(self.url) from None
                conn.replace_dealer()
                raise TransportError(
                    f"no reply to {verb} from the bus at {self.url} within {timeout_s:g} s; "
                    "is `modelbus bus` running?",
                    url=self.url,
                ) from None
        if reply[:1] == [_OK]:
            return reply[1:]
        reason = reply[1].decode(errors="replace") if reply[:1] == [_ERROR] and reply[1:] else ""
        raise TransportError(
            f"the bus at {self.url} refused {verb}: {reason or repr(reply[:1])}", url=self.url
        )

    async def _round_trip(self, conn: _Connection) -> None:
        """Send a private probe through the forwarder; return when it comes back to our SUB."""
        topic = _PROBE_PREFIX + secrets.token_hex(8).encode()
        arrived = self._probes[topic] = asyncio.Event()
        self._has_unconfirmed = False
        try:
            with self._translating("subscribe"):
                conn.sub.subscribe(topic)
            self._kick()
            with anyio.fail_after(self._request_timeout_s):
                wait_s = 0.002
                while not arrived.is_set():
                    await self._send_live(conn, [topic, b""])
                    with anyio.move_on_after(wait_s):
                        await arrived.wait()
                    wait_s = min(wait_s * 2, 0.2)
        except TimeoutError:
            raise TransportError(
                f"the bus at {self.url} sent nothing back within {self._request_timeout_s:g} s; "
                "is the forwarder alive?",
                url=self.url,
            ) from None
        finally:
            del self._probes[topic]
            self._unsubscribe(topic)

    async def _flush(self, conn: _Connection) -> None:
        with anyio.move_on_after(self._flush_timeout_s, shield=True):
            try:
                await self._round_trip(conn)
            except TransportError as exc:
                logger.warning("frames published on %s may be lost at close: %s", self.url, exc)

    def _forget(self, subscription: Subscription) -> None:
        prefix = self._subscriptions.pop(subscription, None)
        if prefix is not None:
            self._unsubscribe(prefix)

    def _unsubscribe(self, prefix: bytes) -> None:
        if self._is_closing or self._conn is None:
            return  # the sockets are going away with every subscription on them
        try:
            self._conn.sub.unsubscribe(prefix)
        except zmq.ZMQError as exc:
            logger.warning("could not unsubscribe %r on %s: %s", prefix[:100], self.url, exc)
        self._kick()

    async def _receive(self, conn: _Connection) -> None:
        self._pump = pump = _Pump([(conn.sub_in, self._dispatch)])
        try:
            await pump.failed
        except zmq.ZMQError as exc:
            logger.error("receiving on %s stopped, ending its subscriptions: %s", self.url, exc)
        except Exception:
            logger.exception("receiving on %s failed, ending its subscriptions", self.url)
        finally:
            pump.stop()
            self._pump = None
        for subscription in list(self._subscriptions):
            subscription.close_nowait()

    def _kick(self) -> None:
        """Drain the SUB after an operation on it that may have consumed its FD's edge."""
        if self._pump is not None:
            self._pump.kick()

    def _dispatch(self, parts: Parts) -> None:
        if len(parts) != 2:
            logger.debug("dropped a message of %d parts on %s", len(parts), self.url)
            return
        raw_topic, frame = parts
        if raw_topic.startswith(_PROBE_PREFIX):
            probe = self._probes.get(raw_topic)
            if probe is not None:
                probe.set()
            return
        try:
            topic = raw_topic.decode()
            uris.parse(topic)
        except (UnicodeDecodeError, InvalidUri):
            logger.debug("dropped a frame on the invalid topic %r", raw_topic[:100])
            return
        delivery = Delivery(topic, frame)
        for subscription in self._subscriptions:
            if uris.matches(subscription.pattern, topic):
                subscription.offer(delivery)

    @contextmanager
    def _translating(self, action: str) -> Iterator[None]:
        """ZeroMQ errors become TransportError, and a socket closed under us TransportClosed."""
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._is_closing and task is not None and not task.cancelling():
                raise closed_error(self.url) from None
            raise
        except zmq.ZMQError as exc:
            if self._is_closing:
                raise closed_error(self.url) from exc
            raise TransportError(
                f"ZeroMQ failed to {action} on {self.url}: {exc}", url=self.url
            ) from exc
