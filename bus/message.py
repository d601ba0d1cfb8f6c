"""Messages as a subscriber receives them: verified, or rejected with the reason.

A :class:`MessageStream` turns a transport's raw deliveries into :class:`Message` items (parsed,
signature and grant chain verified, not replayed) or :class:`Rejected` items. No frame ends a
stream, whatever it holds: every failure becomes a rejection, counted by the verifier.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bus import envelope as envelopes
from bus import uri as uris
from bus.entity import key_to_text
from bus.envelope import Envelope
from bus.errors import BusError, InternalError, VerificationError
from bus.po import PayloadObject
from bus.transport import Subscription
from bus.verifier import Verifier

__all__ = ["Message", "MessageStream", "Rejected", "consume_right"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A verified message."""

    uri: str
    pos: tuple[PayloadObject, ...]
    origin: bytes
    ts_ns: int
    persist: bool

    @classmethod
    def of(cls, envelope: Envelope) -> Message:
        return cls(envelope.uri, envelope.pos, envelope.origin, envelope.ts_ns, envelope.persist)

    @property
    def origin_text(self) -> str:
        return key_to_text(self.origin)

    def payload(self, number: str | None = None) -> PayloadObject | None:
        """The first payload object, or the first with PO ``number``."""
        for po in self.pos:
            if number is None or po.number == number:
                return po
        return None

    def value(self, number: str | None = None) -> Any:
        """The decoded value of :meth:`payload`; None if there is no such payload object."""
        po = self.payload(number)
        return None if po is None else po.value()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that failed verification; ``envelope`` is set when it at least parsed."""

    topic: str
    error: BusError
    envelope: Envelope | None


def consume_right(pattern: str) -> str:
    """The permission a subscription needs: C, C+ with a ``+``, C* with a ``*``."""
    segments = uris.parse(pattern, allow_wildcards=True)
    return "C*" if "*" in segments else "C+" if "+" in segments else "C"


class MessageStream:
    """Verified messages of one subscription. Iterate with ``async for``; with
    ``include_rejected`` the stream also yields :class:`Rejected` items."""

    def __init__(
        self, subscription: Subscription, verifier: Verifier, *, include_rejected: bool = False
    ) -> None:
        self.subscription = subscription
        self.verifier = verifier
        self.include_rejected = include_rejected
        self._replay_scope = object()  # replays are judged per subscription

    @property
    def pattern(self) -> str:
        return self.subscription.pattern

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        async for delivery in self.subscription:
            item = self._checked(delivery.topic, delivery.frame)
            if isinstance(item, Message) or self.include_rejected:
                yield item

    def _checked(self, topic: str, frame: bytes) -> Message | Rejected:
        """:meth:`verify`, and no exception whatever the frame: one that is not a BusError is a
        bug, counted and logged (type, size, topic — never the value) as an internal rejection,
        and the stream goes on."""
        try:
            return self.verify(topic, frame)
        except Exception as exc:
            logger.error(
                "unexpected %s checking a frame of %d bytes on %s",
                type(exc).__name__,
                len(frame),
                topic,
            )
            error = InternalError("unexpected failure checking a frame", topic=topic)
            self.verifier.record_rejection(error, None)
            return Rejected(topic, error, None)

    def verify(self, topic: str, frame: bytes) -> Message | Rejected:
        envelope: Envelope | None = None
        try:
            envelope = envelopes.parse(frame, max_bytes=self.verifier.max_frame_bytes)
            if envelope.uri != topic:
                raise VerificationError(
                    "the signed URI differs from the topic it arrived on", topic=topic
                )
            self.verifier.check(envelope, replay_scope=self._replay_scope)
        except BusError as error:
            self.verifier.record_rejection(error, envelope)
            return Rejected(topic, error, envelope)
        return Message.of(envelope)

    async def close(self) -> None:
        await self.subscription.close()
