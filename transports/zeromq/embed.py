"""Join the ZeroMQ bus at a URL, or start it in this process when nobody answers there.

``modelbus serve`` with no arguments uses this: the first service on a machine embeds the bus
(the forwarder runs in its process and the service talks to it over ``inproc://``); a later
one, or any other client, finds it answering and connects over TCP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus.errors import TransportError
from bus.transport import Transport
from transports.zeromq.client import ZmqTransport
from transports.zeromq.forwarder import Forwarder

__all__ = ["embedded_or_connected"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0


@asynccontextmanager
async def embedded_or_connected(url: str) -> AsyncIterator[tuple[Transport, bool]]:
    """A transport for the bus at ``url`` (not yet connected), and whether this process now
    runs that bus: True when nobody answered there and the forwarder was started here (it
    stops when the context exits)."""
    probe = ZmqTransport(url, connect_timeout_s=PROBE_TIMEOUT_S)
    try:
        await probe.connect()
    except TransportError:
        async with Forwarder(url) as forwarder:
            logger.info("started the embedded ZeroMQ bus at %s", url)
            yield forwarder.local_transport(), True
        return
    finally:
        await probe.close()
    yield ZmqTransport(url), False
