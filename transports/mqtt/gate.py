"""When an MQTT connection may be used: open after the first CONNACK, and after a reconnect only
once the ``on_reconnect`` hooks have run.

After a broker restart the broker has already published this client's Last Will (a service's
death); the hooks re-announce what must be true before anything else goes out (the birth). So a
reconnect opens the link for the hooks' own publishes only (:meth:`ReconnectHooks.is_running`),
runs them in order, then opens the gate for everyone else. paho re-sends the QoS 1 messages that
were unacknowledged when the connection dropped on its own, right after the CONNACK.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bus.transport import ReconnectHook, ReconnectHooks

__all__ = ["ConnectionGate"]

logger = logging.getLogger(__name__)


class ConnectionGate:
    """Used from the event loop only (the transport posts paho's callbacks to it)."""

    def __init__(self) -> None:
        self.hooks = ReconnectHooks()
        self._open = asyncio.Event()
        self._is_link_up = False
        self._generation = 0  # one per CONNACK: a late end of older hooks opens nothing
        self._announcing: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        return self.hooks.add(hook)

    def connected(self, *, is_first: bool, url: str, filters: int) -> None:
        """A CONNACK accepted the connection: open now (first), or after the hooks (again)."""
        self._is_link_up = True
        self._generation += 1
        if is_first:
            self._open.set()
            return
        self.reconnects += 1
        logger.info("reconnected to %s; subscribed to %d filters again", url, filters)
        generation = self._generation
        # The adapter's one task per reconnect; close() cancels it.
        self._announcing = asyncio.get_running_loop().create_task(
            self._announce(generation), name="mqtt reconnect hooks"
        )

    async def _announce(self, generation: int) -> None:
        await self.hooks.run()
        if self._is_link_up and generation == self._generation:
            self._open.set()

    def lost(self) -> bool:
        """The connection dropped; returns whether it was open."""
        was_open = self._open.is_set()
        self._is_link_up = False
        self._open.clear()
        return was_open

    async def wait(self) -> None:
        """Until the gate is open; inside a reconnect hook, until the link is up."""
        if self._open.is_set() or (self._is_link_up and ReconnectHooks.is_running()):
            return
        await self._open.wait()

    def close(self) -> None:
        """Wake every waiter (they find the transport closed) and stop running hooks."""
        self._open.set()
        if self._announcing is not None:
            self._announcing.cancel()
