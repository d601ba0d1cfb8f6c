"""What the service tells its metrics and its status about itself, read from the objects that
already count it: the verifier's rejections, the responders' refusals, the backend's replicas
and batches, the heartbeat's beats, the transport's reconnects."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bus import BusClient, Heartbeat
from bus.responder import ServeGate
from proxy.backend import EmbeddedBackend
from proxy.backend.embedded import ReplicaState
from proxy.metrics import ReplicaFact, Sources

__all__ = ["replica_summary", "service_sources"]


def replica_summary(replicas: Iterable[ReplicaState]) -> dict[str, Any]:
    """A version's replicas for the status: counts by state, and restarts after crashes."""
    states: collections.Counter[str] = collections.Counter()
    restarts = 0
    for replica in replicas:
        states[replica.state] += 1
        restarts += replica.restarts
    return {"replica_states": dict(states), "restarts": restarts}


def service_sources(
    client: BusClient, gate: ServeGate, backend: EmbeddedBackend, heartbeat: Heartbeat
) -> Sources:
    def replicas() -> Iterator[ReplicaFact]:
        for name, version in backend.versions():
            for replica in backend.replicas(name, version):
                yield ReplicaFact(name, replica.state, replica.restarts)

    def batch_sizes() -> Mapping[int, int]:
        sizes: collections.Counter[int] = collections.Counter()
        for name, version in backend.versions():
            sizes.update(backend.stats(name, version).batch_sizes)
        return sizes

    def reconnects() -> int:
        count = getattr(client.transport, "reconnects", 0)  # transports that reconnect count
        return count if isinstance(count, int) else 0

    return Sources(
        rejected=(lambda: client.verifier.rejected, lambda: gate.refused),
        replicas=replicas,
        batch_sizes=batch_sizes,
        heartbeats=lambda: heartbeat.beats,
        reconnects=reconnects,
    )
