"""Bus patterns as MQTT filters, and the MQTT subscriptions the bus subscriptions share.

See :mod:`transports.mqtt` for the mapping. A :class:`Filter` is one MQTT subscription (with its
MQTT 5 subscription identifier) shared by every bus subscription and query that maps to it;
:mod:`transports.mqtt.table` keeps them.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bus import uri as uris
from bus.transport import Delivery, Subscription

__all__ = [
    "Filter",
    "Query",
    "failures",
    "has_failed",
    "live_options",
    "mqtt_filter",
    "query_options",
    "subscribe_properties",
]


def mqtt_filter(pattern: str) -> str:
    """The MQTT topic filter that covers every URI the bus ``pattern`` matches."""
    segments = uris.parse(pattern, allow_wildcards=True)
    if "*" not in segments:
        return "/".join(segments)
    return "/".join((*segments[: segments.index("*")], "#"))


@dataclass(eq=False)
class Query:
    pattern: str
    sentinel: str
    done: asyncio.Future[None]
    found: dict[str, bytes] = field(default_factory=dict)


@dataclass(eq=False)
class Filter:
    """One MQTT subscription, shared by the bus subscriptions and queries that map to it.
    ``subscribed`` is what the broker is asked for: the filter itself, or in a shared
    subscription ``$share/<group>/<filter>`` (deliveries still carry the real topic)."""

    topic_filter: str
    subscription_id: int
    subscribed: str
    subscriptions: set[Subscription] = field(default_factory=set)
    queries: set[Query] = field(default_factory=set)
    ready: asyncio.Future[None] | None = None

    @property
    def is_used(self) -> bool:
        return bool(self.subscriptions or self.queries)

    def offer(self, delivery: Delivery) -> None:
        for subscription in list(self.subscriptions):
            if _matches(subscription.pattern, delivery.topic):
                subscription.offer(delivery)

    def collect(self, delivery: Delivery) -> None:
        for query in self.queries:
            if delivery.frame and uris.matches(query.pattern, delivery.topic):
                query.found[delivery.topic] = delivery.frame


_matches = functools.lru_cache(maxsize=32_768)(uris.matches)  # (pattern, topic): a monitor of
# 10,000 services receives 30,000 topics


def subscribe_properties(subscription_id: int) -> Properties:
    properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
    properties.SubscriptionIdentifier = subscription_id
    return properties


def has_failed(future: asyncio.Future[None]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def failures(reason_codes: list[ReasonCode]) -> str:
    return ", ".join(str(code) for code in reason_codes if code.is_failure)


def live_options(qos: int) -> SubscribeOptions:
    """A live subscription's options: the broker never sends it retained messages."""
    return SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)


def query_options(qos: int) -> SubscribeOptions:
    """A query's options: the broker sends the retained messages on subscribing, at QoS >= 1."""
    return SubscribeOptions(
        qos=max(qos, 1), retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
    )
