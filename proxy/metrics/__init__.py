"""Prometheus metrics of a proxy: plain counters on the request path, families built at scrape.

Door: it imports nothing of the service, the backend or the registry; the service hands it
:class:`Sources` (callables reading the counters the service's parts already keep).
"""

from proxy.metrics.recording import (
    ProxyMetrics,
    ReplicaFact,
    RequestRate,
    Sources,
    serve_metrics,
)

__all__ = ["ProxyMetrics", "ReplicaFact", "RequestRate", "Sources", "serve_metrics"]
