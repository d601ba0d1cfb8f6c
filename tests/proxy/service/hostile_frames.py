"""Hostile frames for the fuzz test of a running service, from a seeded generator.

Each family yields ``(topic, frame)`` pairs and names the rejection codes the service may count
for it; every frame of a family that reaches the service is counted exactly once.
"""

from __future__ import annotations

import os
import random
import struct
import time
from dataclasses import dataclass

from bus import PO_REQUEST, Entity, PayloadObject, codec
from bus import envelope as envelopes
from bus.grants import Grant

SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Family:
    name: str
    frames: list[bytes]
    codes: frozenset[str]  # the rejection codes the service may count for these frames


def nested_frame(depth: int) -> bytes:
    """The frame of issue 11: ``92 c6 <u32 length> (91 x depth) c0 c4 40 <64 zero bytes>``, an
    envelope whose body is an array nested ``depth`` deep."""
    body = b"\x91" * depth + b"\xc0"
    return b"\x92\xc6" + struct.pack(">I", len(body)) + body + b"\xc4\x40" + bytes(64)


def _valid_body(sender: Entity, uri: str, proof: tuple[bytes, ...]) -> list[object]:
    request = PayloadObject.msgpack({"id": "fuzz", "body": {"op": "predict"}}, PO_REQUEST)
    return [
        1,
        uri,
        [[request.number, request.data]],
        sender.public_key,
        time.time_ns(),
        os.urandom(16),
        False,
        list(proof),
    ]


_WRONG_VALUES: list[object] = [None, True, -1, 2**63, 1.5, "", "x" * 40, b"", b"\x00" * 7, [], {}]


def _type_confused(rng: random.Random, sender: Entity, uri: str) -> bytes:
    """A well-formed frame whose body has one field of the wrong type (or a bad field count)."""
    fields = _valid_body(sender, uri, ())
    index = rng.randrange(len(fields) + 1)
    if index == len(fields):
        fields = fields[: rng.choice([0, 1, 7])] + ([None] * rng.choice([0, 1, 3]))
        fields = fields if len(fields) != 8 else fields[:7]
    else:
        original = fields[index]
        choices = [v for v in _WRONG_VALUES if type(v) is not type(original)]
        fields[index] = rng.choice(choices)
    return codec.pack([codec.pack(fields), rng.randbytes(SIGNATURE_BYTES)])


def _garbage_po(rng: random.Random) -> PayloadObject:
    kind = rng.randrange(4)
    if kind == 0:
        return PayloadObject(PO_REQUEST, rng.randbytes(rng.randrange(1, 64)))  # not msgpack
    if kind == 1:
        value = rng.choice([None, 7, "id", [1, 2], {"body": 1}, {"id": 5, "body": 1}])
        return PayloadObject.msgpack(value, PO_REQUEST)
    if kind == 2:
        return PayloadObject.msgpack({"id": "", "body": None}, PO_REQUEST)  # id too short
    return PayloadObject.msgpack({"id": "x", "body": 1}, "2.0.0.0")  # no request PO at all


def families(
    seed: int, uri: str, granted: Entity, proof: tuple[Grant, ...], *, scale: int = 1
) -> list[Family]:
    """The hostile frames for the slot ``uri``; ``granted`` may publish there with ``proof``."""
    rng = random.Random(seed)
    stranger = Entity.generate(comment="stranger")
    encoded = tuple(grant.encode() for grant in proof)

    def sealed(sender: Entity, pos: tuple[PayloadObject, ...], chain: tuple[bytes, ...]) -> bytes:
        return envelopes.seal(sender, uri, pos, proof=chain)

    valid = [
        sealed(granted, (PayloadObject.msgpack({"id": f"v{i}", "body": {}}, PO_REQUEST),), encoded)
        for i in range(50)
    ]
    truncated = []
    for _ in range(400 * scale):
        frame = rng.choice(valid)
        truncated.append(frame[: rng.randrange(1, len(frame))])
    depths = [rng.choice([2, 50, 600, 1000, 3000, 20_000]) for _ in range(60 * scale)]
    return [
        Family(
            "random bytes",
            [rng.randbytes(rng.randrange(1, 400)) for _ in range(500 * scale)],
            frozenset({"decode"}),
        ),
        Family("truncated", truncated, frozenset({"decode"})),
        # "internal" until the codec bounds nesting itself (another branch): still counted.
        Family(
            "deeply nested", [nested_frame(d) for d in depths], frozenset({"decode", "internal"})
        ),
        Family(
            "type-confused",
            [_type_confused(rng, granted, uri) for _ in range(500 * scale)],
            frozenset({"decode", "invalid_uri"}),
        ),
        Family(
            "signed garbage, granted sender",
            [sealed(granted, (_garbage_po(rng),), encoded) for _ in range(400 * scale)],
            frozenset({"invalid_request"}),
        ),
        Family(
            "signed garbage, no grant",
            [sealed(stranger, (_garbage_po(rng),), ()) for _ in range(150 * scale)],
            frozenset({"untrusted_root", "broken_chain", "permission_missing", "out_of_scope"}),
        ),
    ]
