"""Fuzzing the receive path: thousands of malformed, truncated, deeply nested, oversized,
type-confused and signed-but-garbage frames thrown at ``envelope.parse`` and at the Verifier's
full receive check (then at every accepted payload's ``value()``).

Only the documented, typed errors may come out — DecodeError (FrameTooLarge included),
InvalidUri, the VerificationError tree — never anything else, and every rejection is counted.
The generator is seeded, so a failure names a frame that can be rebuilt; the run is bounded
(a few thousand frames, a few seconds)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator

import msgpack
import pytest

from bus import (
    BusError,
    DecodeError,
    Entity,
    FrameTooLarge,
    InvalidUri,
    PayloadObject,
    VerificationError,
    Verifier,
    codec,
)
from bus import envelope as envelopes
from bus.envelope import Envelope
from tests.bus.helpers import ENVELOPE_CONTEXT, Member, Namespace, body_fields, make_grant

NOW = time.time_ns()
LIMIT = 128 * 1024  # the receivers' frame limit here: oversized frames stay cheap to make
PARSE_ERRORS = (DecodeError, InvalidUri, VerificationError)  # BadSignature: a detached blob
CHECK_ERRORS = (DecodeError, InvalidUri, VerificationError)
SEEDS = [20261207, 11, 12]
FRAMES_PER_KIND = 300


class Arena:
    """The parties of one run: a namespace, a granted member, strangers, and valid frames."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.namespace = Namespace()
        self.member = self.namespace.member("a/*", "P", ttl=2)
        self.delegate = self.member.delegate(self.namespace.uri("a", "*"), "P", ttl=1)
        self.stranger = Member(Entity.generate())

    def uri(self) -> str:
        return self.namespace.uri("a", self.rng.choice(["b", "c", "!meta", "x.y"]))

    def valid_frame(self, **options: object) -> bytes:
        sender = self.rng.choice([self.member, self.delegate, self.namespace.as_member])
        size = self.rng.choice([0, 10, 200, envelopes.DETACH_OVER + 1])
        pos = [PayloadObject.binary(self.rng.randbytes(size)), PayloadObject.msgpack([1, "x"])]
        options.setdefault("ts_ns", NOW)
        return envelopes.seal(sender.entity, self.uri(), pos, proof=sender.proof, **options)

    def signed(self, fields: list[object], *, signer: Entity | None = None) -> bytes:
        """A frame whose body is ``fields`` packed as they are, signed by ``signer``."""
        signer = signer or self.member.entity
        body = msgpack.packb(fields, use_bin_type=True)
        return codec.pack([body, signer.sign(ENVELOPE_CONTEXT + body)])


# -- generators: each makes one hostile frame from the arena's random source ------------------


def random_value(rng: random.Random, depth: int = 0) -> object:
    """Any msgpack value: scalars of every width, NaN, extension types, nested containers."""
    choice = rng.randrange(12 if depth < 4 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, 1, -1, 127, 128, 2**32, 2**64 - 1, -(2**63), rng.getrandbits(40)])
    if choice == 3:
        return rng.choice([0.5, float("nan"), float("inf"), -0.0, rng.random()])
    if choice == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if choice == 5:
        return rng.randbytes(rng.choice([0, 1, 16, 31, 32, 33, 64, 65]))
    if choice == 6:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.choice([1, 2, 4, 8, 16, 3])))
    if choice == 7:
        return msgpack.Timestamp(rng.randrange(2**32))
    if choice in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = [rng.choice(["op", "id", "", 1, None, b"k", 2.5]) for _ in range(rng.randrange(4))]
    return {key: random_value(rng, depth + 1) for key in keys}


def nested(rng: random.Random) -> bytes:
    """An array or map nested just past the bound, or far past it (msgpack allows 1024)."""
    depth = rng.choice([codec.MAX_DEPTH + 1, codec.MAX_DEPTH + 2, 200, 999, 1000, 1023, 1100])
    if rng.random() < 0.5:
        return b"\x91" * depth + b"\xc0"
    return b"\x81\xa1k" * depth + b"\xc0"


def random_bytes(arena: Arena) -> bytes:
    return arena.rng.randbytes(arena.rng.choice([0, 1, 2, 3, 8, 70, 200, 400]))


def truncated(arena: Arena) -> bytes:
    frame = arena.valid_frame()
    return frame[: arena.rng.randrange(len(frame))]


def bit_flipped(arena: Arena) -> bytes:
    frame = bytearray(arena.valid_frame())
    for _ in range(arena.rng.randint(1, 3)):
        frame[arena.rng.randrange(len(frame))] ^= arena.rng.randint(1, 255)
    return bytes(frame)


def deeply_nested(arena: Arena) -> bytes:
    rng = arena.rng
    deep = nested(rng)
    where = rng.randrange(5)
    if where == 0:  # the issue-11 frame: as the body, or as a body field
        fields = [codec.pack(f) for f in body_fields(arena.member.entity, arena.uri())]
        fields[rng.randrange(8)] = deep
        body = bytes([0x98]) + b"".join(fields)
        return codec.pack([body, arena.member.entity.sign(ENVELOPE_CONTEXT + body)])
    if where == 1:  # the whole body
        return b"\x92\xc6" + len(deep).to_bytes(4, "big") + deep + b"\xc4\x40" + bytes(64)
    if where == 2:  # the frame's own elements
        return b"\x93" + codec.pack(b"body") + codec.pack(bytes(64)) + deep
    if where == 3:  # a signed msgpack payload: the envelope is valid, its value is not
        po = PayloadObject("2.0.11.1", deep)
        return envelopes.seal(
            arena.member.entity, arena.uri(), [po], proof=arena.member.proof, ts_ns=NOW
        )
    grant = codec.pack([deep, bytes(64)])  # a grant in the proof
    return envelopes.seal(arena.member.entity, arena.uri(), [], proof=(grant,))


def oversized(arena: Arena) -> bytes:
    rng = arena.rng
    if rng.random() < 0.3:  # a header that claims more than the frame holds
        lie = rng.choice([b"\xdd", b"\xc6", b"\xdb", b"\xdf"]) + b"\xff\xff\xff\xff"
        return b"\x92" + lie + rng.randbytes(rng.randrange(8))
    size = LIMIT + rng.choice([1, 2, 1000])
    if rng.random() < 0.5:
        return rng.randbytes(size)
    big = PayloadObject.binary(rng.randbytes(size))
    return envelopes.seal(arena.member.entity, arena.uri(), [big], max_bytes=2 * LIMIT)


def type_confused(arena: Arena) -> bytes:
    rng = arena.rng
    fields: list[object] = body_fields(
        arena.member.entity, arena.uri(), [PayloadObject.text("x")], proof=arena.member.proof
    )
    for _ in range(rng.randint(1, 3)):
        fields[rng.randrange(8)] = random_value(rng)
    if rng.random() < 0.2:
        fields = fields[: rng.randrange(8)] + [random_value(rng)] * rng.randrange(3)
    if rng.random() < 0.2:
        return msgpack.packb(
            [random_value(rng) for _ in range(rng.randrange(4))], use_bin_type=True
        )
    return arena.signed(fields)


def garbage_proof(arena: Arena) -> bytes:
    """Well-formed, signed envelopes whose proof is garbage, forged or borrowed."""
    rng = arena.rng
    sender = rng.choice([arena.member, arena.stranger, arena.delegate])
    choice = rng.randrange(4)
    proof: tuple[bytes, ...]
    if choice == 0:  # random bytes as grants
        proof = tuple(rng.randbytes(rng.randrange(300)) for _ in range(rng.randint(1, 8)))
    elif choice == 1:  # grants with random fields, signed by whoever
        proof = tuple(garbage_grant(arena) for _ in range(rng.randint(1, 8)))
    elif choice == 2:  # a real chain with a grant swapped in, repeated or appended
        chain = list(arena.delegate.proof)
        chain.insert(rng.randrange(len(chain) + 1), rng.choice([*chain, garbage_grant(arena)]))
        proof = tuple(chain[: rng.randint(1, 8)])
        if proof == arena.delegate.proof[: len(proof)] and sender is not arena.stranger:
            sender = arena.stranger  # a real prefix: borrowed by someone it was not granted to
    else:  # a stranger forging a grant from the namespace owner
        fake = make_grant(arena.stranger.entity, sender.entity, arena.namespace.uri("*"), "P")
        fields = codec.unpack(fake.body)
        fields[1] = arena.namespace.owner.public_key
        body = codec.pack(fields)
        proof = (codec.pack([body, arena.stranger.entity.sign(b"modelbus grant v1\x00" + body)]),)
    return envelopes.seal(
        sender.entity, arena.uri(), [PayloadObject.text("x")], proof=proof, ts_ns=NOW
    )


def garbage_payload(arena: Arena) -> bytes:
    """A granted sender's valid envelope whose payload objects do not decode (or do: binary and
    text take almost anything)."""
    rng = arena.rng
    number = rng.choice(["1.0.0.0", "2.0.0.0", "2.0.11.1", "64.0.1.0", "65.0.0.0"])
    data = rng.choice([rng.randbytes(rng.randrange(40)), nested(rng), b"[" * 5000, b"\xff\xfe"])
    sender = rng.choice([arena.member, arena.delegate])
    return envelopes.seal(
        sender.entity, arena.uri(), [PayloadObject(number, data)], proof=sender.proof, ts_ns=NOW
    )


def garbage_grant(arena: Arena) -> bytes:
    rng = arena.rng
    grant = make_grant(arena.member.entity, arena.stranger.entity, arena.namespace.uri("a"), "P")
    fields = codec.unpack(grant.body)
    fields[rng.randrange(8)] = random_value(rng)
    body = msgpack.packb(fields, use_bin_type=True)
    signer = rng.choice([arena.member.entity, arena.stranger.entity])
    return codec.pack([body, signer.sign(b"modelbus grant v1\x00" + body)])


def valid(arena: Arena) -> bytes:
    return arena.valid_frame()


KINDS: dict[str, Callable[[Arena], bytes]] = {
    "random_bytes": random_bytes,
    "truncated": truncated,
    "bit_flipped": bit_flipped,
    "deeply_nested": deeply_nested,
    "oversized": oversized,
    "type_confused": type_confused,
    "garbage_proof": garbage_proof,
    "garbage_payload": garbage_payload,
    "valid": valid,
}


def hostile_frames(arena: Arena) -> Iterator[tuple[str, bytes]]:
    kinds = [kind for kind in KINDS for _ in range(FRAMES_PER_KIND)]
    arena.rng.shuffle(kinds)
    for kind in kinds:
        yield kind, KINDS[kind](arena)


# -- the receive path --------------------------------------------------------------------------


def check_parse(frame: bytes) -> Envelope | None:
    try:
        envelope = envelopes.parse(frame, max_bytes=LIMIT)
    except PARSE_ERRORS:
        return None
    assert isinstance(envelope.uri, str) and isinstance(envelope.ts_ns, int)
    assert len(envelope.origin) == 32 and len(envelope.nonce) == 16
    assert all(isinstance(grant, bytes) for grant in envelope.proof)
    assert all(isinstance(po.data, bytes) for po in envelope.pos)
    return envelope


def is_documented_body(fields: object) -> bool:
    """PROTOCOL.md section 6.2, written out again: what an accepted frame's body must be."""
    if not (isinstance(fields, list) and len(fields) == 8):
        return False
    version, uri, pos, origin, ts_ns, nonce, persist, proof = fields
    return (
        type(version) is int
        and version == 1
        and isinstance(uri, str)
        and "+" not in uri.split("/")
        and isinstance(pos, list)
        and len(pos) <= 64
        and all(isinstance(po, list) and len(po) in (2, 3) for po in pos)
        and isinstance(origin, bytes)
        and len(origin) == 32
        and type(ts_ns) is int
        and ts_ns >= 0
        and isinstance(nonce, bytes)
        and len(nonce) == 16
        and type(persist) is bool
        and isinstance(proof, list)
        and len(proof) <= 8
        and all(isinstance(grant, bytes) for grant in proof)
    )


def receive(verifier: Verifier, frame: bytes) -> str:
    """The receive path of one frame: its outcome, an error code or ``accepted``."""
    try:
        envelope = verifier.check_frame(frame)
    except CHECK_ERRORS as error:
        return error.code
    assert is_documented_body(codec.unpack(envelope.body))
    for po in envelope.pos:
        try:
            po.value()
        except DecodeError:
            return "accepted, payload refused"
    return "accepted"


@pytest.mark.parametrize("seed", SEEDS)
def test_hostile_frames_raise_only_typed_errors(seed: int) -> None:
    arena = Arena(random.Random(seed))
    verifier = Verifier(clock_ns=lambda: NOW, max_frame_bytes=LIMIT)
    outcomes: Counter[tuple[str, str]] = Counter()
    for kind, frame in hostile_frames(arena):
        try:
            check_parse(frame)
            outcome = receive(verifier, frame)
        except BusError:
            raise
        except Exception as exc:  # pragma: no cover - the failure this test exists for
            raise AssertionError(
                f"a {kind} frame ({len(frame)} bytes, seed {seed}) raised {type(exc).__name__}, "
                "not a documented error"
            ) from exc
        outcomes[kind, outcome] += 1
    by_kind = Counter(kind for kind, outcome in outcomes.elements() if outcome == "accepted")
    assert by_kind["valid"] == FRAMES_PER_KIND, outcomes  # the real thing still gets through
    rejected = sum(n for (_, outcome), n in outcomes.items() if not outcome.startswith("accepted"))
    assert rejected == sum(verifier.rejected.values())  # every rejection counted
    never_valid = ("random_bytes", "truncated", "deeply_nested", "oversized", "garbage_proof")
    for kind in never_valid:
        assert outcomes[kind, "accepted"] == 0, (kind, outcomes)
    for code in ("decode", "frame_too_large", "bad_signature"):
        assert verifier.rejected[code] > 0, verifier.rejected
    assert outcomes["deeply_nested", "accepted, payload refused"] > 0
    assert outcomes["garbage_payload", "accepted, payload refused"] > 0


def test_the_default_limit_holds_on_receipt() -> None:
    """One frame just over the real 16 MiB limit: refused by size, before it is decoded."""
    arena = Arena(random.Random(0))
    big = PayloadObject.binary(bytes(envelopes.DEFAULT_MAX_FRAME))
    frame = envelopes.seal(
        arena.member.entity, arena.uri(), [big], max_bytes=2 * envelopes.DEFAULT_MAX_FRAME
    )
    verifier = Verifier(clock_ns=lambda: NOW)
    with pytest.raises(FrameTooLarge):
        verifier.check_frame(frame)
    assert verifier.rejected == {"frame_too_large": 1}
