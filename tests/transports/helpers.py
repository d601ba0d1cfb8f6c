"""Helpers shared by the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from bus.transport import Delivery, Subscription, Transport
from transports import open_transport

WAIT_S = 10


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Transport]:
    """A transport opened from ``url``, connected, closed on exit."""
    transport = open_transport(url)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


async def receive(subscription: Subscription, count: int) -> list[Delivery]:
    """The next ``count`` deliveries, waiting at most WAIT_S."""
    received: list[Delivery] = []
    with anyio.fail_after(WAIT_S):
        async for delivery in subscription:
            received.append(delivery)
            if len(received) == count:
                break
    return received
