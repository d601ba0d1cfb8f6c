"""The live fleet dashboard: heartbeats under a pattern, judged and shown in a browser.

:mod:`proxy.dashboard.fleet` keeps the per-service records (pure), :mod:`proxy.dashboard.monitor`
feeds them from the bus, :mod:`proxy.dashboard.app` serves the page, its event stream, JSON and
Prometheus metrics. ``modelbus dashboard PATTERN`` (proxy/cli_dashboard.py) runs it.
"""

from proxy.dashboard.app import Dashboard, FleetCollector, is_loopback
from proxy.dashboard.fleet import Fleet, ServiceRecord, State
from proxy.dashboard.monitor import FleetMonitor, probe_topic

__all__ = [
    "Dashboard",
    "Fleet",
    "FleetCollector",
    "FleetMonitor",
    "ServiceRecord",
    "State",
    "is_loopback",
    "probe_topic",
]
