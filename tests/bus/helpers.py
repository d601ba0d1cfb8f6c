"""Shared builders for the bus tests: a namespace and its owner, members holding grant chains,
bus URLs per transport, and hand-made frames for tests that speak the wire format directly."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from bus import BusClient, Entity, Grant, MessageStream, PayloadObject, Verifier, codec
from bus.transport import DEFAULT_BUFFER, ReconnectHook, Subscription, Transport, Will
from transports import open_transport

__all__ = [
    "ENVELOPE_CONTEXT",
    "HOUR_NS",
    "SEEDS",
    "TRANSPORTS",
    "Member",
    "Namespace",
    "RecordingTransport",
    "body_fields",
    "bus_url_for",
    "connect",
    "hand_frame",
    "make_grant",
    "memory_url",
    "new_entity",
    "next_message",
    "raw_body",
]

HOUR_NS = 3600 * 10**9
# The signing context bus/PROTOCOL.md specifies; test_envelope checks seal() agrees with it.
ENVELOPE_CONTEXT = b"modelbus envelope v1\x00"

# The transports a contract-style test runs over. "zmq" and "mqtt" use the fixtures
# ``zmq_bus_url`` (tests/fixtures/zmqbus.py) and ``mosquitto_url`` (tests/fixtures/mosquitto.py).
TRANSPORTS = ["memory", "zmq", pytest.param("mqtt", marks=pytest.mark.mqtt)]


# Every secret seed the helpers made, by public key text: tests assert none of them leaks.
SEEDS: dict[str, bytes] = {}


def new_entity(comment: str = "") -> Entity:
    """A fresh entity whose seed the tests remember (``SEEDS``)."""
    seed = os.urandom(32)
    entity = Entity(seed, comment=comment)
    SEEDS[entity.key_text] = seed
    return entity


def memory_url() -> str:
    """A fresh in-process hub: tests never see each other's messages."""
    return f"memory://{uuid.uuid4().hex}"


def bus_url_for(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "memory":
        return memory_url()
    if kind == "zmq":
        return str(request.getfixturevalue("zmq_bus_url"))
    if kind == "mqtt":
        return str(request.getfixturevalue("mosquitto_url"))
    raise ValueError(f"unknown transport kind {kind!r}")


def make_grant(
    giver: Entity,
    receiver: Entity | bytes,
    pattern: str,
    permissions: str,
    *,
    ttl: int = 0,
    expires_ns: int | None = None,
    created_ns: int | None = None,
) -> Grant:
    now = time.time_ns()
    return Grant.create(
        giver,
        receiver.public_key if isinstance(receiver, Entity) else receiver,
        pattern,
        permissions,
        ttl=ttl,
        expires_ns=now + HOUR_NS if expires_ns is None else expires_ns,
        created_ns=now if created_ns is None else created_ns,
    )


@dataclass(frozen=True)
class Member:
    """An entity and the grant chain (root first) it presents."""

    entity: Entity
    chain: tuple[Grant, ...] = ()

    @property
    def key(self) -> str:
        return self.entity.key_text

    @property
    def proof(self) -> tuple[bytes, ...]:
        return tuple(grant.encode() for grant in self.chain)

    @property
    def proofs(self) -> list[tuple[Grant, ...]]:
        return [self.chain] if self.chain else []

    def delegate(
        self, suffix_pattern: str, permissions: str, *, ttl: int = 0, **options: Any
    ) -> Member:
        """A new member whose chain is this one's plus a grant given by this member."""
        receiver = new_entity("delegate")
        grant = make_grant(self.entity, receiver, suffix_pattern, permissions, ttl=ttl, **options)
        return Member(receiver, (*self.chain, grant))


@dataclass
class Namespace:
    """A namespace: its owner entity, whose key (base64url) is the URIs' first segment."""

    owner: Entity = field(default_factory=lambda: new_entity("namespace"))

    @property
    def key(self) -> str:
        return self.owner.key_text

    @property
    def as_member(self) -> Member:
        return Member(self.owner)

    def uri(self, *segments: str) -> str:
        return "/".join((self.key, *segments))

    def grant(self, receiver: Entity | bytes, suffix: str, permissions: str, **kw: Any) -> Grant:
        return make_grant(self.owner, receiver, self.uri(suffix), permissions, **kw)

    def member(self, suffix: str, permissions: str, *, ttl: int = 0, **kw: Any) -> Member:
        """A new entity granted ``permissions`` on ``<ns>/<suffix>`` directly by the owner."""
        entity = new_entity("member")
        return Member(entity, (self.grant(entity, suffix, permissions, ttl=ttl, **kw),))


def connect(
    url: str, member: Member, *, verifier: Verifier | None = None, **options: Any
) -> BusClient:
    """A (not yet entered) BusClient for ``member`` on a new transport to ``url``."""
    return BusClient(
        open_transport(url), member.entity, proofs=member.proofs, verifier=verifier, **options
    )


async def next_message(stream: MessageStream, *, timeout_s: float = 10.0) -> Any:
    """The next item of a stream (a Message, or a Rejected with ``include_rejected``)."""
    with anyio.fail_after(timeout_s):
        async for item in stream:
            return item
    raise AssertionError(f"the stream on {stream.pattern} ended")


def body_fields(
    entity: Entity,
    uri: Any,
    pos: Sequence[PayloadObject] | list[Any] = (),
    *,
    proof: Sequence[bytes] = (),
    ts_ns: int | None = None,
    nonce: bytes | None = None,
    persist: bool = False,
    version: Any = 1,
) -> list[Any]:
    """The eight body fields of bus/PROTOCOL.md's envelope, as a list to tamper with."""
    return [
        version,
        uri,
        [[po.number, po.data] if isinstance(po, PayloadObject) else po for po in pos],
        entity.public_key,
        time.time_ns() if ts_ns is None else ts_ns,
        os.urandom(16) if nonce is None else nonce,
        persist,
        list(proof),
    ]


def hand_frame(signer: Entity, body: bytes, *, signature: bytes | None = None) -> bytes:
    """A frame ``[body, signature]`` built by hand, signed by ``signer`` unless given."""
    if signature is None:
        signature = signer.sign(ENVELOPE_CONTEXT + body)
    return codec.pack([body, signature])


def raw_body(*packed_fields: bytes) -> bytes:
    """A msgpack array of already-packed fields (to smuggle bytes msgpack would not make)."""
    assert len(packed_fields) < 16
    return bytes([0x90 | len(packed_fields)]) + b"".join(packed_fields)


class RecordingTransport:
    """Wraps a transport and records the patterns it was asked to subscribe to or query."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.url = inner.url
        self.subscribed: list[str] = []
        self.queried: list[str] = []
        self.published: list[str] = []

    async def connect(self, *, will: Will | None = None) -> None:
        await self.inner.connect(will=will)

    async def publish(self, topic: str, frame: bytes, *, persist: bool = False) -> None:
        self.published.append(topic)
        await self.inner.publish(topic, frame, persist=persist)

    async def subscribe(
        self, pattern: str, *, buffer: int = DEFAULT_BUFFER, share_group: str | None = None
    ) -> Subscription:
        self.subscribed.append(pattern)
        return await self.inner.subscribe(pattern, buffer=buffer, share_group=share_group)

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Any]:
        self.queried.append(pattern)
        return await self.inner.query(pattern, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.inner.close()

    def on_reconnect(self, hook: ReconnectHook) -> Callable[[], None]:
        return self.inner.on_reconnect(hook)
