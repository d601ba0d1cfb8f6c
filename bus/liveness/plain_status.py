"""The plain-JSON status: a retained, unsigned copy of a service's liveness for generic MQTT tools.

    S/!meta/status.json   UTF-8 JSON, retained, NOT signed (unauthenticated convenience data)

    {"service": S, "online": bool, "seq": int, "ts": <int ns>, "time": "<ISO-8601 UTC>",
     "interval_s": float, "uptime_s": float, "status": {...the signed status' service facts},
     "authenticated": false}

Node-RED, MQTT Explorer or ``mosquitto_sub -t 'ns/#'`` show it with no code of ours. Anyone who
can publish on the broker could forge it: decisions must read the signed ``S/!meta/status``.
It is published with each beat and, ``online: false``, on a clean shutdown; a crash leaves the
last one retained (the Will is the signed state, one per connection), so readers judge freshness
from ``ts`` and ``interval_s``. Bus clients that subscribe to ``S/*`` see it as a malformed frame
and drop it. Pure functions: ``encode`` never fails on a status a service built.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

__all__ = ["PLAIN_STATUS", "encode"]

PLAIN_STATUS = "!meta/status.json"
_BASE = ("seq", "ts", "uptime_s", "interval_s")


def encode(service: str, status: dict[str, Any], *, online: bool) -> bytes:
    """The JSON document for ``service`` from the same map the signed status carries."""
    ts = status.get("ts")
    ts_ns = ts if isinstance(ts, int) else time.time_ns()
    document = {
        "service": service,
        "online": online,
        "seq": status.get("seq"),
        "ts": ts_ns,
        "time": _iso(ts_ns),
        "interval_s": status.get("interval_s"),
        "uptime_s": status.get("uptime_s"),
        "status": {key: value for key, value in status.items() if key not in _BASE},
        "authenticated": False,
    }
    return json.dumps(_jsonable(document), separators=(",", ":"), allow_nan=False).encode()


def _iso(ts_ns: int) -> str:
    seconds, rest = divmod(ts_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
