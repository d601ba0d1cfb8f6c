"""Reading liveness: which services under a pattern are alive, from their persisted heartbeats.

A service is **alive** when its ``!meta/lastalive`` is younger than 30 s and its latest state is
not a death of the current run; **dead** when the lastalive is stale or absent ("stale"), or
its state says offline with the same ``seq`` as its latest birth ("died" — the Will or a clean
shutdown). A death with another ``seq`` (a late Will of an earlier run) is ignored.

A service served by **named instances** (bus.liveness.heartbeat: ``S/!meta/instances/N/…``) is
judged from them alone: each instance by the rule above, and the service alive while any
instance is (its own ``S/!meta/state`` and ``S/!meta/status``, left by an unnamed proxy that
served it once, do not count). A reader whose grants do not cover ``p/!meta/instances/+/+``
sees no instances, and judges the service by its ``S/!meta/lastalive``, which every instance
refreshes.

A reader that knows the service's key passes it as ``origin``: then only messages that key
signed count, so another entity allowed to publish under ``!meta`` cannot declare the service
dead (or alive) — its messages are left out as if absent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.errors import DecodeError, VerificationError
from bus.liveness.heartbeat import INSTANCES, LASTALIVE, STALE_AFTER_S, STATE, STATUS
from bus.po import PO_METADATA, PO_STATE, PO_STATUS

if TYPE_CHECKING:
    from bus.client import BusClient
    from bus.message import Message

__all__ = ["ServiceState", "aggregate", "evaluate", "service_states"]


@dataclass(frozen=True, slots=True)
class ServiceState:
    service: str
    is_alive: bool
    reason: str
    last_alive_ns: int | None
    seq: int | None
    status: dict[str, Any]
    died_ns: int | None = None
    """For a death: when the offline state was signed. A Last Will is signed when the service
    connects, so one signed before the last heartbeat was published by the broker (a broker that
    went down), not by the service."""
    instances: tuple[ServiceState, ...] = ()
    """A service served by named instances: each one's state (``service`` is its name), by
    name; empty for a service served by one unnamed proxy."""

    def age_s(self, now_ns: int) -> float | None:
        return None if self.last_alive_ns is None else (now_ns - self.last_alive_ns) / 1e9


def evaluate(
    service: str,
    lastalive: dict[str, Any] | None,
    state: dict[str, Any] | None,
    status: dict[str, Any] | None,
    *,
    now_ns: int,
    stale_after_s: float = STALE_AFTER_S,
) -> ServiceState:
    """Decide one service's liveness from its three persisted values (each may be missing)."""
    last_ns = lastalive.get("ts") if lastalive else None
    last_ns = last_ns if isinstance(last_ns, int) else None
    current_seq = (status or {}).get("seq")
    if state and state.get("online") is True:
        current_seq = state.get("seq")
    facts = dict(status or {})
    if state and state.get("online") is False and state.get("seq") == current_seq:
        died_ns = state.get("ts")
        died_ns = died_ns if isinstance(died_ns, int) else None
        return ServiceState(service, False, "died", last_ns, current_seq, facts, died_ns)
    if last_ns is None:
        return ServiceState(service, False, "never announced lastalive", None, current_seq, facts)
    if now_ns - last_ns > stale_after_s * 1e9:
        age = (now_ns - last_ns) / 1e9
        return ServiceState(service, False, f"stale ({age:.0f} s)", last_ns, current_seq, facts)
    return ServiceState(service, True, "alive", last_ns, current_seq, facts)


def _under(pattern: str, suffix: str) -> str:
    return f"{pattern}/{suffix}"


def _by_service(
    messages: list[Message], suffix: str, number: str, origin: bytes | None
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for message in messages:
        if origin is not None and message.origin != origin:
            continue
        if message.uri.endswith("/" + suffix):
            value = message.value(number)
            if isinstance(value, dict):
                found[message.uri[: -len(suffix) - 1]] = value
    return found


async def service_states(
    client: BusClient,
    pattern: str,
    *,
    stale_after_s: float = STALE_AFTER_S,
    origin: bytes | None = None,
) -> list[ServiceState]:
    """Every service under ``pattern`` (e.g. ``ns/*``) with a persisted heartbeat or state;
    with ``origin``, from the messages signed by that key only (module docstring)."""
    lastalive = _by_service(
        await client.query(_under(pattern, LASTALIVE)), LASTALIVE, PO_METADATA, origin
    )
    states = _by_service(await client.query(_under(pattern, STATE)), STATE, PO_STATE, origin)
    statuses = _by_service(await client.query(_under(pattern, STATUS)), STATUS, PO_STATUS, origin)
    instances = await _instance_records(client, pattern, origin)
    now_ns = time.time_ns()
    return [
        evaluate(
            service,
            lastalive.get(service),
            states.get(service),
            statuses.get(service),
            now_ns=now_ns,
            stale_after_s=stale_after_s,
        )
        if service not in instances
        else aggregate(service, instances[service], now_ns=now_ns, stale_after_s=stale_after_s)
        for service in sorted(set(lastalive) | set(states) | set(instances))
    ]


_KINDS = {"lastalive": PO_METADATA, "state": PO_STATE, "status": PO_STATUS}
_NAMED = 8  # dead instances named in a dead service's reason
Records = dict[str, dict[str, Any]]  # kind ("lastalive", "state", "status") → its value


def aggregate(
    service: str,
    instances: dict[str, Records],
    *,
    now_ns: int,
    stale_after_s: float = STALE_AFTER_S,
) -> ServiceState:
    """A service served by named instances, from each one's records: alive while any is."""
    judged = tuple(
        evaluate(
            name,
            records.get("lastalive"),
            records.get("state"),
            records.get("status"),
            now_ns=now_ns,
            stale_after_s=stale_after_s,
        )
        for name, records in sorted(instances.items())
    )
    alive = sum(1 for instance in judged if instance.is_alive)
    seen = [i.last_alive_ns for i in judged if i.last_alive_ns is not None]
    if alive:
        reason = f"alive ({alive} of {len(judged)} instances)"
    else:
        named = [f"{i.service}: {i.reason}" for i in judged[:_NAMED]]
        more = [f"{len(judged) - _NAMED} more"] if len(judged) > _NAMED else []
        reason = "no instance alive (" + ", ".join(named + more) + ")"
    return ServiceState(
        service, alive > 0, reason, max(seen, default=None), None, {}, instances=judged
    )


async def _instance_records(
    client: BusClient, pattern: str, origin: bytes | None
) -> dict[str, dict[str, Records]]:
    """service → instance → its records, from ``pattern/!meta/instances/+/+``; none when the
    reader may not read there."""
    try:
        messages = await client.query(f"{pattern}/{INSTANCES}/+/+")
    except VerificationError:  # no grant to read instances: judged by S/!meta/lastalive
        return {}
    found: dict[str, dict[str, Records]] = {}
    marker = f"/{INSTANCES}/"
    for message in messages:
        if origin is not None and message.origin != origin:
            continue
        service, _, rest = message.uri.rpartition(marker)
        name, _, kind = rest.partition("/")
        number = _KINDS.get(kind)
        if not service or number is None:
            continue
        try:
            value = message.value(number)
        except DecodeError:  # a verified sender's malformed payload: as if absent
            continue
        if isinstance(value, dict):
            found.setdefault(service, {}).setdefault(name, {})[kind] = value
    return found
