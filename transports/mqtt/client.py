"""The MQTT 5 transport on paho-mqtt 2.x (see :mod:`transports.mqtt` for its behaviour): paho
runs its own network thread, its callbacks hand facts to the event loop thread-safely."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bus import transport as seam
from bus import uri as uris
from bus.errors import InvalidUri, TransportError
from bus.transport import (
    DEFAULT_BUFFER,
    Delivery,
    Subscription,
    Will,
    check_share_group,
    closed_error,
)
from transports.mqtt.broker import paho_logger, parse_url, redact, tls_context
from transports.mqtt.gate import ConnectionGate
from transports.mqtt.inbox import Inbox
from transports.mqtt.table import FilterTable
from transports.mqtt.topics import (
    Filter,
    Query,
    failures,
    has_failed,
    live_options,
    mqtt_filter,
    query_options,
    subscribe_properties,
)

__all__ = ["MqttTransport"]

logger = logging.getLogger(__name__)

_SENTINEL_ROOT = "!modelbus-query"  # '!' cannot start a bus namespace: no bus filter covers it
_STOP_TIMEOUT_S = 5.0
_T = TypeVar("_T")


class MqttTransport:
    """A bus transport over one MQTT 5 connection (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        qos: int = 1,
        keepalive_s: int = 30,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30,
        timeout_s: float = 10.0,
        max_frame_bytes: int = seam.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if qos not in (0, 1, 2):
            raise TransportError(f"MQTT QoS is 0, 1 or 2, not {qos!r}", url=redact(url))
        self._broker = parse_url(url)
        self.url = self._broker.safe_url
        self.client_id = client_id or f"modelbus-{uuid.uuid4().hex[:16]}"
        if any(char in self.client_id for char in "/+#"):
            raise TransportError(
                "an MQTT client id for modelbus has no '/', '+' or '#'", url=self.url
            )
        self._qos = qos
        self._keepalive_s = keepalive_s
        self._tls_files = (ca_certs, certfile, keyfile)
        self._reconnect_s = (reconnect_min_s, reconnect_max_s)
        self._timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes  # the broker's message_size_limit should match
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._gate = ConnectionGate()
        self._inbox = Inbox()  # paho's callbacks, handed to the event loop in order
        self._is_closed = False
        self._filters = FilterTable()  # paho's thread reads it to subscribe again
        self._sentinels: dict[str, Query] = {}
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}

    # -- the Transport protocol -------------------------------------------------------------

    @property
    def reconnects(self) -> int:
        """Connections re-established after a loss (read by the service's metrics)."""
        return self._gate.reconnects

    async def connect(self, *, will: Will | None = None) -> None:
        """Connect and wait for the broker's CONNACK; a refusal raises ``TransportError``."""
        if self._is_closed:
            raise closed_error(self.url)
        if self._client is not None:
            return
        if will is not None:
            uris.parse(will.topic)
        self._loop = self._inbox.loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        client = self._new_client(will)
        try:
            await self._bounded(self._timeout_s, self._open(client), "connecting")
        except BaseException:
            await self._stop_network(client)
            raise
        self._client = client

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1/2) or for paho to take it (QoS 0).
        An oversized frame never reaches paho (the broker would drop us; paho re-send it)."""
        self._check_open()
        uris.parse(topic)
        seam.check_frame_size(topic, frame, self.max_frame_bytes)
        await self._bounded(
            self._timeout_s, self._publish(topic, frame, persist, self._qos), f"publish on {topic}"
        )

    async def subscribe(
        self, pattern: str, *, buffer: int = DEFAULT_BUFFER, share_group: str | None = None
    ) -> Subscription:
        """Subscribe to live frames; returns once the broker acknowledged the subscription.
        With ``share_group`` it is an MQTT 5 shared subscription (``$share/<group>/<filter>``):
        the broker hands each matching frame to one subscriber of the group."""
        self._check_open()
        if share_group is not None:
            check_share_group(share_group)
        entry = self._acquire(mqtt_filter(pattern), share_group)
        subscription = Subscription(pattern, buffer=buffer)
        entry.subscriptions.add(subscription)
        try:
            await self._bounded(self._timeout_s, self._ensure_subscribed(entry), "subscribing")
        except BaseException:
            entry.subscriptions.discard(subscription)
            self._release(entry)
            raise
        subscription.add_close_callback(lambda: self._forget(entry, subscription))
        return subscription

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Delivery]:
        """The retained frames whose topics match ``pattern``, sorted by topic."""
        self._check_open()
        entry = self._acquire(mqtt_filter(pattern))
        sentinel = f"{_SENTINEL_ROOT}/{self.client_id}/{uuid.uuid4().hex}"
        query = Query(pattern, sentinel, self._running_loop().create_future())
        entry.queries.add(query)
        self._sentinels[sentinel] = query
        try:
            await self._bounded(timeout_s, self._run_query(entry, query), f"query {pattern}")
        finally:
            entry.queries.discard(query)
            del self._sentinels[sentinel]
            if query.done.done() and not query.done.cancelled():
                query.done.exception()  # retrieved: a failure here already surfaced above
            self._release(entry)
            self._unsubscribe_quietly(sentinel)
        return [Delivery(topic, frame) for topic, frame in sorted(query.found.items())]

    async def close(self) -> None:
        """Disconnect cleanly (no Will), stop paho's thread and end every subscription."""
        if self._is_closed:
            return
        self._is_closed = True
        client, self._client = self._client, None
        self._fail_pending(closed_error(self.url), include_publishes=True)
        self._gate.close()  # wake waiters: they find the transport closed
        for entry in self._filters.entries():
            for subscription in list(entry.subscriptions):
                subscription.close_nowait()
        if client is not None:
            await self._stop_network(client)

    def on_reconnect(self, hook: seam.ReconnectHook) -> Callable[[], None]:
        return self._gate.on_reconnect(hook)  # before anything else after a reconnect: gate.py

    # -- connecting ------------------------------------------------------------------------------

    def _new_client(self, will: Will | None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        client.enable_logger(paho_logger)  # packets at DEBUG, never payloads
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.connect_timeout = self._timeout_s
        # paho annotates the delays as int but computes with floats.
        client.reconnect_delay_set(*self._reconnect_s)  # type: ignore[arg-type]
        if self._broker.username is not None:
            client.username_pw_set(self._broker.username, self._broker.password)
        if will is not None:
            client.will_set(will.topic, will.frame, qos=1, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    async def _open(self, client: paho.Client) -> None:
        try:
            if self._broker.is_tls:
                client.tls_set_context(tls_context(*self._tls_files))
            await anyio.to_thread.run_sync(self._connect_socket, client)
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"cannot connect to {self.url}: {exc}", url=self.url, reason=str(exc)
            ) from exc
        client.loop_start()
        assert self._connack is not None
        await self._connack

    def _connect_socket(self, client: paho.Client) -> None:
        host, port = self._broker.host, self._broker.port
        client.connect(host, port, keepalive=self._keepalive_s, clean_start=True)

    async def _stop_network(self, client: paho.Client) -> None:
        """Send DISCONNECT (a clean end: no Will) and join paho's thread, bounded."""
        client.disconnect()
        with anyio.move_on_after(_STOP_TIMEOUT_S, shield=True):
            await anyio.to_thread.run_sync(client.loop_stop, abandon_on_cancel=True)

    # -- paho's thread: hand everything to the event loop ----------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        self._inbox.post(callback, *args)  # one wake-up of the loop per burst: inbox.py

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            logger.debug("cannot set TCP_NODELAY on the MQTT socket: %s", exc)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            self._subscribe_again(client)
        self._post(self._handle_connack, reason.is_failure, str(reason))

    def _subscribe_again(self, client: paho.Client) -> None:
        for subscribed, subscription_id in self._filters.active():
            client.subscribe(
                subscribed,
                options=live_options(self._qos),
                properties=subscribe_properties(subscription_id),
            )

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        logger.debug("reconnecting to %s failed; retrying with backoff", self.url)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self._post(self._handle_disconnect, f"the broker disconnected us: {reason}")
        else:
            self._post(self._handle_disconnect, f"the connection dropped: {reason}")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.debug("dropped an MQTT message whose topic is not UTF-8")
            return
        ids = getattr(message.properties, "SubscriptionIdentifier", None) or []
        self._post(self._handle_message, topic, bytes(message.payload), message.retain, ids)

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._post(self._settle, self._pubacks, mid, [reason])

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._post(self._settle, self._subacks, mid, reason_codes)

    # -- the event loop's side of paho's callbacks --------------------------------------------

    def _handle_connack(self, is_failure: bool, reason: str) -> None:
        is_first = self._connack is not None and not self._connack.done()
        if is_failure and not is_first:
            logger.warning("%s refused to reconnect us (%s); retrying", self.url, reason)
        if not is_failure and not self._is_closed:
            self._gate.connected(is_first=is_first, url=self.url, filters=len(self._filters))
        if not is_first:
            return
        assert self._connack is not None
        if is_failure:
            error = TransportError(
                f"{self.url} refused the connection: {reason}", url=self.url, reason=reason
            )
            self._connack.set_exception(error)
        else:
            self._connack.set_result(None)

    def _handle_disconnect(self, reason: str) -> None:
        if self._is_closed:
            return
        was_connected = self._gate.lost()
        error = TransportError(f"lost the connection to {self.url}: {reason}", url=self.url)
        self._fail_pending(error, include_publishes=False)
        if was_connected:
            logger.warning("lost the connection to %s (%s); reconnecting", self.url, reason)

    def _handle_message(self, topic: str, frame: bytes, is_retained: bool, ids: list[int]) -> None:
        if topic.startswith(f"{_SENTINEL_ROOT}/"):
            query = self._sentinels.get(topic)
            if query is not None and not query.done.done():
                query.done.set_result(None)
            return
        try:
            uris.parse(topic)
        except InvalidUri:
            logger.debug("dropped an MQTT message on %r: not a bus URI", topic[:200])
            return
        delivery = Delivery(topic, frame)
        for entry in self._filters.matching(topic, ids):
            if is_retained:
                entry.collect(delivery)
            else:
                entry.offer(delivery)

    def _settle(
        self, pending: dict[int, asyncio.Future[None]], mid: int, codes: list[ReasonCode]
    ) -> None:
        future = pending.pop(mid, None)
        if future is None or future.done():
            return
        if any(code.is_failure for code in codes):
            error = TransportError(f"{self.url} refused: {failures(codes)}", url=self.url)
            future.set_exception(error)
        else:
            future.set_result(None)

    def _fail_pending(self, error: TransportError, *, include_publishes: bool) -> None:
        pending = [*self._subacks.values(), *(q.done for q in self._sentinels.values())]
        if include_publishes:
            pending += self._pubacks.values()
            self._pubacks.clear()
        self._subacks.clear()
        for future in pending:
            if not future.done():
                future.set_exception(error)

    # -- publishing, subscribing, querying -------------------------------------------------

    async def _publish(self, topic: str, frame: bytes, retain: bool, qos: int) -> None:
        client = await self._connected_client()
        try:
            info = client.publish(topic, frame, qos=qos, retain=retain)
        except ValueError as exc:
            raise TransportError(f"cannot publish on {topic}: {exc}", url=self.url) from exc
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
            qos and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        ):
            reason = paho.error_string(info.rc)
            raise TransportError(f"cannot publish on {topic}: {reason}", url=self.url)
        if qos == 0:
            return
        acknowledged = self._running_loop().create_future()
        self._pubacks[info.mid] = acknowledged  # before paho's PUBACK callback can run here
        try:
            await acknowledged
        finally:
            if self._pubacks.get(info.mid) is acknowledged:
                del self._pubacks[info.mid]

    async def _ensure_subscribed(self, entry: Filter) -> None:
        await self._connected_client()
        if entry.ready is None or has_failed(entry.ready):
            entry.ready = self._send_subscribe(
                [(entry.subscribed, live_options(self._qos))], entry.subscription_id
            )
        await asyncio.shield(entry.ready)

    async def _run_query(self, entry: Filter, query: Query) -> None:
        await self._connected_client()
        options = query_options(self._qos)
        subscribed = self._send_subscribe(
            [(entry.topic_filter, options), (query.sentinel, options)], entry.subscription_id
        )
        if entry.ready is None:
            entry.ready = subscribed
        await asyncio.shield(subscribed)
        await self._publish(query.sentinel, b"", False, 1)
        await query.done

    def _send_subscribe(
        self, topics: list[tuple[str, SubscribeOptions]], subscription_id: int
    ) -> asyncio.Future[None]:
        client = self._open_client()
        try:
            rc, mid = client.subscribe(topics, properties=subscribe_properties(subscription_id))
        except ValueError as exc:
            raise TransportError(
                f"cannot subscribe to {topics[0][0]}: {exc}", url=self.url
            ) from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            reason = paho.error_string(rc)
            raise TransportError(f"cannot subscribe to {topics[0][0]}: {reason}", url=self.url)
        acknowledged = self._running_loop().create_future()
        self._subacks[mid] = acknowledged
        return acknowledged

    # -- the filter table (transports.mqtt.table) ------------------------------------------

    def _acquire(self, topic_filter: str, share_group: str | None = None) -> Filter:
        return self._filters.acquire(topic_filter, share_group)

    def _forget(self, entry: Filter, subscription: Subscription) -> None:
        entry.subscriptions.discard(subscription)
        self._release(entry)

    def _release(self, entry: Filter) -> None:
        if self._filters.release(entry):
            self._unsubscribe_quietly(entry.subscribed)

    def _unsubscribe_quietly(self, topic_filter: str) -> None:
        """Unsubscribe without waiting: late deliveries for it find no filter and are dropped."""
        if self._client is not None and self._gate.is_open:
            self._client.unsubscribe(topic_filter)

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._is_closed or self._client is None:
            raise closed_error(self.url)

    def _open_client(self) -> paho.Client:
        self._check_open()
        assert self._client is not None
        return self._client

    async def _connected_client(self) -> paho.Client:
        """The client once it is connected (waiting through a reconnect)."""
        await self._gate.wait()
        return self._open_client()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def _bounded(self, timeout_s: float, work: Awaitable[_T], what: str) -> _T:
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        except TimeoutError as exc:
            raise TransportError(
                f"{what} on {self.url} did not finish within {timeout_s:g} s", url=self.url
            ) from exc
