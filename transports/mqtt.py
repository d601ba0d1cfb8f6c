"""The MQTT 5 transport on paho-mqtt 2.x: ``mqtt://[user:password@]host[:1883]``; ``mqtts://``: TLS.

Topic mapping. A bus URI is its MQTT topic, unchanged. A bus pattern becomes the narrowest MQTT
filter that covers it, and every delivery is then matched locally against the bus pattern
(``bus.uri.matches``) before it is offered, so the broker's filter only has to be wide enough:

    bus pattern     MQTT filter
    a/b/c           a/b/c
    a/+/c           a/+/c
    a/*             a/#         (MQTT's a/# matches a itself, as BOSSWAVE's a/* does)
    a/+/*           a/+/#
    a/*/c           a/#         (a middle * keeps the segments before it, then #)

Bus subscriptions that map to the same filter share one MQTT subscription (reference counted,
unsubscribed when the last one closes). Each MQTT subscription carries an MQTT 5 subscription
identifier, so a message that matches overlapping filters is handed to each bus subscription once.

QoS. Publishes use QoS 1 by default (``qos=``): ``publish`` returns when the broker's PUBACK
arrives, and fails with ``TransportError`` on a refusing reason code (an ACL) or after
``timeout_s`` (10 s; also the bound on connect and subscribe). Subscriptions ask for the same QoS.
paho keeps at most 20 QoS 1 publishes in flight and queues the rest; Mosquitto's default Receive
Maximum is 20 too.

Persisted (retained) frames. ``persist=True`` publishes with the MQTT retain flag; an empty frame
deletes the retained message. Live subscriptions use retain handling 2, so the broker never sends
them retained messages. ``query`` subscribes with retain handling 0 (plus a unique sentinel topic),
publishes on the sentinel, and collects the deliveries flagged *retained* until the sentinel comes
back: the broker sends a subscription's retained messages before later messages on the same
connection. Live deliveries never carry the retain flag (retain-as-published is off), so retained
deliveries go to queries only and live ones to subscriptions only. Two limits come from the broker:
it queues a subscription's retained messages at once, so ``max_queued_messages`` (plus
``max_inflight_messages``) caps what one query can return, silently (``deploy/mosquitto.conf``
raises it); and with an ACL each client needs ``pattern readwrite !modelbus-query/%c/#`` for its
sentinels (``!`` cannot start a bus namespace, so no bus subscription ever sees them).

Will. ``connect(will=...)`` registers the frame as a retained QoS 1 Will: the broker publishes it
when the connection dies uncleanly (a crash, a keepalive timeout); ``close()`` disconnects cleanly,
so no Will is published.

Reconnect. paho's network thread reconnects with exponential backoff (``reconnect_min_s`` to
``reconnect_max_s``); every active filter is subscribed again on each CONNACK (sessions are clean).
A lost connection logs a warning; subscribe, query and publish wait for the connection up to their
timeout. A QoS 1 publish unacknowledged when the connection drops is resent after reconnecting
(at least once), even if the caller's wait has already timed out.

TLS. ``mqtts://`` (default port 8883) verifies the broker against ``ca_certs`` (or the system's CA
store), hostname included; ``certfile``/``keyfile`` add a client certificate.

Threads. paho runs its own network thread (``loop_start``); each callback hands its facts to the
event loop with ``call_soon_threadsafe``. Both sockets get TCP_NODELAY (Nagle plus delayed ACKs cost
~40-90 ms per QoS 1 round trip). paho and its errors stay inside this module. Passwords are never
logged: ``url`` and every message show the URL without one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bus import uri as uris
from bus.errors import InvalidUri, TransportError
from bus.transport import DEFAULT_BUFFER, Delivery, Subscription, Will, closed_error

__all__ = ["MqttTransport", "mqtt_filter"]

logger = logging.getLogger(__name__)

_SENTINEL_ROOT = "!modelbus-query"  # '!' cannot start a bus namespace: no bus filter covers it
_MAX_SUBSCRIPTION_ID = 268_435_455
_STOP_TIMEOUT_S = 5.0
_T = TypeVar("_T")


class _SpuriousPahoErrors(logging.Filter):
    """paho 2.2 logs an error each time its loop runs without a socket (closed, reconnecting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_paho_logger = logging.getLogger(f"{__name__}.paho")
_paho_logger.addFilter(_SpuriousPahoErrors())


def mqtt_filter(pattern: str) -> str:
    """The MQTT topic filter that covers every URI the bus ``pattern`` matches."""
    segments = uris.parse(pattern, allow_wildcards=True)
    if "*" not in segments:
        return "/".join(segments)
    return "/".join((*segments[: segments.index("*")], "#"))


@dataclass(frozen=True)
class _Broker:
    host: str
    port: int
    is_tls: bool
    username: str | None
    password: str | None = field(repr=False)
    safe_url: str


def _parse_url(url: str) -> _Broker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise TransportError(
            "an MQTT URL looks like mqtt://[user:password@]host[:port]", url=_redact(url)
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TransportError("an MQTT URL has no path or query", url=_redact(url))
    is_tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if is_tls else 1883)
    except ValueError as exc:
        raise TransportError(f"bad port in {_redact(url)}", url=_redact(url)) from exc
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = f"{parts.username}@" if parts.username else ""
    safe_url = f"{parts.scheme}://{user}{host}:{port}"
    return _Broker(parts.hostname, port, is_tls, username, password, safe_url)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


@dataclass(eq=False)
class _Query:
    pattern: str
    sentinel: str
    done: asyncio.Future[None]
    found: dict[str, bytes] = field(default_factory=dict)


@dataclass(eq=False)
class _Filter:
    """One MQTT subscription, shared by the bus subscriptions and queries that map to it."""

    topic_filter: str
    subscription_id: int
    subscriptions: set[Subscription] = field(default_factory=set)
    queries: set[_Query] = field(default_factory=set)
    ready: asyncio.Future[None] | None = None

    @property
    def is_used(self) -> bool:
        return bool(self.subscriptions or self.queries)

    def offer(self, delivery: Delivery) -> None:
        for subscription in list(self.subscriptions):
            if uris.matches(subscription.pattern, delivery.topic):
                subscription.offer(delivery)

    def collect(self, delivery: Delivery) -> None:
        for query in self.queries:
            if delivery.frame and uris.matches(query.pattern, delivery.topic):
                query.found[delivery.topic] = delivery.frame


def _subscribe_properties(subscription_id: int) -> Properties:
    properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
    properties.SubscriptionIdentifier = subscription_id
    return properties


def _has_failed(future: asyncio.Future[None]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _failures(reason_codes: list[ReasonCode]) -> str:
    return ", ".join(str(code) for code in reason_codes if code.is_failure)


class _HandshakeClosingSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails (a bad certificate): close it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(ca_certs: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """Verify the broker (hostname included) against ``ca_certs`` or the system's CAs."""
    context = ssl.create_default_context(cafile=ca_certs)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    context.sslsocket_class = _HandshakeClosingSocket
    return context


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
    ) -> None:
        if qos not in (0, 1, 2):
            raise TransportError(f"MQTT QoS is 0, 1 or 2, not {qos!r}", url=_redact(url))
        self._broker = _parse_url(url)
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
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0  # connections re-established after a loss (read by metrics)
        self._is_closed = False
        self._filters: dict[str, _Filter] = {}
        self._by_id: dict[int, _Filter] = {}
        self._ids = itertools.count(1)
        self._sentinels: dict[str, _Query] = {}
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}
        # The filters to subscribe again after a reconnect; read on paho's thread.
        self._active_lock = threading.Lock()
        self._active: dict[str, int] = {}

    # -- the Transport protocol -------------------------------------------------------------

    async def connect(self, *, will: Will | None = None) -> None:
        """Connect and wait for the broker's CONNACK; a refusal raises ``TransportError``."""
        if self._is_closed:
            raise closed_error(self.url)
        if self._client is not None:
            return
        if will is not None:
            uris.parse(will.topic)
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        client = self._new_client(will)
        try:
            await self._bounded(self._timeout_s, self._open(client), "connecting")
        except BaseException:
            await self._stop_network(client)
            raise
        self._client = client

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1/2) or for paho to take it (QoS 0)."""
        self._check_open()
        uris.parse(topic)
        await self._bounded(
            self._timeout_s, self._publish(topic, frame, persist, self._qos), f"publish on {topic}"
        )

    async def subscribe(self, pattern: str, *, buffer: int = DEFAULT_BUFFER) -> Subscription:
        """Subscribe to live frames; returns once the broker acknowledged the subscription."""
        self._check_open()
        entry = self._acquire(mqtt_filter(pattern))
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
        query = _Query(pattern, sentinel, self._running_loop().create_future())
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
        self._connected.set()  # wake waiters: they find the transport closed
        for entry in list(self._filters.values()):
            for subscription in list(entry.subscriptions):
                subscription.close_nowait()
        if client is not None:
            await self._stop_network(client)

    # -- connecting ------------------------------------------------------------------------------

    def _new_client(self, will: Will | None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        client.enable_logger(_paho_logger)  # packets at DEBUG, never payloads
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
                client.tls_set_context(_tls_context(*self._tls_files))
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
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            logger.debug("dropped a callback from paho: the event loop is closed")

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
        with self._active_lock:
            active = list(self._active.items())
        for topic_filter, subscription_id in active:
            client.subscribe(
                topic_filter,
                options=self._live_options(),
                properties=_subscribe_properties(subscription_id),
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
            self._connected.set()
            if not is_first:
                self.reconnects += 1
                logger.info(
                    "reconnected to %s; subscribed to %d filters again",
                    self.url,
                    len(self._filters),
                )
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
        was_connected = self._connected.is_set()
        self._connected.clear()
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
        for entry in self._filters_for(topic, ids):
            if is_retained:
                entry.collect(delivery)
            else:
                entry.offer(delivery)

    def _filters_for(self, topic: str, ids: list[int]) -> list[_Filter]:
        if ids:
            return [self._by_id[i] for i in ids if i in self._by_id]
        return [f for f in self._filters.values() if paho.topic_matches_sub(f.topic_filter, topic)]

    def _settle(
        self, pending: dict[int, asyncio.Future[None]], mid: int, codes: list[ReasonCode]
    ) -> None:
        future = pending.pop(mid, None)
        if future is None or future.done():
            return
        if any(code.is_failure for code in codes):
            error = TransportError(f"{self.url} refused: {_failures(codes)}", url=self.url)
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

    async def _ensure_subscribed(self, entry: _Filter) -> None:
        await self._connected_client()
        if entry.ready is None or _has_failed(entry.ready):
            entry.ready = self._send_subscribe(
                [(entry.topic_filter, self._live_options())], entry.subscription_id
            )
        await asyncio.shield(entry.ready)

    async def _run_query(self, entry: _Filter, query: _Query) -> None:
        await self._connected_client()
        send_retained = SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
        options = SubscribeOptions(qos=max(self._qos, 1), retainHandling=send_retained)
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
            rc, mid = client.subscribe(topics, properties=_subscribe_properties(subscription_id))
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

    def _live_options(self) -> SubscribeOptions:
        return SubscribeOptions(qos=self._qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)

    # -- the filter table ------------------------------------------------------------------

    def _acquire(self, topic_filter: str) -> _Filter:
        entry = self._filters.get(topic_filter)
        if entry is None:
            subscription_id = next(self._ids) % _MAX_SUBSCRIPTION_ID + 1
            entry = _Filter(topic_filter, subscription_id)
            self._filters[topic_filter] = entry
            self._by_id[subscription_id] = entry
            with self._active_lock:
                self._active[topic_filter] = subscription_id
        return entry

    def _forget(self, entry: _Filter, subscription: Subscription) -> None:
        entry.subscriptions.discard(subscription)
        self._release(entry)

    def _release(self, entry: _Filter) -> None:
        if entry.is_used or self._filters.get(entry.topic_filter) is not entry:
            return
        del self._filters[entry.topic_filter]
        del self._by_id[entry.subscription_id]
        with self._active_lock:
            del self._active[entry.topic_filter]
        self._unsubscribe_quietly(entry.topic_filter)

    def _unsubscribe_quietly(self, topic_filter: str) -> None:
        """Unsubscribe without waiting: late deliveries for it find no filter and are dropped."""
        if self._client is not None and self._connected.is_set():
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
        if not self._connected.is_set():
            await self._connected.wait()
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
