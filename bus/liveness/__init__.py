"""Liveness on the bus: a service's heartbeats (XBOS ``!meta/lastalive``, Sparkplug-style birth
and death, the rich status, an unsigned JSON copy for generic MQTT tools) and reading them back.
"""

from bus.liveness.heartbeat import (
    DEFAULT_INTERVAL_S,
    INSTANCES,
    LASTALIVE,
    STALE_AFTER_S,
    STATE,
    STATUS,
    Heartbeat,
)
from bus.liveness.instances import InstanceView
from bus.liveness.monitor import ServiceState, aggregate, evaluate, service_states

__all__ = [
    "DEFAULT_INTERVAL_S",
    "INSTANCES",
    "LASTALIVE",
    "STALE_AFTER_S",
    "STATE",
    "STATUS",
    "Heartbeat",
    "InstanceView",
    "ServiceState",
    "aggregate",
    "evaluate",
    "service_states",
]
