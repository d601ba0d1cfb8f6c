"""The client transport of a ZeroMQ bus: XPUB to the forwarder, SUB from it, DEALER for control.

See :mod:`transports.zeromq` for the ports and the wire. Readiness is awaited, never slept for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import zmq
import zmq.asyncio

from bus import uri as uris
from bus.errors import InvalidUri, LimitExceeded, TransportError, Unsupported
from bus.transport import (
    DEFAULT_BUFFER,
    Delivery,
    ReconnectHook,
    ReconnectHooks,
    Subscription,
    Will,
    check_frame_size,
    closed_error,
)
from transports.zeromq.sockets import (
    DEFAULT_HWM,
    DEFAULT_MAX_FRAME_BYTES,
    ERROR,
    OK,
    PROBE_PREFIX,
    LocalLink,
    Parts,
    Pump,
    SocketSet,
    SyncSocket,
    publish_parts,
    split_url,
)

__all__ = ["ZmqTransport"]

logger = logging.getLogger(__name__)

_matches = functools.lru_cache(maxsize=32_768)(uris.matches)  # (pattern, topic): a monitor of
# 10,000 services receives 30,000 topics


@dataclass
class _Connection:
    """One client's sockets: XPUB to the forwarder's XSUB, SUB from its XPUB, DEALER to ROUTER."""

    sockets: SocketSet
    pub: zmq.asyncio.Socket
    sub: zmq.asyncio.Socket
    dealer: zmq.asyncio.Socket
    pub_out: SyncSocket
    sub_in: SyncSocket

    @classmethod
    def open(cls, sockets: SocketSet) -> _Connection:
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
    published before it reached the forwarder; ``hwm`` is every socket's high-water mark;
    ``publish`` refuses a frame over ``max_frame_bytes`` (the forwarder would drop it).
    ZeroMQ reconnects its sockets invisibly: ``on_reconnect`` hooks are kept and never run.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 5.0,
        flush_timeout_s: float = 1.0,
        hwm: int = DEFAULT_HWM,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        local: LocalLink | None = None,
    ) -> None:
        """``local``: a forwarder running in this process, reached over its ``inproc://``
        endpoints (:meth:`Forwarder.local_transport` passes it)."""
        split_url(url)  # a bad URL fails here, not at connect()
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._hwm = hwm
        self.max_frame_bytes = max_frame_bytes
        self._reconnect_hooks = ReconnectHooks()
        self._local = local
        self._conn: _Connection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._pump: Pump | None = None
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
        sockets = SocketSet(self.url, hwm=self._hwm, local=self._local)
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
        check_frame_size(topic, frame, self.max_frame_bytes)
        if persist:
            await self._request(conn, [b"persist", topic.encode(), frame], self._request_timeout_s)
        else:
            await self._send_live(conn, [topic.encode(), frame])
            self._has_unconfirmed = True

    async def subscribe(
        self, pattern: str, *, buffer: int = DEFAULT_BUFFER, share_group: str | None = None
    ) -> Subscription:
        conn = self._connection()
        if share_group is not None:
            raise Unsupported(
                f"ZeroMQ is one machine's bus: it has no shared subscriptions (asked to share "
                f"{pattern} in group {share_group!r}); several instances need MQTT",
                url=self.url,
                share_group=share_group,
            )
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

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        return self._reconnect_hooks.add(hook)

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
        if reply != [OK]:
            raise TransportError(
                f"{self.url} answered a ping with {reply[:1]!r}; is it a modelbus bus?",
                url=self.url,
            )

    async def _send_live(self, conn: _Connection, parts: Parts) -> None:
        with self._translating("publish"):
            if not self._send_lock.locked():
                try:
                    publish_parts(conn.pub_out, parts)
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
                        publish_parts(conn.pub_out, parts)
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
        if reply[:1] == [OK]:
            return reply[1:]
        reason = reply[1].decode(errors="replace") if reply[:1] == [ERROR] and reply[1:] else ""
        if reply[:1] == [ERROR] and reply[2:3] == [b"limit_exceeded"]:
            raise LimitExceeded(f"the bus at {self.url} refused {verb}: {reason}", url=self.url)
        raise TransportError(
            f"the bus at {self.url} refused {verb}: {reason or repr(reply[:1])}", url=self.url
        )

    async def _round_trip(self, conn: _Connection) -> None:
        """Send a private probe through the forwarder; return when it comes back to our SUB."""
        topic = PROBE_PREFIX + secrets.token_hex(8).encode()
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
        self._pump = pump = Pump([(conn.sub_in, self._dispatch)])
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
        if raw_topic.startswith(PROBE_PREFIX):
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
            if _matches(subscription.pattern, topic):
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
