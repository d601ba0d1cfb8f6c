"""The plain-JSON status: a retained, unsigned copy of a service's liveness for generic MQTT tools.

    S/!meta/status.json   UTF-8 JSON, retained, NOT signed (unauthenticated convenience data)

    {"service": S, "online": bool, "seq": int, "ts": <int ns>, "time": "<ISO-8601 UTC>",
     "interval_s": float, "uptime_s": float, "status": {...the signed status' service facts},
     "authenticated": false}

A named instance of a service (several proxies serving one service URI; bus.liveness.heartbeat)
publishes the same document on the same topic, with two more keys: ``"instance"``, the name of
the instance that published it (its ``seq``, ``uptime_s`` and ``status`` are that instance's),
and ``"instances"``, every instance it knows with ``{"instance", "online", "ts", "time"}``
(``ts``/``time``: its latest lastalive), itself included; ``online`` is then true while any
listed instance is online. The instances publish in turn, so the document is as fresh as the
latest beat of any of them.

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


def encode(
    service: str,
    status: dict[str, Any],
    *,
    online: bool,
    instance: str | None = None,
    instances: list[dict[str, Any]] | None = None,
) -> bytes:
    """The JSON document for ``service`` from the same map the signed status carries; with
    ``instance``, also the instance list (module docstring): ``instances`` as the publisher
    knows them (``{"instance", "online", "ts"}`` each), its own entry made from ``online``."""
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
    if instance is not None:
        listed = _instances(instance, online, ts_ns, instances or [])
        document["online"] = any(entry["online"] for entry in listed)
        document["instance"] = instance
        document["instances"] = listed
    return json.dumps(_jsonable(document), separators=(",", ":"), allow_nan=False).encode()


def _instances(
    own: str, online: bool, ts_ns: int, known: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    entries = {
        entry["instance"]: entry
        for entry in known
        if isinstance(entry.get("instance"), str) and entry["instance"] != own
    }
    entries[own] = {"instance": own, "online": online, "ts": ts_ns}
    listed = []
    for name in sorted(entries):
        entry = entries[name]
        ts = entry.get("ts")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) and 0 <= ts < 2**63 else None
        listed.append(
            {
                "instance": name,
                "online": entry.get("online") is True,
                "ts": ts,
                "time": None if ts is None else _iso(ts),
            }
        )
    return listed


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
