"""An in-process transport: named hubs shared by every transport opened on the same name.

``memory://name`` connects to the hub ``name`` in this process. It keeps persisted frames like a
broker would and is the transport of choice for fast tests; it publishes no Will. Shared
subscriptions take turns: each frame goes to the next member of its (group, pattern).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from bus import uri as uris
from bus.transport import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_FRAME_BYTES,
    Delivery,
    ReconnectHook,
    ReconnectHooks,
    Subscription,
    Will,
    check_frame_size,
    check_share_group,
    closed_error,
)

__all__ = ["MemoryTransport"]


@dataclass
class _Group:
    """The members of one shared subscription, served in turn."""

    members: list[Subscription] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def offer(self, delivery: Delivery) -> None:
        if self.members:
            self.members[next(self.turn) % len(self.members)].offer(delivery)


@dataclass
class _Hub:
    subscriptions: set[Subscription] = field(default_factory=set)
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)  # (group, pattern)
    persisted: dict[str, bytes] = field(default_factory=dict)


_HUBS: dict[str, _Hub] = {}


class MemoryTransport:
    def __init__(self, name: str = "default", *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.url = f"memory://{name}"
        self.max_frame_bytes = max_frame_bytes
        self._reconnect_hooks = ReconnectHooks()  # kept, never run: a hub never disconnects
        self._hub = _HUBS.setdefault(name, _Hub())
        self._mine: set[Subscription] = set()
        self._is_open = False
        self._is_closed = False

    async def connect(self, *, will: Will | None = None) -> None:
        if self._is_closed:
            raise closed_error(self.url)
        self._is_open = True

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        self._check_open()
        uris.parse(topic)
        check_frame_size(topic, frame, self.max_frame_bytes)
        if persist:
            if frame:
                self._hub.persisted[topic] = frame
            else:
                self._hub.persisted.pop(topic, None)
        delivery = Delivery(topic, frame)
        for subscription in list(self._hub.subscriptions):
            if uris.matches(subscription.pattern, topic):
                subscription.offer(delivery)
        for (_, pattern), group in list(self._hub.groups.items()):
            if uris.matches(pattern, topic):
                group.offer(delivery)

    async def subscribe(
        self, pattern: str, *, buffer: int = DEFAULT_BUFFER, share_group: str | None = None
    ) -> Subscription:
        self._check_open()
        uris.parse(pattern, allow_wildcards=True)
        subscription = Subscription(pattern, buffer=buffer)
        if share_group is None:
            self._hub.subscriptions.add(subscription)
        else:
            key = (check_share_group(share_group), pattern)
            self._hub.groups.setdefault(key, _Group()).members.append(subscription)
        self._mine.add(subscription)

        def forget() -> None:
            self._hub.subscriptions.discard(subscription)
            self._mine.discard(subscription)
            if share_group is not None and (group := self._hub.groups.get(key)) is not None:
                group.members.remove(subscription)
                if not group.members:
                    del self._hub.groups[key]

        subscription.add_close_callback(forget)
        return subscription

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Delivery]:
        self._check_open()
        uris.parse(pattern, allow_wildcards=True)
        prefix = uris.literal_prefix(pattern)  # every match starts with it: a cheap first cut
        found = [
            (topic, frame)
            for topic, frame in self._hub.persisted.items()
            if topic.startswith(prefix) and uris.matches(pattern, topic)
        ]
        return [Delivery(topic, frame) for topic, frame in sorted(found)]

    async def close(self) -> None:
        self._is_closed = True
        self._is_open = False
        for subscription in list(self._mine):
            subscription.close_nowait()

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        return self._reconnect_hooks.add(hook)

    def _check_open(self) -> None:
        if not self._is_open:
            raise closed_error(self.url)
