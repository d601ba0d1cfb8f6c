"""Open a transport from a URL, picking the implementation from a closed table, lazily imported.

memory://name                 in-process hub (tests)
zmq://127.0.0.1:7700          the ZeroMQ forwarder started by ``modelbus bus``
mqtt://host:1883              an MQTT 5 broker; mqtts:// for TLS; user:password@ in the URL
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from bus.errors import TransportError
from bus.transport import Transport

__all__ = ["open_or_embed", "open_transport", "transport_names"]

_TABLE: dict[str, tuple[str, str]] = {
    "memory": ("transports.memory", "MemoryTransport"),
    "zmq": ("transports.zeromq", "ZmqTransport"),
    "mqtt": ("transports.mqtt", "MqttTransport"),
    "mqtts": ("transports.mqtt", "MqttTransport"),
}


def transport_names() -> list[str]:
    return sorted(_TABLE)


def open_transport(url: str, **options: Any) -> Transport:
    """Build (not connect) the transport for ``url``; ``options`` go to its constructor."""
    scheme = urlsplit(url).scheme
    if scheme not in _TABLE:
        raise TransportError(
            f"unknown bus URL scheme {scheme!r} in {url!r}; use one of "
            + ", ".join(f"{name}://" for name in transport_names()),
            url=url,
        )
    module_name, class_name = _TABLE[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        transport: Transport = cls(urlsplit(url).netloc or "default", **options)
    else:
        transport = cls(url, **options)
    return transport


@asynccontextmanager
async def open_or_embed(url: str, *, embed: bool = True) -> AsyncIterator[tuple[Transport, bool]]:
    """A service's transport, and whether this process runs the bus itself: with ``embed`` and
    a ``zmq://`` URL nobody answers at, the ZeroMQ forwarder is started in this process for the
    life of the context (:mod:`transports.zeromq.embed`); otherwise as :func:`open_transport`."""
    if not (embed and urlsplit(url).scheme == "zmq"):
        yield open_transport(url), False
        return
    embedding = importlib.import_module("transports.zeromq.embed")
    async with embedding.embedded_or_connected(url) as (transport, embedded):
        yield transport, embedded
