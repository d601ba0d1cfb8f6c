"""Adaptive batching for one model version: a bounded queue of inputs, cut into batches on demand.

Pure bookkeeping — no sockets, no processes. ``predict`` submits a request's inputs; whenever a
replica is idle the backend takes a batch of whatever is queued right then, up to the batch size
(and a byte budget) — it never waits for a batch to fill, so batches grow only while every
replica is busy, as in Clipper. The answer to a batch completes or fails the requests its inputs
came from; a batch whose worker died is rescued: its inputs go back to the front of the queue
once, and fail on their second crash. A batch the model failed on that mixes several requests'
inputs is **split**: its inputs go back to the front of the queue, each to be sent alone, so that
an input that makes the model raise fails only the request it came from (and its error, which
may quote the input, reaches only that requester).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError, InternalError, Overloaded

__all__ = ["BatchQueue", "Item", "PendingBatch", "Request"]


class Request:
    """One predict call: its outputs fill in as batches come back; ``done`` fires at the end."""

    __slots__ = ("abandoned", "done", "error", "outputs", "queued", "remaining")

    def __init__(self, size: int) -> None:
        self.outputs: list[Any] = [None] * size
        self.remaining = size
        self.queued = 0  # of its inputs, how many are still on the queue
        self.error: BusError | None = None
        self.abandoned = False  # the caller gave up: whatever comes later is dropped
        self.done = asyncio.Event()  # asyncio's own: a third of the cost of anyio's, per call

    def resolve(self, index: int, output: Any) -> None:
        if not self.done.is_set():
            self.outputs[index] = output
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()

    def fail(self, error: BusError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def abandon(self) -> None:
        if not self.done.is_set():
            self.abandoned = True
            self.done.set()


@dataclass(slots=True)
class Item:
    """One input of a request, with its packed size and how many workers died holding it."""

    request: Request
    index: int
    value: Any
    size: int
    crashes: int = 0
    alone: bool = False  # part of a failed mixed batch: sent in a batch of its own


@dataclass(slots=True)
class PendingBatch:
    """A batch sent to a replica and not answered yet."""

    batch_id: int
    items: list[Item]

    @property
    def inputs(self) -> list[Any]:
        return [item.value for item in self.items]


class BatchQueue:
    """The queue of one model version, and its counters."""

    def __init__(self, label: str, *, batch_size: int, limit: int, max_batch_bytes: int) -> None:
        self.label = label
        self.batch_size = batch_size
        self.limit = limit
        self.max_batch_bytes = max_batch_bytes
        self.predictions = 0  # inputs answered with an output
        self.errors = 0  # inputs answered with an error
        self.retries = 0  # batches put back after their worker died
        self.splits = 0  # failed mixed batches put back to be retried input by input
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._items: collections.deque[Item] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def submit(self, values: list[Any], sizes: list[int]) -> Request:
        """Queue a request's inputs (with their packed sizes); Overloaded past the limit."""
        if len(self._items) + len(values) > self.limit:
            raise Overloaded(
                f"{self.label} has {len(self._items)} inputs queued (limit {self.limit}); "
                "retry later or add replicas",
                queued=len(self._items),
                limit=self.limit,
            )
        request = Request(len(values))
        for index, (value, size) in enumerate(zip(values, sizes, strict=True)):
            self._items.append(Item(request, index, value, size))
        request.queued = len(values)
        return request

    def withdraw(self, request: Request) -> None:
        """Drop the inputs of a request that is over (answered, failed, timed out)."""
        if request.queued:
            self._items = collections.deque(i for i in self._items if i.request is not request)
            request.queued = 0

    def take(self, batch_id: int) -> PendingBatch | None:
        """A batch of what is queued now, up to the batch size and byte budget; None if empty."""
        items: list[Item] = []
        size = 0
        while self._items and len(items) < self.batch_size:
            item = self._items[0]
            if items and (item.alone or size + item.size > self.max_batch_bytes):
                break
            self._items.popleft()
            item.request.queued -= 1
            if not item.request.done.is_set():
                items.append(item)
                size += item.size
                if item.alone:
                    break
        if not items:
            return None
        self.batch_sizes[len(items)] += 1
        return PendingBatch(batch_id, items)

    def complete(self, batch: PendingBatch, outputs: list[Any]) -> None:
        for item, output in zip(batch.items, outputs, strict=True):
            item.request.resolve(item.index, output)
        self.predictions += len(batch.items)

    def fail(self, batch: PendingBatch, error: BusError) -> None:
        for item in batch.items:
            item.request.fail(error)
        self.errors += len(batch.items)

    def split(self, batch: PendingBatch) -> bool:
        """The model failed on ``batch``: if it held inputs of several requests still waiting,
        put them back first in line, each to be retried alone, and return True; else False
        (the caller fails the batch)."""
        waiting = [item for item in batch.items if not item.request.done.is_set()]
        if len({id(item.request) for item in waiting}) < 2:
            return False
        for item in waiting:
            item.alone = True
        self.splits += 1
        self._push_front(waiting)
        return True

    def give_back(self, batch: PendingBatch) -> None:
        """Put a batch that never reached its replica back at the front of the queue."""
        self._push_front(batch.items)

    def rescue(self, batch: PendingBatch, holder: str) -> None:
        """Its worker died: retry its inputs once (first in line); fail those that died twice."""
        retry: list[Item] = []
        failed: list[Item] = []
        for item in batch.items:
            if not item.request.done.is_set():
                item.crashes += 1
                (retry if item.crashes < 2 else failed).append(item)
        for item in failed:
            error = InternalError(f"{holder} crashed twice while predicting", model=self.label)
            item.request.fail(error)
        self.errors += len(failed)
        if retry:
            self.retries += 1
            self._push_front(retry)

    def fail_all(self, error: Callable[[], BusError]) -> None:
        """Fail every queued request (each with a fresh error) and empty the queue."""
        while self._items:
            item = self._items.popleft()
            item.request.queued -= 1
            item.request.fail(error())
            self.errors += 1

    def _push_front(self, items: list[Item]) -> None:
        for item in reversed(items):
            self._items.appendleft(item)
            item.request.queued += 1
