"""RepeatPattern (bus/envelope.py): a frame that says what a parsed frame said, with only a new
timestamp, nonce and signature, is told without decoding it — and nothing else is."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import PO_STATE, Entity, PayloadObject
from bus import envelope as envelopes
from bus.envelope import RepeatPattern
from tests.bus.helpers import Namespace

SENDER = Entity(bytes(range(32)))
STATE = PayloadObject.msgpack({"online": True, "seq": 7, "ts": 7}, PO_STATE)
URI = "ns/svc/!meta/state"
PROOF = (b"\x01" * 150, b"\x02" * 90)


def state(
    *,
    entity: Entity = SENDER,
    uri: str = URI,
    pos: tuple[PayloadObject, ...] = (STATE,),
    persist: bool = True,
    proof: tuple[bytes, ...] = PROOF,
    ts_ns: int | None = None,
) -> bytes:
    return envelopes.seal(entity, uri, pos, persist=persist, proof=proof, ts_ns=ts_ns)


def pattern_of(frame: bytes) -> RepeatPattern:
    pattern = RepeatPattern.of(frame)
    assert pattern is not None
    return pattern


def test_a_resealed_frame_with_a_new_time_and_nonce_is_a_repeat() -> None:
    pattern = pattern_of(state())
    later = state(ts_ns=time.time_ns() + 10**10)
    assert pattern.matches(later)
    assert pattern.matches(state(proof=PROOF))


@pytest.mark.parametrize(
    "changed",
    [
        {"uri": "ns/other/!meta/state"},
        {"pos": (PayloadObject.msgpack({"online": False, "seq": 7, "ts": 7}, PO_STATE),)},
        {"pos": (STATE, STATE)},
        {"pos": ()},
        {"entity": Entity(bytes(32))},
        {"persist": False},
        {"proof": PROOF[:1]},
        {"proof": (PROOF[0], b"\x03" * 90)},
    ],
)
def test_any_other_change_is_not_a_repeat(changed: dict[str, object]) -> None:
    pattern = pattern_of(state())
    assert not pattern.matches(state(**changed))  # type: ignore[arg-type]


def test_frames_of_another_layout_have_no_pattern() -> None:
    assert RepeatPattern.of(b"not a frame") is None
    detached = PayloadObject.binary(b"x" * (envelopes.DETACH_OVER + 1))
    assert RepeatPattern.of(state(pos=(detached,))) is None
    assert RepeatPattern.of(state(ts_ns=12345)) is None  # a timestamp in fewer than 8 bytes


def test_a_real_member_frame_has_a_pattern() -> None:
    namespace = Namespace()
    member = namespace.member("svc/*", "P")
    uri = namespace.uri("svc", "a", "!meta", "state")
    first = envelopes.seal(member.entity, uri, [STATE], persist=True, proof=member.proof)
    again = envelopes.seal(member.entity, uri, [STATE], persist=True, proof=member.proof)
    assert pattern_of(first).matches(again)


STAMP_AT = len(pattern_of(state()).head)


@given(st.integers(0, len(state()) - 1), st.integers(1, 255))
def test_a_changed_byte_matches_only_in_the_stamp_nonce_or_signature(at: int, flip: int) -> None:
    """Every byte but the 8 of the time, the 16 of the nonce and the 64 of the signature is
    compared; and a frame that matches decodes to the same fields but those."""
    frame = state()
    mutated = bytearray(frame)
    mutated[at] ^= flip
    is_stamp = STAMP_AT <= at < STAMP_AT + 8 or STAMP_AT + 10 <= at < STAMP_AT + 26
    is_signature = at >= len(frame) - 64
    matched = pattern_of(frame).matches(bytes(mutated))
    assert matched == (is_stamp or is_signature)
    if matched:
        before, after = envelopes.parse(frame), envelopes.parse(bytes(mutated))
        same = ("uri", "pos", "origin", "persist", "proof")
        assert all(getattr(before, name) == getattr(after, name) for name in same)


@given(st.binary(max_size=600))
def test_random_bytes_never_match_nor_raise(data: bytes) -> None:
    assert RepeatPattern.of(data) is None
    assert not pattern_of(state()).matches(data)
