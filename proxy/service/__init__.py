"""The proxy on the bus: start-up, the slots and their operations (forecasts by meaning among
them: :mod:`proxy.service.forecast`, which also uses :mod:`chooser`), version selection.

Door: it uses :mod:`proxy.registry`, :mod:`proxy.uploads` and :mod:`proxy.backend`; it never
imports :mod:`proxy.cli`, :mod:`proxy.bench` or :mod:`container_manager`.
"""

from proxy.service.settings import (
    DEFAULT_BUS,
    DEFAULT_SERVICE_PATH,
    ProxySettings,
    default_data_dir,
)
from proxy.service.startup import (
    ServiceInfo,
    load_or_create_entity,
    run_proxy,
    running_proxy,
    service_uris,
)

__all__ = [
    "DEFAULT_BUS",
    "DEFAULT_SERVICE_PATH",
    "ProxySettings",
    "ServiceInfo",
    "default_data_dir",
    "load_or_create_entity",
    "run_proxy",
    "running_proxy",
    "service_uris",
]
