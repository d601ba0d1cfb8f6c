"""The embedded model backend: model versions served by replicas (worker processes or containers).

Door: it knows nothing of bus slots, of the registry or of requests' senders: it starts, sizes
and stops versions and answers ``predict`` for a ``(name, version)``. The worker entry point is
``python -m proxy.backend.worker``.
"""

from proxy.backend.containers import ContainerEngine, ContainerInfo
from proxy.backend.embedded import BackendSettings, EmbeddedBackend
from proxy.backend.runtime import ImageRuntime

__all__ = ["BackendSettings", "ContainerEngine", "ContainerInfo", "EmbeddedBackend", "ImageRuntime"]
