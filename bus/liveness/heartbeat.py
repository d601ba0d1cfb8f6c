"""Liveness announcements for a service, readable by XBOS tools and Sparkplug-style dashboards.

Under the service URI ``S`` a running service keeps three persisted messages:

    S/!meta/lastalive   PO 2.0.3.1  {val: ISO-8601 time, ts: ns}     first at start, then every 10 s
    S/!meta/state       PO 2.0.11.3 {online: bool, seq: int, ts: ns} birth; the Will says offline
    S/!meta/status      PO 2.0.11.4 {seq, ts, uptime_s, interval_s, ...service facts}
    S/!meta/status.json unsigned JSON copy for generic MQTT tools (``plain_json``;
    bus.liveness.plain_status)

**Instances.** Several proxies serving one service URI each heart-beat as themselves: a
Heartbeat given an ``instance`` name ``N`` keeps its three records under an instance segment,

    S/!meta/instances/N/lastalive, …/state (its Will), …/status

and also refreshes the service's own ``S/!meta/lastalive`` with each beat (fresh while any
instance beats, for XBOS tools that know nothing of instances); it publishes no
``S/!meta/state`` or ``S/!meta/status``, and its plain JSON lists the instances it knows
(``instances``, a callable: bus.liveness.instances). Readers judge the service alive while any
instance is (bus.liveness.monitor). Without a name, nothing of this: the records above.

``seq`` is fixed for one run of the service (its start time in ns, so it grows across restarts).
The MQTT Last Will carries ``{online: false, seq}`` of the same run, so a death whose ``seq`` does
not match the latest birth (a late death of an old run) is ignored by monitors. A clean shutdown
publishes the offline state itself. The state is re-published with every beat, so a stale death
that overwrote it is corrected within one interval; and at once when the transport reconnects
(a reconnect hook, run before anything else goes out on the new connection): an MQTT broker
publishes the Will of every client on its way down, so after a broker restart the service would
otherwise look dead until its next beat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from bus import uri as uris
from bus.errors import BusError, InvalidUri
from bus.liveness import plain_status
from bus.liveness.plain_status import PLAIN_STATUS
from bus.po import PO_METADATA, PO_STATE, PO_STATUS, PayloadObject

if TYPE_CHECKING:
    from bus.client import BusClient

__all__ = [
    "DEFAULT_INTERVAL_S",
    "INSTANCES",
    "LASTALIVE",
    "NUDGE_DELAY_S",
    "STALE_AFTER_S",
    "STATE",
    "STATUS",
    "Heartbeat",
    "record",
]

logger = logging.getLogger(__name__)

LASTALIVE = "!meta/lastalive"
STATE = "!meta/state"
STATUS = "!meta/status"
DEFAULT_INTERVAL_S = 10.0
STALE_AFTER_S = 30.0
NUDGE_DELAY_S = 0.25
INSTANCES = "!meta/instances"


def record(suffix: str, instance: str | None) -> str:
    """Where ``instance`` keeps the record ``suffix`` (LASTALIVE, STATE or STATUS) under its
    service URI: ``suffix`` itself for the only proxy of a service (None),
    ``!meta/instances/<instance>/<kind>`` for a named instance."""
    if instance is None:
        return suffix
    return f"{INSTANCES}/{instance}/{suffix.removeprefix('!meta/')}"


class Heartbeat:
    """Announces one service's liveness. Pass :meth:`will` to ``BusClient(will=...)`` and run
    :meth:`run` in the client's task group: ``await client.task_group.start(hb.run, client)``."""

    def __init__(
        self,
        service_uri: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        status: Callable[[], dict[str, Any]] | None = None,
        plain_json: bool = False,
        instance: str | None = None,
        instances: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        """``plain_json`` also publishes the unsigned ``S/!meta/status.json``
        (bus.liveness.plain_status) for generic MQTT tools. ``instance``: this proxy's name among
        several serving ``service_uri`` (module docstring; InvalidUri unless it is a plain URI
        segment); ``instances``: the other instances as the plain JSON lists them
        (bus.liveness.instances.InstanceView.snapshot)."""
        self.service_uri = service_uri
        self.instance = instance
        self.instances = instances
        if instance is not None and len(uris.parse(f"{instance}/x")) != 2:
            raise InvalidUri("an instance name is one URI segment", uri=instance[:80])
        uris.parse(self.uri(record(STATE, instance)))
        self.interval_s = interval_s
        self.status = status
        self.plain_json = plain_json
        self.beats = 0  # beats published (read by metrics)
        self.seq = time.time_ns()
        self._last_status: dict[str, Any] = {"seq": self.seq}
        self._nudged: anyio.Event | None = None  # made in run(): events need the event loop
        self._started_monotonic = time.monotonic()

    def nudge(self) -> None:
        """Announce soon (within NUDGE_DELAY_S) instead of at the next interval: the status
        changed (a model deployed, stopped, ready) and dashboards should see it."""
        if self._nudged is not None:
            self._nudged.set()

    def uri(self, suffix: str) -> str:
        return f"{self.service_uri}/{suffix}"

    def own(self, suffix: str) -> str:
        """The URI of this proxy's record ``suffix`` (its instance's, if it has a name)."""
        return self.uri(record(suffix, self.instance))

    def will(self) -> tuple[str, list[PayloadObject]]:
        """The death message the broker publishes if this run dies uncleanly."""
        return self.own(STATE), [self._state(online=False)]

    def _state(self, *, online: bool, ts_ns: int | None = None) -> PayloadObject:
        """``ts``: when the state was announced — the run's start for the birth and the Will
        (sealed at connect), the moment of a clean shutdown for its death."""
        ts = self.seq if ts_ns is None else ts_ns
        return PayloadObject.msgpack({"online": online, "seq": self.seq, "ts": ts}, PO_STATE)

    async def beat(self, client: BusClient) -> None:
        """Publish lastalive, the birth state and the status once."""
        now_ns = time.time_ns()
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ns / 1e9))
        lastalive = {"val": f"{iso}.{now_ns % 10**9 // 1000:06d}Z", "ts": now_ns}
        lastalive_po = PayloadObject.msgpack(lastalive, PO_METADATA)
        await client.publish(self.own(LASTALIVE), lastalive_po, persist=True)
        if self.instance is not None:  # the service's lastalive: fresh while any instance beats
            await client.publish(self.uri(LASTALIVE), lastalive_po, persist=True)
        await client.publish(self.own(STATE), self._state(online=True), persist=True)
        status = {
            "seq": self.seq,
            "ts": now_ns,
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "interval_s": self.interval_s,
            **(self.status() if self.status else {}),
        }
        await client.publish(
            self.own(STATUS), PayloadObject.msgpack(status, PO_STATUS), persist=True
        )
        self._last_status = status
        if self.plain_json:
            await self._publish_plain(client, online=True)
        self.beats += 1

    async def _publish_plain(self, client: BusClient, *, online: bool) -> None:
        if self.instance is None:
            document = plain_status.encode(self.service_uri, self._last_status, online=online)
        else:
            others = self.instances() if self.instances is not None else []
            document = plain_status.encode(
                self.service_uri,
                self._last_status,
                online=online,
                instance=self.instance,
                instances=others,
            )
        await client.transport.publish(self.uri(PLAIN_STATUS), document, persist=True)

    async def run(
        self, client: BusClient, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat now, every ``interval_s`` and after each reconnect; on cancellation publish the
        offline state."""

        async def reannounce() -> None:
            await self.beat(client)

        remove_hook = client.on_reconnect(reannounce)
        try:
            await self.beat(client)
            task_status.started()
            self._nudged = anyio.Event()
            while True:
                with anyio.move_on_after(self.interval_s):
                    await self._nudged.wait()
                if self._nudged.is_set():  # coalesce a burst of changes into one beat
                    await anyio.sleep(NUDGE_DELAY_S)
                    self._nudged = anyio.Event()
                try:
                    await self.beat(client)
                except BusError as error:
                    logger.warning("heartbeat of %s failed: %s", self.service_uri, error.message)
        finally:
            remove_hook()
            with anyio.move_on_after(2, shield=True):
                death = self._state(online=False, ts_ns=time.time_ns())
                await client.publish(self.own(STATE), death, persist=True)
                if self.plain_json:
                    await self._publish_plain(client, online=False)
