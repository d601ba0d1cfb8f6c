"""The dashboard's bus side: keeps a :class:`Fleet` current from the liveness topics under a
pattern, and knows whether its own link to the bus is up.

It subscribes to ``P/!meta/+`` (one subscription for ``lastalive``, ``state`` and ``status``;
other ``!meta/`` topics, such as the unsigned ``status.json``, are ignored) and to
``P/!meta/instances/+/+`` (the same three of each named instance; skipped, with a warning, when
the viewer's grants do not cover it) with rejected frames included (a frame that fails
verification marks its service *untrusted*, never alive),
then queries the persisted values once to start from the fleet as it is. Every ``probe_s`` it
asks the transport for the persisted frames of one topic nobody publishes (a cheap round trip to
the broker or forwarder); a failed probe marks the link down, and the first good one after that
marks it up and queries the persisted values again (what was missed while down). If the client
itself fails (its connection could not be made, a subscription ended), it is rebuilt with a
backoff. Staleness is judged as of ``confirmed_ns``, the latest instant the link was known to
work (a probe answered, a message arrived), so a service does not turn dead because the dashboard
went blind: while the link is down records keep their last state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bus import BusClient, Message, MessageStream, Rejected
from bus import uri as uris
from bus.envelope import RepeatPattern
from bus.errors import DecodeError, TransportError, VerificationError
from bus.liveness.heartbeat import INSTANCES, LASTALIVE, STATE, STATUS
from bus.message import consume_right
from bus.po import PO_METADATA, PO_STATE, PO_STATUS
from proxy.dashboard.fleet import Fleet

__all__ = ["FleetMonitor", "probe_topic"]

logger = logging.getLogger(__name__)

_SUFFIXES = {
    LASTALIVE.removeprefix("!meta/"): PO_METADATA,
    STATE.removeprefix("!meta/"): PO_STATE,
    STATUS.removeprefix("!meta/"): PO_STATUS,
}
_LASTALIVE_END = "/" + LASTALIVE
_ORDER = {"status": 0, "state": 1, "lastalive": 2}
_BACKOFF_S = (0.25, 5.0)
GATHER_S = 0.05
# An MQTT query brings every retained frame under the pattern's filter (P/#): 30,000 for 10,000
# services, each checked. The link itself is judged by the probe.
_RESYNC_TIMEOUT_S = 60.0
_GRANT_CODES = {
    "untrusted_root",
    "broken_chain",
    "grant_expired",
    "ttl_exceeded",
    "permission_missing",
    "out_of_scope",
}


def probe_topic(pattern: str) -> str:
    """A concrete topic under the pattern's literal prefix that nobody publishes on."""
    segments = uris.parse(pattern, allow_wildcards=True)
    literal: list[str] = []
    for segment in segments:
        if segment in ("*", "+"):
            break
        literal.append(segment)
    return "/".join((*literal, "!meta", "dashboard-probe"))


class FleetMonitor:
    """Feeds ``fleet`` from the bus; ``on_change()`` runs after every change to the fleet or
    to ``is_link_up``. ``connect`` makes a new (not yet entered) client for each attempt."""

    def __init__(
        self,
        connect: Callable[[], BusClient],
        pattern: str,
        fleet: Fleet,
        *,
        on_change: Callable[[], None] = lambda: None,
        probe_s: float = 0.5,
        probe_timeout_s: float = 1.0,
        probe: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        gather_s: float = GATHER_S,
    ) -> None:
        """``probe``: the topic the link probe goes to (it needs ``P`` there); default
        :func:`probe_topic` of the pattern. ``gather_s``: after each burst the monitor lets
        deliveries gather that long before it takes the next (one wake-up per burst, not per
        frame; a beat shows that much later at most)."""
        uris.parse(pattern, allow_wildcards=True)
        self.probe = probe or probe_topic(pattern)
        self.connect = connect
        self.pattern = pattern
        self.fleet = fleet
        self.on_change = on_change
        self.probe_s = probe_s
        self.probe_timeout_s = probe_timeout_s
        self.clock_ns = clock_ns
        self.gather_s = gather_s
        self.is_link_up = False
        self.link_since_ns = clock_ns()
        self.link_error = "not connected yet"
        self.reconnects = 0
        self.messages = 0
        self.rejected = 0
        self.skipped = 0  # deliveries not verified: they could not change the picture
        self.confirmed_ns = 0  # the latest instant the link was known to work (probe, message)
        self._last_state: dict[str, RepeatPattern] = {}  # state topic → its last verified frame
        self._reads_instances = False  # the viewer may read P/!meta/instances/+/+

    async def run(self) -> None:
        """Connect, follow the fleet and reconnect (with a backoff) until cancelled."""
        delay = _BACKOFF_S[0]
        while True:
            try:
                async with self.connect() as client:
                    await self._follow(client)
            except* TransportError as group:  # raised in _follow's task group, or by the client
                self._set_link(False, _first_message(group))
            await anyio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])
            self.reconnects += 1

    @property
    def liveness_pattern(self) -> str:
        """One subscription for the three topics (and other ``!meta/`` ones, ignored)."""
        return f"{self.pattern}/!meta/+"

    @property
    def instances_pattern(self) -> str:
        """The subscription for named instances' records."""
        return f"{self.pattern}/{INSTANCES}/+/+"

    def _may_read_instances(self, client: BusClient) -> bool:
        pattern = self.instances_pattern
        try:
            client.proof_for(pattern, consume_right(pattern))
        except VerificationError as error:
            logger.warning("the dashboard shows no instances: %s", error.message)
            return False
        return True

    async def _follow(self, client: BusClient) -> None:
        async with anyio.create_task_group() as task_group:
            await task_group.start(self._consume, client)
            self._reads_instances = self._may_read_instances(client)
            if self._reads_instances:
                await task_group.start(self._consume, client, self.instances_pattern)
            await self._resync(client)
            self.confirmed_ns = self.clock_ns()
            self._set_link(True, "")
            task_group.start_soon(self._probe, client, task_group)

    async def _consume(
        self, client: BusClient, pattern: str | None = None, *, task_status: TaskStatus[None]
    ) -> None:
        pattern = pattern or self.liveness_pattern
        async with client.subscribe(pattern, include_rejected=True) as stream:
            task_status.started()
            await self._drain(stream)
        raise TransportError(f"the subscription to {pattern} ended")

    async def _drain(self, stream: MessageStream) -> None:
        """Verify and apply each delivery, a burst at a time, except those that cannot change the
        picture: a lastalive of a service whose status beats (the status carries the same time),
        and a state that repeats the last verified state of its service but for its timestamp
        and nonce (the birth re-published with every beat; :class:`RepeatPattern`, no decoding).
        Either would cost a signature check for nothing. ``bus/PROTOCOL.md`` §13 says why a
        skipped frame cannot make a service look alive."""
        subscription = stream.subscription
        async for first in subscription:
            now_ns = self.confirmed_ns = self.clock_ns()
            for delivery in (first, *subscription.drain_nowait()):
                if not self._is_repeat(delivery.topic, delivery.frame, now_ns):
                    self._apply(stream, delivery.topic, delivery.frame)
            await anyio.sleep(self.gather_s)

    def _is_repeat(self, topic: str, frame: bytes, now_ns: int) -> bool:
        if topic.endswith("/state"):  # a service's, or a named instance's
            pattern = self._last_state.get(topic)
            is_repeat = pattern is not None and pattern.matches(frame)
        elif topic.endswith(_LASTALIVE_END):
            record = self.fleet.records.get(topic[: -len(_LASTALIVE_END)])
            is_repeat = record is not None and self.fleet.has_fresh_status(record, now_ns)
        else:
            return False
        self.skipped += is_repeat
        return is_repeat

    def _apply(self, stream: MessageStream, topic: str, frame: bytes) -> None:
        item = stream.verify(topic, frame)
        if isinstance(item, Message) and topic.endswith("/state"):
            pattern = RepeatPattern.of(frame)  # decoded again, but only when the state changed
            if pattern is not None:
                self._last_state[topic] = pattern
        self.take(item)

    def take(self, item: Message | Rejected) -> None:
        """Apply one delivery (verified or rejected) on ``S/!meta/<suffix>`` to the fleet;
        suffixes other than lastalive, state and status are ignored."""
        topic = item.uri if isinstance(item, Message) else item.topic
        service, _, suffix = topic.rpartition("/!meta/")
        if suffix.startswith("instances/"):
            self._take_instance(item, service, suffix)
            return
        if suffix not in _SUFFIXES or not service:
            return
        now_ns = self.confirmed_ns = self.clock_ns()
        if isinstance(item, Rejected):
            self.rejected += 1
            self.fleet.untrusted(service, _why(item.error.code), arrived_ns=now_ns)
        else:
            self.messages += 1
            if not item.pos:
                return  # a tombstone: the service was removed by hand
            value = _value(item, _SUFFIXES[suffix])
            if suffix == "lastalive":
                self.fleet.lastalive(service, value, arrived_ns=now_ns)
            elif suffix == "state":
                self.fleet.state(service, value, sealed_ns=item.ts_ns)
            else:
                self.fleet.status(service, value, arrived_ns=now_ns)
        self.on_change()

    def _take_instance(self, item: Message | Rejected, service: str, suffix: str) -> None:
        """:meth:`take` for ``S/!meta/instances/<name>/<lastalive|state|status>``."""
        named = suffix.split("/")
        if len(named) != 3 or named[2] not in _SUFFIXES or not service:
            return
        instance, suffix = named[1], named[2]
        now_ns = self.confirmed_ns = self.clock_ns()
        if isinstance(item, Rejected):
            self.rejected += 1
            why = _why(item.error.code)
            self.fleet.untrusted(service, why, arrived_ns=now_ns, instance=instance)
        else:
            self.messages += 1
            if not item.pos:
                return
            value = _value(item, _SUFFIXES[suffix])
            if suffix == "lastalive":
                self.fleet.lastalive(service, value, arrived_ns=now_ns, instance=instance)
            elif suffix == "state":
                self.fleet.state(service, value, sealed_ns=item.ts_ns, instance=instance)
            else:
                self.fleet.status(service, value, arrived_ns=now_ns, instance=instance)
        self.on_change()

    async def _resync(self, client: BusClient) -> None:
        """Apply the persisted values, status first (it carries the period), lastalive last."""
        timeout_s = _RESYNC_TIMEOUT_S
        items = await client.query(
            self.liveness_pattern, include_rejected=True, timeout_s=timeout_s
        )
        if self._reads_instances:
            pattern = self.instances_pattern
            items += await client.query(pattern, include_rejected=True, timeout_s=timeout_s)
        for item in sorted(items, key=_resync_order):
            self.take(item)

    async def _probe(self, client: BusClient, task_group: TaskGroup) -> None:
        topic = self.probe
        while True:
            await anyio.sleep(self.probe_s)
            try:
                await client.transport.query(topic, timeout_s=self.probe_timeout_s)
            except (TransportError, TimeoutError):
                url = client.transport.url
                self._set_link(False, f"{url} did not answer within {self.probe_timeout_s:g} s")
                continue
            self.confirmed_ns = self.clock_ns()
            if not self.is_link_up:
                try:
                    await self._resync(client)
                except (TransportError, TimeoutError):
                    continue
                self._set_link(True, "")

    def _set_link(self, is_up: bool, error: str) -> None:
        if is_up == self.is_link_up and error == self.link_error:
            return
        if is_up != self.is_link_up:
            self.link_since_ns = self.clock_ns()
            if is_up:
                logger.info("the dashboard's link to the bus is up")
            else:
                logger.warning("the dashboard's link to the bus is down: %s", error)
        self.is_link_up, self.link_error = is_up, error
        self.on_change()

    def link(self) -> dict[str, Any]:
        return {
            "up": self.is_link_up,
            "since_ms": self.link_since_ns // 10**6,
            "error": self.link_error,
            "reconnects": self.reconnects,
        }


def _first_message(group: BaseExceptionGroup[TransportError]) -> str:
    first = group.exceptions[0]
    return first.message if isinstance(first, TransportError) else _first_message(first)


def _resync_order(item: Message | Rejected) -> int:
    topic = item.uri if isinstance(item, Message) else item.topic
    return _ORDER.get(topic.rpartition("/")[2], len(_ORDER))


def _why(code: str) -> str:
    """A person's words for a rejection code."""
    if code == "bad_signature":
        return "bad signature"
    if code in _GRANT_CODES:
        return f"grant does not verify ({code})"
    return code.replace("_", " ")


def _value(message: Message, number: str) -> Any:
    try:
        return message.value(number)
    except DecodeError:  # a verified sender's malformed payload: nothing to show
        return None
