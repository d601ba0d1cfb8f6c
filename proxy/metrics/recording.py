"""The proxy's Prometheus metrics: a private registry, cheap recording hooks, and ``/metrics``.

Recorded on the request path (by :class:`proxy.slots.Slot` through :meth:`ProxyMetrics.record`):

    modelbus_requests_total{slot,op,outcome}          outcome: "ok" or the error code
    modelbus_request_duration_seconds{slot,op}        histogram
    modelbus_request_attachment_bytes_total{slot,op}  attachment bytes (upload chunks)
    modelbus_uploads_total{outcome}                   upload.commit and upload.abort that succeeded

Read at scrape time from the objects that already count them (:class:`Sources`), so they cost
the request path nothing:

    modelbus_rejections_total{reason}    signature, grant, replay, skew, limit, malformed, other:
                                         frames the verifier rejected and requests the
                                         responders refused (bus.responder.ServeGate.refused)
    modelbus_replicas{state}             starting, ready, stopping, failed, stopped
    modelbus_replica_restarts_total{model}
    modelbus_batch_size                  histogram of the batches sent to replicas
    modelbus_heartbeats_sent_total
    modelbus_bus_reconnects_total

Labels stay bounded: ``op`` is one of the slot's operations or "unknown", ``outcome`` one of the
bus error codes or "error", ``model`` a deployed model's name; never a request id or a key.
The recording cost is measured by ``python -m proxy.metrics`` (ns per request recorded).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bus.errors import BusError

__all__ = [
    "BATCH_BUCKETS",
    "LATENCY_BUCKETS",
    "ProxyMetrics",
    "RequestRate",
    "Sources",
    "rejection_reason",
    "serve_metrics",
]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_UPLOAD_ENDS = {"upload.commit": "committed", "upload.abort": "aborted"}
_REASONS = {
    "bad_signature": "signature",
    "verification": "signature",
    "untrusted_root": "grant",
    "broken_chain": "grant",
    "grant_expired": "grant",
    "ttl_exceeded": "grant",
    "permission_missing": "grant",
    "out_of_scope": "grant",
    "replayed_nonce": "replay",
    "clock_skew": "skew",
    "frame_too_large": "limit",
    "limit_exceeded": "limit",
    "overloaded": "limit",
    "decode": "malformed",
    "invalid_uri": "malformed",
    "invalid_request": "malformed",
}


def _codes() -> set[str]:
    found: set[str] = set()
    stack: list[type[BusError]] = [BusError]
    while stack:
        cls = stack.pop()
        found.add(cls.code)
        stack.extend(cls.__subclasses__())
    return found


def rejection_reason(code: str) -> str:
    """The bounded ``reason`` label for a rejection's error code."""
    return _REASONS.get(code, "other")


@dataclass(frozen=True, slots=True)
class ReplicaFact:
    model: str
    state: str
    restarts: int


@dataclass(frozen=True)
class Sources:
    """Where the scrape-time metrics come from; each is optional (absent: not exported)."""

    rejected: Iterable[Callable[[], Mapping[str, int]]] = ()
    replicas: Callable[[], Iterable[ReplicaFact]] | None = None
    batch_sizes: Callable[[], Mapping[int, int]] | None = None
    heartbeats: Callable[[], int] | None = None
    reconnects: Callable[[], int] | None = None


class _SourcesCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self.sources
        rejections = CounterMetricFamily(
            "modelbus_rejections",
            "Frames rejected by verification and requests refused, by reason",
            labels=["reason"],
        )
        by_reason: dict[str, int] = dict.fromkeys(sorted(set(_REASONS.values())), 0)
        for counts in sources.rejected:
            for code, count in counts().items():
                reason = rejection_reason(code)
                by_reason[reason] = by_reason.get(reason, 0) + count
        for reason, count in sorted(by_reason.items()):
            rejections.add_metric([reason], count)
        yield rejections
        if sources.replicas is not None:
            yield from _replicas(list(sources.replicas()))
        if sources.batch_sizes is not None:
            yield _batches(sources.batch_sizes())
        if sources.heartbeats is not None:
            beats = CounterMetricFamily("modelbus_heartbeats_sent", "Heartbeats published")
            beats.add_metric([], sources.heartbeats())
            yield beats
        if sources.reconnects is not None:
            reconnects = CounterMetricFamily(
                "modelbus_bus_reconnects", "Times the bus connection was re-established"
            )
            reconnects.add_metric([], sources.reconnects())
            yield reconnects


def _replicas(facts: list[ReplicaFact]) -> Iterator[Metric]:
    states = GaugeMetricFamily("modelbus_replicas", "Replicas by state", labels=["state"])
    counts = dict.fromkeys(("starting", "ready", "stopping", "failed", "stopped"), 0)
    restarts: dict[str, int] = {}
    for fact in facts:
        counts[fact.state] = counts.get(fact.state, 0) + 1
        restarts[fact.model] = restarts.get(fact.model, 0) + fact.restarts
    for state, count in counts.items():
        states.add_metric([state], count)
    yield states
    family = CounterMetricFamily(
        "modelbus_replica_restarts", "Worker restarts after a crash, by model", labels=["model"]
    )
    for model, count in sorted(restarts.items()):
        family.add_metric([model], count)
    yield family


def _batches(sizes: Mapping[int, int]) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    for bound in BATCH_BUCKETS:
        buckets.append((str(bound), sum(n for size, n in sizes.items() if size <= bound)))
    buckets.append(("+Inf", sum(sizes.values())))
    total = float(sum(size * n for size, n in sizes.items()))
    family = HistogramMetricFamily("modelbus_batch_size", "Inputs per batch sent to a replica")
    family.add_metric([], buckets, total)
    return family


class RequestRate:
    """Requests per second between two calls (the heartbeat's status reads it each beat)."""

    def __init__(self, total: Callable[[], int], clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.clock = clock
        self._last = (clock(), total())

    def __call__(self) -> float:
        now, count = self.clock(), self.total()
        then, before = self._last
        self._last = (now, count)
        return round((count - before) / (now - then), 3) if now > then else 0.0


class _Series:
    """One (slot, op, outcome)'s counts: plain integers, no lock (one event loop records)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)


class _RequestCollector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelbus_requests",
            "Requests answered, by slot, operation and outcome",
            labels=["slot", "op", "outcome"],
        )
        latency = HistogramMetricFamily(
            "modelbus_request_duration_seconds",
            "Time to answer a request, by slot and operation",
            labels=["slot", "op"],
        )
        merged: dict[tuple[str, str], tuple[list[int], float]] = {}
        for (slot, op, outcome), series in sorted(self.metrics.series.items()):
            requests.add_metric([slot, op, outcome], series.count)
            counts, total = merged.get((slot, op), ([0] * len(series.buckets), 0.0))
            merged[(slot, op)] = (
                [a + b for a, b in zip(counts, series.buckets, strict=True)],
                total + series.sum,
            )
        for (slot, op), (counts, total) in merged.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((str(bound), float(cumulative)))
            latency.add_metric([slot, op], buckets, total)
        attachment = CounterMetricFamily(
            "modelbus_request_attachment_bytes",
            "Attachment bytes received (upload chunks), by slot and operation",
            labels=["slot", "op"],
        )
        for (slot, op), count in sorted(self.metrics.attachment_bytes.items()):
            attachment.add_metric([slot, op], count)
        uploads = CounterMetricFamily(
            "modelbus_uploads", "Uploads finished, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(self.metrics.uploads.items()):
            uploads.add_metric([outcome], count)
        yield from (requests, latency, attachment, uploads)


class ProxyMetrics:
    """The metrics of one proxy, in their own registry (no process-wide singleton).

    Recording adds to plain integers keyed by (slot, op, outcome) on the event loop's thread;
    the Prometheus families are built from them at scrape time."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.series: dict[tuple[str, str, str], _Series] = {}
        self.attachment_bytes: dict[tuple[str, str], int] = {}
        self.uploads: dict[str, int] = {"committed": 0, "aborted": 0}
        self.total = 0
        self._codes = _codes()
        self.registry.register(_RequestCollector(self))
        if sources is not None:
            self.watch(sources)

    def watch(self, sources: Sources) -> None:
        """Export what ``sources`` read at each scrape (the service's own counters)."""
        self.registry.register(_SourcesCollector(sources))

    def record(
        self, slot: str, op: str, outcome: str, duration_s: float, attachment_bytes: int = 0
    ) -> None:
        """One answered request. ``op`` must already be bounded (a known op or "unknown")."""
        self.total += 1
        key = (slot, op, outcome)
        series = self.series.get(key)
        if series is None:
            if outcome != "ok" and outcome not in self._codes:
                key = (slot, op, "error")
            series = self.series.setdefault(key, _Series())
        series.count += 1
        series.sum += duration_s
        series.buckets[bisect.bisect_left(LATENCY_BUCKETS, duration_s)] += 1
        if attachment_bytes:
            pair = (slot, op)
            self.attachment_bytes[pair] = self.attachment_bytes.get(pair, 0) + attachment_bytes
        if outcome == "ok" and op in _UPLOAD_ENDS:
            self.uploads[_UPLOAD_ENDS[op]] += 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 9470,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; ``started`` gets the port."""

    from aiohttp import web  # the HTTP server only for a proxy that serves /metrics

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = next(
            (int(a[1]) for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2), port
        )
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.move_on_after(5, shield=True):
            await runner.cleanup()


def _bench(count: int = 200_000) -> None:
    """ns per request recorded (a counter and a histogram, children cached)."""
    metrics = ProxyMetrics()
    record = metrics.record
    for _ in range(1000):
        record("predict", "predict", "ok", 0.002)
    started = time.perf_counter_ns()
    for index in range(count):
        record("predict", "predict", "ok", 0.0001 * (index % 50))
    elapsed = time.perf_counter_ns() - started
    print(f"ProxyMetrics.record: {elapsed / count:.0f} ns per request ({count} requests)")


if __name__ == "__main__":
    _bench()
