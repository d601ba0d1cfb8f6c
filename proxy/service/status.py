"""The service's rich status: what it announces on its status signal and answers ``status`` with.

Built first, from the backend, the uploads and the metrics, so that every part that reports into
it (the predict operations count default outputs) and every part that reads it (the heartbeat,
the ``status`` operation) gets it at construction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from proxy.backend import EmbeddedBackend
from proxy.metrics import ProxyMetrics, RequestRate
from proxy.service.metrics import replica_summary
from proxy.uploads import Uploads

__all__ = ["VERSION", "ServiceStatus"]

VERSION = "0.1.0"


class ServiceStatus:
    """``rejections`` is the service's live count of refused frames by error code (its bus
    client's verifier counts them), reported as it is at each snapshot."""

    def __init__(
        self,
        backend: EmbeddedBackend,
        uploads: Uploads,
        metrics: ProxyMetrics,
        rejections: Mapping[str, int] | None = None,
        instance: str | None = None,
    ) -> None:
        """``instance``: this proxy's name among several serving the service (then reported as
        ``instance``); None: the only proxy, and no such fact."""
        self.backend = backend
        self.uploads = uploads
        self.rejections: Mapping[str, int] = {} if rejections is None else rejections
        self.instance = instance
        self.started = time.monotonic()
        self.served_default = 0
        """Predictions answered with an application's default output (SLO missed, or failed)."""
        self.request_rate = RequestRate(lambda: metrics.total)

    def snapshot(self) -> dict[str, Any]:
        backend = self.backend
        named = {} if self.instance is None else {"instance": self.instance}
        return named | {
            "version": VERSION,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "models": [
                {
                    "model": name,
                    "version": version,
                    "ready": backend.is_ready(name, version),
                    "replicas": len(backend.replicas(name, version)),
                    "queued": backend.stats(name, version).queued,
                    **replica_summary(backend.replicas(name, version)),
                }
                for name, version in backend.versions()
            ],
            "served_default": self.served_default,
            "requests_per_s": self.request_rate(),
            "uploads": self.uploads.in_progress(),
            "rejections": dict(sorted(self.rejections.items())),
        }
