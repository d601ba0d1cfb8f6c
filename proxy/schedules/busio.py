"""A schedule's inputs and outputs on the bus.

Inputs are *persisted* messages (the latest message per exact URI, BOSSWAVE's persist / MQTT's
retain): an input URI is a pattern (``ns/sensors/zone-a/temp/*``) whose persisted messages are
the points of a series, one per URI. :class:`BusWindowInputs` queries it (the bus client
verifies every message: signature, grant chain) and keeps the points whose time falls in the
window. A point's time is the ``ts`` (ns) of an XBOS metadata payload ``2.0.3.1 {val, ts}`` —
its value is then ``val`` — else the message's own signed timestamp; its value is the first
payload's decoded value. A message whose value cannot be decoded is left out. With ``per_pass``
(the scheduler's), one query of an input serves every window of a scheduler pass that reads it
(:meth:`BusWindowInputs.new_pass` forgets them): a pass of many schedules over the same sensors
queries them once — measured, the query and its signature checks were most of a window's cost.

Outputs are signed, persisted messages (PO ``2.0.0.0`` msgpack) on ``<output URI>/<window key>``:
a re-run of a window publishes on the same URI, so it *replaces* the window's result on the bus
and never adds a second one.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import anyio

from bus import BusClient, PayloadObject
from bus.errors import BusError
from bus.po import PO_METADATA
from proxy.schedules.windows import Point

__all__ = ["BusWindowInputs", "BusWindowOutputs", "point_of"]

logger = logging.getLogger(__name__)


def point_of(message: Any) -> Point | None:
    """A verified message as a point ``(ts_ns, value)``; None if its payload is undecodable."""
    try:
        meta = message.value(PO_METADATA)
        if isinstance(meta, dict) and isinstance(meta.get("ts"), int) and "val" in meta:
            return meta["ts"], meta["val"]
        return message.ts_ns, message.value()
    except BusError:
        return None


class BusWindowInputs:
    def __init__(self, client: BusClient, *, timeout_s: float = 5.0, per_pass: bool = True) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.per_pass = per_pass
        self._cache: dict[str, tuple[list[Point], list[int]]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def new_pass(self) -> None:
        """A new scheduler pass: read every input afresh."""
        self._cache.clear()
        self._locks.clear()

    async def read(self, uris: Sequence[str], start_ns: int, end_ns: int) -> dict[str, list[Point]]:
        series: dict[str, list[Point]] = {}
        for uri in uris:
            points, times = self._cache.get(uri) or await self._points(uri)
            series[uri] = points[bisect_left(times, start_ns) : bisect_left(times, end_ns)]
        return series

    async def _points(self, uri: str) -> tuple[list[Point], list[int]]:
        """Every point of ``uri``, oldest first, and their times; with ``per_pass``, one query
        per pass."""
        async with self._locks.setdefault(uri, anyio.Lock()):
            cached = self._cache.get(uri)
            if cached is not None:
                return cached
            found = [
                point
                for message in await self.client.query(uri, timeout_s=self.timeout_s)
                if (point := point_of(message)) is not None and isinstance(point[0], int)
            ]
            points = sorted(found, key=lambda p: p[0])
            read = (points, [ts for ts, _ in points])
            if self.per_pass:
                self._cache[uri] = read
            return read


class BusWindowOutputs:
    def __init__(self, client: BusClient) -> None:
        self.client = client

    async def publish(self, output_uri: str, key: str, document: dict[str, Any]) -> None:
        await self.client.publish(
            f"{output_uri}/{key}", PayloadObject.msgpack(document), persist=True
        )
