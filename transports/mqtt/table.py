"""The MQTT subscriptions one connection holds, and which bus subscriptions each one feeds.

A :class:`~transports.mqtt.topics.Filter` is one MQTT subscription (reference counted by the bus
subscriptions and queries using it) with its MQTT 5 subscription identifier. The table is read
and changed on the event loop, except :meth:`FilterTable.active`, which paho's network thread
reads to subscribe every filter again after a reconnect (hence the lock).
"""

from __future__ import annotations

import itertools
import threading

from paho.mqtt import client as paho

from transports.mqtt.topics import Filter

__all__ = ["FilterTable"]

_MAX_SUBSCRIPTION_ID = 268_435_455


class FilterTable:
    """The filters in use, by the string subscribed on the broker and by subscription id."""

    def __init__(self) -> None:
        self._filters: dict[str, Filter] = {}
        self._by_id: dict[int, Filter] = {}
        self._ids = itertools.count(1)
        self._active_lock = threading.Lock()
        self._active: dict[str, int] = {}  # subscribed string -> subscription id

    def __len__(self) -> int:
        return len(self._filters)

    def entries(self) -> list[Filter]:
        return list(self._filters.values())

    def acquire(self, topic_filter: str, share_group: str | None = None) -> Filter:
        """The entry for ``topic_filter`` (shared in ``share_group``), made on first use."""
        subscribed = topic_filter if share_group is None else f"$share/{share_group}/{topic_filter}"
        entry = self._filters.get(subscribed)
        if entry is None:
            subscription_id = next(self._ids) % _MAX_SUBSCRIPTION_ID + 1
            entry = Filter(topic_filter, subscription_id, subscribed=subscribed)
            self._filters[subscribed] = entry
            self._by_id[subscription_id] = entry
            with self._active_lock:
                self._active[subscribed] = subscription_id
        return entry

    def release(self, entry: Filter) -> bool:
        """Drop ``entry`` once nothing uses it; True when the broker should be told."""
        if entry.is_used or self._filters.get(entry.subscribed) is not entry:
            return False
        del self._filters[entry.subscribed]
        del self._by_id[entry.subscription_id]
        with self._active_lock:
            del self._active[entry.subscribed]
        return True

    def active(self) -> list[tuple[str, int]]:
        """(subscribed string, subscription id) of every filter; safe from paho's thread."""
        with self._active_lock:
            return list(self._active.items())

    def matching(self, topic: str, ids: list[int]) -> list[Filter]:
        """The entries a message on ``topic`` is for: by its subscription identifiers, or (a
        broker that sends none) by matching each entry's filter against the real topic."""
        if ids:
            return [self._by_id[i] for i in ids if i in self._by_id]
        return [
            entry
            for entry in self._filters.values()
            if paho.topic_matches_sub(entry.topic_filter, topic)
        ]
