"""The dashboard's view of a fleet: one record per service, fed with verified (or rejected)
heartbeat messages, judged against the clock.

States and their reasons:

    alive      fresh trusted lastalive, the current run online
    stale      late: no lastalive for 1.5 periods (one heartbeat missed), not yet dead
    dead       "missed heartbeats" (no lastalive for 3 periods) or "Last Will" (the broker
               published the death the service registered at connect)
    retired    "clean shutdown" (the service published its own death)
    untrusted  the latest heartbeat frame on its topics failed verification (signature, grant…)

A service served by named instances (``S/!meta/instances/<name>/…``, bus.liveness.heartbeat)
keeps a record per instance inside its own, each judged as above; the service's state is then
theirs: alive while any instance is ("2 of 3 instances alive"), late while the best is late,
retired when every instance shut down cleanly, untrusted when the best is untrusted, else dead
("no instance alive"). Its own ``S/!meta/lastalive`` (which every instance refreshes) only
dates it. At most :data:`MAX_INSTANCES` instances are kept per service.

A Will is told from a clean shutdown by the death's envelope timestamp: the Will is sealed when
the service connects, before its first beat; a clean shutdown is sealed after its last beat. The
period is the ``interval_s`` a service announces in its status (10 s when absent). A death whose
``seq`` is not the current run's (a late Will of an earlier run) is ignored, as in
:mod:`bus.liveness.monitor`. Everything here is pure (no I/O), so the clock is a parameter.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from bus.liveness.heartbeat import DEFAULT_INTERVAL_S

__all__ = ["HISTORY", "MAX_INSTANCES", "MAX_SERVICES", "Fleet", "ServiceRecord", "State"]

State = Literal["alive", "stale", "dead", "retired", "untrusted"]

HISTORY = 24  # heartbeat arrivals kept per service
MAX_SERVICES = 100_000  # records kept; topics beyond it are ignored (forged topics cost memory)
MAX_INSTANCES = 64  # instance records kept per service, likewise
LATE_PERIODS = 1.5
DEAD_PERIODS = 3.0
_S = 1_000_000_000
_MAX_TEXT = 200  # characters kept of any string from a status (a status is a service's claim)


@dataclass(slots=True)
class ServiceRecord:
    """Everything the dashboard knows about one service URI."""

    service: str
    state: State = "dead"
    reason: str = "never announced lastalive"
    last_alive_ns: int | None = None
    seq: int | None = None
    online: bool | None = None
    offline_sealed_ns: int | None = None  # envelope time of the current run's death
    interval_s: float = DEFAULT_INTERVAL_S
    status: dict[str, Any] = field(default_factory=dict)
    untrusted: str | None = None  # why the latest heartbeat frame was rejected
    arrivals: collections.deque[tuple[int, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )
    version: int = 0  # bumped on every change, so unchanged rows are not sent again
    next_judge_ns: int = 0  # before this instant the clock cannot change the judgement
    status_seen_ns: int = 0  # arrival of the latest trusted status (a beat of its own)
    instance: str | None = None  # this record is the named instance of ``service``
    instances: dict[str, ServiceRecord] = field(default_factory=dict)  # by name

    def judge(self, now_ns: int) -> tuple[State, str]:
        """The state and its reason at ``now_ns`` (a service with instances: from theirs)."""
        by_instances = self._judge_by_instances(now_ns) if self.instances else None
        if self.untrusted is not None:
            return "untrusted", self.untrusted
        if by_instances is not None:
            return by_instances
        if self.online is False and self.offline_sealed_ns is not None:
            last = self.last_alive_ns or 0
            if self.offline_sealed_ns < last:
                return "dead", "Last Will"
            return "retired", "clean shutdown"
        if self.last_alive_ns is None:
            return "dead", "never announced lastalive"
        age_s = (now_ns - self.last_alive_ns) / _S
        if age_s > DEAD_PERIODS * self.interval_s:
            return "dead", "missed heartbeats"
        if age_s > LATE_PERIODS * self.interval_s:
            return "stale", "late"
        return "alive", "alive"

    def _judge_by_instances(self, now_ns: int) -> tuple[State, str]:
        states = []
        for instance in self.instances.values():
            instance.state, instance.reason = instance.judge(now_ns)
            states.append(instance.state)
        if alive := states.count("alive"):
            return "alive", f"{alive} of {len(states)} instances alive"
        if "stale" in states:
            return "stale", "late"
        if "untrusted" in states:
            return "untrusted", "untrusted instances only"
        if states.count("retired") == len(states):
            return "retired", "clean shutdown"
        return "dead", "no instance alive"

    def settles_at(self) -> int:
        """When the clock can next change the judgement (the record unchanged meanwhile)."""
        if self.instances:
            return min(instance.settles_at() for instance in self.instances.values())
        if self.last_alive_ns is None or self.state not in ("alive", "stale"):
            return 2**63
        periods = LATE_PERIODS if self.state == "alive" else DEAD_PERIODS
        return self.last_alive_ns + int(periods * self.interval_s * _S) + 1

    def row(self) -> dict[str, Any]:
        """The JSON the page and ``/api/services`` show; ``instances`` (each a row with
        ``instance`` and no ``history``) only for a service served by named instances."""
        row: dict[str, Any] = {
            "service": self.service,
            "state": self.state,
            "reason": self.reason,
            "last_alive_ms": None if self.last_alive_ns is None else self.last_alive_ns // 10**6,
            "seq": self.seq,
            "interval_s": self.interval_s,
            "status": self.status,
            "history": [[ts // 10**6, trusted] for ts, trusted in self.arrivals],
        }
        if self.instance is not None:
            del row["history"]
            row["instance"] = self.instance
        if self.instances:
            row["instances"] = [self.instances[name].row() for name in sorted(self.instances)]
        return row


class Fleet:
    """The records of every service seen under one pattern."""

    def __init__(self, *, max_services: int = MAX_SERVICES) -> None:
        self.records: dict[str, ServiceRecord] = {}
        self.max_services = max_services
        self.version = 0
        self.ignored = 0  # messages for services beyond max_services

    def _record(self, service: str, instance: str | None = None) -> ServiceRecord | None:
        record = self.records.get(service)
        if record is None:
            if len(self.records) >= self.max_services:
                self.ignored += 1
                return None
            record = self.records[service] = ServiceRecord(service)
        if instance is None:
            return record
        named = record.instances.get(instance)
        if named is None:
            if len(record.instances) >= MAX_INSTANCES:
                self.ignored += 1
                return None
            named = record.instances[instance] = ServiceRecord(service, instance=instance)
        return named

    def lastalive(
        self, service: str, value: Any, *, arrived_ns: int, instance: str | None = None
    ) -> None:
        record = self._record(service, instance)
        if record is None or not isinstance(value, dict):
            return
        ts = value.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            record.last_alive_ns = max(ts, record.last_alive_ns or 0)
        record.untrusted = None
        if not self.has_fresh_status(record, arrived_ns):  # else the status was the beat
            record.arrivals.append((arrived_ns, True))
        self._touch(record)

    @staticmethod
    def has_fresh_status(record: ServiceRecord, now_ns: int) -> bool:
        """Whether the service's status beats (so its lastalive says nothing more)."""
        return now_ns - record.status_seen_ns < LATE_PERIODS * record.interval_s * _S

    def state(
        self, service: str, value: Any, *, sealed_ns: int, instance: str | None = None
    ) -> None:
        record = self._record(service, instance)
        if record is None or not isinstance(value, dict):
            return
        online, seq = value.get("online"), value.get("seq")
        if not isinstance(online, bool) or not isinstance(seq, int):
            return
        if online:
            if record.seq is None or seq >= record.seq:
                record.seq, record.online, record.offline_sealed_ns = seq, True, None
        elif record.seq is None or seq == record.seq:
            record.seq, record.online, record.offline_sealed_ns = seq, False, sealed_ns
        else:
            return  # a late death of an earlier run
        record.untrusted = None
        self._touch(record)

    def status(
        self, service: str, value: Any, *, arrived_ns: int, instance: str | None = None
    ) -> None:
        """A trusted status. Its ``ts`` is its beat's time (``Heartbeat`` stamps the lastalive
        and the status of one beat alike), so it counts as a heartbeat too."""
        record = self._record(service, instance)
        if record is None or not isinstance(value, dict):
            return
        interval = value.get("interval_s")
        if isinstance(interval, int | float) and math.isfinite(interval) and interval > 0:
            record.interval_s = float(interval)
        record.status = _plain(value, depth=0)
        ts = value.get("ts")
        last = record.last_alive_ns or 0
        if isinstance(ts, int) and not isinstance(ts, bool) and ts >= last:
            if ts > last:  # (== : its beat's lastalive came first and was counted)
                record.arrivals.append((arrived_ns, True))
            record.last_alive_ns = ts
            record.untrusted = None
            record.status_seen_ns = arrived_ns
        self._touch(record)

    def untrusted(
        self, service: str, why: str, *, arrived_ns: int, instance: str | None = None
    ) -> None:
        """A heartbeat frame on the service's topics failed verification (``why``)."""
        record = self._record(service, instance)
        if record is None:
            return
        record.untrusted = f"untrusted: {why}"
        record.arrivals.append((arrived_ns, False))
        self._touch(record)

    def _touch(self, record: ServiceRecord) -> None:
        self.version += 1
        record.version = self.version
        record.next_judge_ns = 0
        if record.instance is not None:  # the service's row carries its instances
            self._touch(self.records[record.service])

    def judge(self, now_ns: int) -> None:
        """Re-judge the records the clock or a message may have changed; changes bump their
        version. A record is skipped until its ``next_judge_ns``."""
        for record in self.records.values():
            if now_ns < record.next_judge_ns:
                continue
            judged = _instance_states(record)
            state, reason = record.judge(now_ns)
            if (state, reason) != (record.state, record.reason) or (
                judged and judged != _instance_states(record)
            ):
                record.state, record.reason = state, reason
                self._touch(record)
            record.next_judge_ns = record.settles_at()

    def changed_since(self, version: int) -> list[ServiceRecord]:
        return [record for record in self.records.values() if record.version > version]

    def counts(self) -> dict[State, int]:
        counts: dict[State, int] = dict.fromkeys(("alive", "stale", "dead", "retired"), 0)
        counts["untrusted"] = 0
        for record in self.records.values():
            counts[record.state] += 1
        return counts


def _instance_states(record: ServiceRecord) -> list[tuple[State, str]]:
    return [(instance.state, instance.reason) for instance in record.instances.values()]


def _plain(value: Any, *, depth: int) -> Any:
    """A bounded, JSON-safe copy of a status value (strings cut, nesting and sizes capped)."""
    if depth > 4:
        return None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        return [_plain(item, depth=depth + 1) for item in value[:64]]
    if isinstance(value, dict):
        return {
            str(key)[:_MAX_TEXT]: _plain(item, depth=depth + 1)
            for key, item in list(value.items())[:64]
            if isinstance(key, str | int)
        }
    return None
