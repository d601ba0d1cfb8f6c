"""The hand-off from paho's network thread to the event loop: calls queued in order, and the
loop woken once per burst rather than once per message.

``call_soon_threadsafe`` writes to the loop's self-pipe and costs the loop a turn for every call;
under a stream of small messages (a monitor of 10,000 services' heartbeats receives 3,000 a
second) that is most of the transport's cost. Here the loop is asked to run the queue only when
the queue was empty, and runs everything queued by then in one turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Inbox"]

logger = logging.getLogger(__name__)


class Inbox:
    """Calls posted from any thread, run in order on ``loop`` (set once the loop is known)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """Queue ``callback(*args)``; dropped when there is no loop or it is closed."""
        if self.loop is None:
            return
        with self._lock:
            self._calls.append((callback, args))
            if len(self._calls) > 1:
                return  # the loop is already asked to run the queue
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            logger.debug("dropped a callback from paho: the event loop is closed")
            with self._lock:
                self._calls.clear()

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for callback, args in calls:
            try:
                callback(*args)
            except Exception:  # one failure must not lose the rest of the burst
                logger.exception("a callback from paho failed on the event loop")
