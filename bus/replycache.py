"""The replies a responder keeps so that a retried request id is answered, not run, again.

Bounded three ways, so that no requester can make a service hold more than its share: at most
``max_entries`` replies, ``max_bytes`` of packed reply bytes in all, and ``max_sender_bytes`` per
requester (origin key). The oldest replies go first — the sender's own when the sender is over
its share, everyone's when the whole cache is. A reply bigger than a sender's share is not kept:
a retry of it runs the request again.
"""

from __future__ import annotations

from collections import OrderedDict

from bus.po import PayloadObject

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_SENDER_BYTES",
    "ReplyCache",
]

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_SENDER_BYTES = 16 * 1024 * 1024

Key = tuple[bytes, str]  # (origin key, request id)


class ReplyCache:
    """Packed replies by (origin, request id), oldest first."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_sender_bytes: int = DEFAULT_MAX_SENDER_BYTES,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_sender_bytes = max_sender_bytes
        self.nbytes = 0
        self._replies: OrderedDict[Key, PayloadObject] = OrderedDict()
        self._by_sender: dict[bytes, OrderedDict[str, int]] = {}  # rid → size, oldest first
        self._sender_bytes: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._replies)

    def __contains__(self, key: Key) -> bool:
        return key in self._replies

    def get(self, key: Key) -> PayloadObject | None:
        return self._replies.get(key)

    def sender_bytes(self, origin: bytes) -> int:
        return self._sender_bytes.get(origin, 0)

    def put(self, key: Key, reply: PayloadObject) -> bool:
        """Keep ``reply``; returns False when it is too big for any sender's share."""
        self._discard(key)
        size = len(reply.data)
        if size > min(self.max_sender_bytes, self.max_bytes):
            return False
        origin, rid = key
        while self.sender_bytes(origin) + size > self.max_sender_bytes:
            self._discard((origin, next(iter(self._by_sender[origin]))))
        while self._replies and (
            len(self._replies) >= self.max_entries or self.nbytes + size > self.max_bytes
        ):
            self._discard(next(iter(self._replies)))
        self._replies[key] = reply
        self._by_sender.setdefault(origin, OrderedDict())[rid] = size
        self._sender_bytes[origin] = self.sender_bytes(origin) + size
        self.nbytes += size
        return True

    def _discard(self, key: Key) -> None:
        reply = self._replies.pop(key, None)
        if reply is None:
            return
        self.nbytes -= len(reply.data)
        origin, rid = key
        mine = self._by_sender[origin]
        del mine[rid]
        self._sender_bytes[origin] -= len(reply.data)
        if not mine:
            del self._by_sender[origin], self._sender_bytes[origin]
