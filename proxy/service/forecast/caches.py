"""Bounded in-memory caches of the forecast: ``can_predict`` verdicts and model results.

Both are least-recently-used maps bounded by entries (and, for results, by an estimate of their
bytes), so no requester can grow the service's memory. Results expire after the model's declared
``cache_ttl_s`` (monotonic clock); verdicts do not expire — a version is immutable, and so is its
rule — but only verdicts the rule itself gave (or failed to give) are kept, never "could not ask".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from chooser import ModelSeries, SegmentRequest

__all__ = ["Lru", "ResultCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A map of at most ``max_entries``, the least recently used dropped first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


_ENTRY_BYTES = 200
_VALUE_BYTES = 16


def _size(series: ModelSeries) -> int:
    return _ENTRY_BYTES + _VALUE_BYTES * len(series.values)


class ResultCache:
    """Validated model answers by ``SegmentRequest`` (model, version, type, place, span, step),
    each kept ``ttl_s``; at most ``max_entries`` and about ``max_bytes``."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._clock = clock
        self._items: OrderedDict[SegmentRequest, tuple[float, ModelSeries]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, request: SegmentRequest) -> ModelSeries | None:
        found = self._items.get(request)
        if found is None:
            return None
        expires, series = found
        if expires <= self._clock():
            self._drop(request)
            return None
        self._items.move_to_end(request)
        self.hits += 1
        return series

    def put(self, request: SegmentRequest, series: ModelSeries, ttl_s: float) -> None:
        size = _size(series)
        if size > self.max_bytes:
            return
        if request in self._items:
            self._drop(request)
        self._items[request] = (self._clock() + ttl_s, series)
        self.bytes += size
        while self._items and (len(self._items) > self.max_entries or self.bytes > self.max_bytes):
            self._drop(next(iter(self._items)))

    def _drop(self, request: SegmentRequest) -> None:
        _, series = self._items.pop(request)
        self.bytes -= _size(series)
