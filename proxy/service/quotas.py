"""Quotas: what one sender may hold of the service at once, and the service's global caps.

The service is shared by tenants who need not trust each other, so no one sender may take a
whole shared resource (PROTOCOL.md §17.7 lists every quota with its typed error):

- a sender's **inputs waiting for predictions**, over every version's queue
  (:class:`SenderQuota`, ``overloaded`` with details ``{"queued", "limit"}``; one request with
  more inputs than the limit, ``limit_exceeded`` with ``{"size", "limit"}``) — the queue of a
  version holds 10,000 inputs, a sender at most ``max_inputs_per_sender`` of them;
- **``model.wait_ready`` calls** waiting at once, service-wide (``overloaded`` with details
  ``{"limit"}``), so waiters cannot fill the admin slot;
- the sizes of what a request stores: an application's ``default_output`` and ``description``
  (:data:`MAX_TEXT_CHARS`), a version's ``metadata`` and an upload's ``metadata``
  (:data:`MAX_METADATA_BYTES` packed, :func:`check_metadata`, ``limit_exceeded``).

Requests in flight per sender and slot are bounded by the bus responder
(:class:`bus.responder.Responder`, ``max_per_sender``); replicas in all by the backend
(``BackendSettings.max_replicas_total``); applications by the admin operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bus.codec import pack
from bus.errors import DecodeError, LimitExceeded, Overloaded

__all__ = ["MAX_METADATA_BYTES", "MAX_TEXT_CHARS", "SenderQuota", "check_metadata"]

MAX_TEXT_CHARS = 4096
"""An application's ``default_output`` and ``description``, each."""
MAX_METADATA_BYTES = 64 * 1024
"""A version's or an upload's ``metadata``, msgpack-packed."""


class SenderQuota:
    """At most ``limit`` units held at once per key (a sender, or one key for a global cap)."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @contextmanager
    def hold(self, key: str, count: int = 1) -> Iterator[None]:
        """Hold ``count`` units for the block; Overloaded if that would pass the limit."""
        held = self.held(key)
        if count > self.limit:  # never fits, even alone: retrying cannot help
            raise LimitExceeded(
                f"{count} {self.what} at once are over the limit of {self.limit}; split them",
                size=count,
                limit=self.limit,
            )
        if held + count > self.limit:
            raise Overloaded(
                f"{held} {self.what} already wait, and at most {self.limit} may: retry "
                "once some are answered",
                queued=held,
                limit=self.limit,
            )
        self._held[key] = held + count
        try:
            yield
        finally:
            left = self._held[key] - count
            if left:
                self._held[key] = left
            else:
                del self._held[key]


def check_metadata(metadata: dict[str, Any], *, what: str = "metadata") -> None:
    """LimitExceeded if ``metadata`` packs to more than :data:`MAX_METADATA_BYTES`."""
    try:
        size = len(pack(metadata))
    except DecodeError:
        raise LimitExceeded(f"{what} cannot be packed", limit=MAX_METADATA_BYTES) from None
    if size > MAX_METADATA_BYTES:
        raise LimitExceeded(
            f"{what} is {size} bytes packed; at most {MAX_METADATA_BYTES} are kept",
            size=size,
            limit=MAX_METADATA_BYTES,
        )
