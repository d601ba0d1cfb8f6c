"""The envelope codec: round trips, the documented wire form, and hostile frames.

Decoding untrusted bytes raises only DecodeError (incl. FrameTooLarge), InvalidUri (a signed URI
that breaks the grammar; PROTOCOL.md 8 step 2 gives it its own code) or BadSignature.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import (
    PO_BINARY,
    PO_JSON,
    PO_METADATA,
    PO_MSGPACK,
    PO_TEXT,
    BadSignature,
    DecodeError,
    Entity,
    FrameTooLarge,
    InvalidUri,
    LimitExceeded,
    PayloadObject,
    codec,
)
from bus import envelope as envelopes
from tests.bus.helpers import ENVELOPE_CONTEXT, Namespace, body_fields, hand_frame, raw_body

HOSTILE_INPUT_ERRORS = (DecodeError, InvalidUri, BadSignature)

SENDER = Entity(bytes(range(32)))
SEGMENT = st.from_regex(r"!?[A-Za-z0-9\-_.,()$]{1,8}", fullmatch=True)
uris_ = st.builds(
    lambda ns, rest: "/".join([ns, *rest]),
    st.from_regex(r"[A-Za-z0-9\-_.,()$]{1,8}", fullmatch=True),
    st.lists(SEGMENT, max_size=5),
).filter(lambda u: u.count("/!") <= 1)
pos_lists = st.lists(
    st.builds(
        PayloadObject,
        st.sampled_from([PO_BINARY, PO_MSGPACK, PO_METADATA, PO_TEXT, PO_JSON, "65.1.2.3"]),
        st.binary(max_size=40),
    ),
    max_size=4,
)


def sample_frame(**options: object) -> bytes:
    namespace = Namespace()
    member = namespace.member("a/*", "P")
    pos = [PayloadObject.text("hello"), PayloadObject.msgpack({"x": [1, 2]})]
    return envelopes.seal(
        member.entity, namespace.uri("a", "b"), pos, proof=member.proof, **options
    )


@given(uris_, pos_lists, st.booleans(), st.integers(0, 2**63), st.binary(min_size=16, max_size=16))
def test_round_trip(
    uri: str, pos: list[PayloadObject], persist: bool, ts: int, nonce: bytes
) -> None:
    proof = (b"grant-one", b"grant-two")
    frame = envelopes.seal(SENDER, uri, pos, persist=persist, proof=proof, ts_ns=ts, nonce=nonce)
    envelope = envelopes.decode(frame)
    assert envelope.uri == uri
    assert envelope.pos == tuple(pos)
    assert envelope.origin == SENDER.public_key
    assert (envelope.ts_ns, envelope.nonce, envelope.persist) == (ts, nonce, persist)
    assert envelope.proof == proof
    assert envelope.is_tombstone == (persist and not pos)


def test_seal_follows_the_documented_wire_form() -> None:
    """PROTOCOL.md 6: frame = [body, sig]; body = 8 fields; sig over context || body."""
    pos = [PayloadObject.text("hi")]
    nonce, ts = b"\x01" * 16, 1_700_000_000_000_000_000
    frame = envelopes.seal(SENDER, "ns/a", pos, persist=True, proof=(b"g",), ts_ns=ts, nonce=nonce)
    body = codec.pack(
        [1, "ns/a", [["64.0.1.0", b"hi"]], SENDER.public_key, ts, nonce, True, [b"g"]]
    )
    assert frame == codec.pack([body, SENDER.sign(ENVELOPE_CONTEXT + body)])
    assert frame == hand_frame(SENDER, body)


def test_fresh_nonce_and_current_time_by_default() -> None:
    before = time.time_ns()
    first = envelopes.decode(envelopes.seal(SENDER, "ns/a", []))
    second = envelopes.decode(envelopes.seal(SENDER, "ns/a", []))
    assert first.nonce != second.nonce
    assert before <= first.ts_ns <= time.time_ns()


def test_large_payloads_round_trip_detached_and_stay_bound_by_the_signature() -> None:
    big = PayloadObject.binary(os.urandom(envelopes.DETACH_OVER + 1))
    small = PayloadObject.text("small")
    frame = envelopes.seal(SENDER, "ns/a", [small, big])
    assert envelopes.decode(frame).pos == (small, big)
    tampered = bytearray(frame)
    tampered[-100] ^= 0x01  # inside the large payload's bytes
    with pytest.raises(BadSignature):
        envelopes.decode(bytes(tampered))


def test_a_detached_payload_carries_its_verified_digest_and_sealing_reuses_a_known_one() -> None:
    data = os.urandom(envelopes.DETACH_OVER + 1)
    digest = hashlib.sha256(data).digest()
    known = PayloadObject.binary(data, sha256=digest)
    frame = envelopes.seal(SENDER, "ns/a", [PayloadObject.text("small"), known])
    assert frame == envelopes.seal(
        SENDER, "ns/a", [PayloadObject.text("small"), PayloadObject.binary(data)],
        ts_ns=envelopes.parse(frame).ts_ns, nonce=envelopes.parse(frame).nonce,
    )  # fmt: skip
    small, big = envelopes.decode(frame).pos
    assert (small.sha256, big.sha256) == (None, digest)  # inline POs carry none
    assert big == PayloadObject.binary(data)  # the digest is no part of equality

    wrong = PayloadObject.binary(data, sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(BadSignature):
        envelopes.decode(envelopes.seal(SENDER, "ns/a", [wrong]))
    with pytest.raises(DecodeError, match="32 bytes"):
        envelopes.seal(SENDER, "ns/a", [PayloadObject.binary(data, sha256=b"short")])


def test_parse_does_not_check_the_signature_but_decode_does() -> None:
    frame = bytearray(sample_frame())
    frame[-1] ^= 0x01  # last byte of the signature
    envelope = envelopes.parse(bytes(frame))
    with pytest.raises(BadSignature):
        envelope.check_signature()
    with pytest.raises(BadSignature):
        envelopes.decode(bytes(frame))


def test_another_signer_cannot_sign_for_an_origin() -> None:
    mallory = Entity.generate()
    body = codec.pack(body_fields(SENDER, "ns/a", [PayloadObject.text("x")]))
    with pytest.raises(BadSignature):
        envelopes.decode(hand_frame(mallory, body))


# -- the signature covers every field -------------------------------------------------------------

REPLACEMENTS = {
    0: None,  # version: a different version is a decode error, tested below
    1: "ns/b",
    2: [["64.0.1.0", b"other"]],
    3: None,  # origin: another origin means another key checks the signature
    4: 1,
    5: b"\x02" * 16,
    6: True,
    7: [b"another-grant"],
}


@pytest.mark.parametrize("index", [i for i, v in REPLACEMENTS.items() if v is not None])
def test_changing_any_body_field_breaks_the_signature(index: int) -> None:
    fields = body_fields(SENDER, "ns/a", [PayloadObject.text("x")], proof=[b"g"])
    signature = SENDER.sign(ENVELOPE_CONTEXT + codec.pack(fields))
    fields[index] = REPLACEMENTS[index]
    tampered = codec.pack([codec.pack(fields), signature])
    envelopes.parse(tampered)  # still well-formed
    with pytest.raises(BadSignature):
        envelopes.decode(tampered)


def test_changing_the_origin_breaks_the_signature() -> None:
    fields = body_fields(SENDER, "ns/a", [PayloadObject.text("x")])
    signature = SENDER.sign(ENVELOPE_CONTEXT + codec.pack(fields))
    fields[3] = Entity.generate().public_key
    with pytest.raises(BadSignature):
        envelopes.decode(codec.pack([codec.pack(fields), signature]))


def test_every_single_byte_change_is_detected() -> None:
    frame = sample_frame()
    for index in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(frame)
            tampered[index] ^= mask
            with pytest.raises(HOSTILE_INPUT_ERRORS):
                envelopes.decode(bytes(tampered))


@given(uris_, pos_lists, st.booleans(), st.data())
def test_random_bit_flips_never_decode(
    uri: str, pos: list[PayloadObject], persist: bool, data: st.DataObject
) -> None:
    frame = envelopes.seal(SENDER, uri, pos, persist=persist)
    index = data.draw(st.integers(0, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(frame)
    tampered[index] ^= 1 << bit
    with pytest.raises(HOSTILE_INPUT_ERRORS):
        envelopes.decode(bytes(tampered))


@given(uris_, pos_lists, st.data())
def test_truncated_frames_raise_decode_error(
    uri: str, pos: list[PayloadObject], data: st.DataObject
) -> None:
    frame = envelopes.seal(SENDER, uri, pos)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(DecodeError):
        envelopes.decode(frame[:cut])


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_only_documented_errors(data: bytes) -> None:
    try:
        envelopes.decode(data)
    except HOSTILE_INPUT_ERRORS:
        return
    raise AssertionError("random bytes decoded as a signed envelope")


@given(
    st.lists(
        st.binary(max_size=40) | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10), max_size=9
    )
)
def test_random_bodies_raise_only_documented_errors(fields: list[object]) -> None:
    frame = codec.pack([codec.pack(fields), b"\x00" * 64])
    with pytest.raises(HOSTILE_INPUT_ERRORS):
        envelopes.decode(frame)


# -- specific malformations ---------------------------------------------------------------------


def test_oversize_frame_raises_frame_too_large() -> None:
    frame = envelopes.seal(SENDER, "ns/a", [PayloadObject.binary(b"x" * 1000)])
    assert envelopes.decode(frame, max_bytes=len(frame)).uri == "ns/a"
    with pytest.raises(FrameTooLarge):
        envelopes.decode(frame, max_bytes=len(frame) - 1)


@pytest.mark.parametrize("version", [0, 2, 255, True, "1", 1.0, None])
def test_unknown_envelope_version_raises_decode_error(version: object) -> None:
    body = codec.pack(body_fields(SENDER, "ns/a", version=version))
    with pytest.raises(DecodeError, match="version"):
        envelopes.decode(hand_frame(SENDER, body))


@pytest.mark.parametrize("number", ["3.0.0.0", "0.1.2.3", "128.0.0.0", "2.0.0", "02.0.0.0", 2])
def test_unknown_po_number_raises_decode_error(number: object) -> None:
    body = codec.pack(body_fields(SENDER, "ns/a", [[number, b"data"]]))
    with pytest.raises(DecodeError):
        envelopes.decode(hand_frame(SENDER, body))


def test_seal_refuses_unknown_po_ranges_and_patterns() -> None:
    with pytest.raises(DecodeError):
        envelopes.seal(SENDER, "ns/a", [PayloadObject("3.0.0.0", b"")])
    with pytest.raises(InvalidUri):
        envelopes.seal(SENDER, "ns/+", [])
    with pytest.raises(InvalidUri):
        envelopes.seal(SENDER, "ns//a", [])


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (1, b"ns/a"),  # URI as bin
        (1, 7),
        (2, {"64.0.1.0": b"x"}),
        (2, [["64.0.1.0", "text, not bin"]]),
        (2, [["64.0.1.0"]]),
        (2, [["64.0.1.0", b"x"]] * (envelopes.MAX_POS + 1)),
        (3, b"\x00" * 31),
        (3, "A" * 43),
        (4, -1),
        (4, 1.5),
        (4, True),
        (5, b"\x00" * 15),
        (5, "0" * 16),
        (6, 1),
        (6, None),
        (7, [b"g"] * 9),
        (7, ["grant as str"]),
        (7, b"g"),
    ],
)
def test_malformed_fields_raise_decode_error(index: int, value: object) -> None:
    fields = body_fields(SENDER, "ns/a")
    fields[index] = value
    with pytest.raises(DecodeError):
        envelopes.decode(hand_frame(SENDER, codec.pack(fields)))


@pytest.mark.parametrize(
    "frame",
    [
        codec.pack([b"body"]),
        codec.pack([b"body", b"\x00" * 64, [], b"extra"]),
        codec.pack([b"body", b"\x00" * 63]),
        codec.pack(["body", b"\x00" * 64]),
        codec.pack({"body": b"", "signature": b""}),
        codec.pack([codec.pack([1, "ns/a"]), b"\x00" * 64]),
        codec.pack([codec.pack("not a list"), b"\x00" * 64]),
        codec.pack([codec.pack([]), b"\x00" * 64]),
    ],
)
def test_malformed_frames_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        envelopes.decode(frame)


@pytest.mark.parametrize("uri", ["ns/+", "ns/*", "ns/a b", "ns//a", "ns/!a/!b", ""])
def test_signed_bad_uris_raise_invalid_uri(uri: str) -> None:
    body = codec.pack(body_fields(SENDER, uri, [PayloadObject.text("x")]))
    with pytest.raises(InvalidUri):
        envelopes.decode(hand_frame(SENDER, body))


def test_bad_utf8_in_the_uri_raises_decode_error() -> None:
    fields = body_fields(SENDER, "placeholder")
    bad_uri = b"ns/\xff\xfe"
    packed = [codec.pack(field) for field in fields]
    packed[1] = bytes([0xA0 | len(bad_uri)]) + bad_uri  # a msgpack str holding invalid UTF-8
    with pytest.raises(DecodeError):
        envelopes.decode(hand_frame(SENDER, raw_body(*packed)))


def test_detached_payload_bookkeeping_errors() -> None:
    digest = os.urandom(32)
    fields = body_fields(SENDER, "ns/a", [["1.0.0.0", digest, 4]])
    body = codec.pack(fields)
    signature = SENDER.sign(ENVELOPE_CONTEXT + body)
    with pytest.raises(DecodeError, match="no bytes"):
        envelopes.decode(codec.pack([body, signature, []]))
    with pytest.raises(BadSignature):
        envelopes.decode(codec.pack([body, signature, [b"abcd"]]))
    plain = codec.pack(body_fields(SENDER, "ns/a", [PayloadObject.text("x")]))
    with pytest.raises(DecodeError, match="more detached"):
        envelopes.decode(codec.pack([plain, SENDER.sign(ENVELOPE_CONTEXT + plain), [b"x"]]))


# -- hostile nesting and sizes (issue 11) -------------------------------------------------------


def deep_array(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # [[[…[nil]…]]]


def test_the_deep_version_frame_of_issue_11_is_a_decode_error() -> None:
    """``92 c6 <u32 length> (91 x 1000) c0 c4 40 <64 zero bytes>``: a body nested 1000 deep.
    Its version field used to be repr'd into the error message: RecursionError, not a BusError,
    ended every subscriber."""
    body = deep_array(1000)
    frame = b"\x92\xc6" + len(body).to_bytes(4, "big") + body + b"\xc4\x40" + bytes(64)
    with pytest.raises(DecodeError, match="nest at most") as caught:
        envelopes.parse(frame)
    assert len(caught.value.message) < 200
    with pytest.raises(DecodeError):
        envelopes.decode(frame)


@pytest.mark.parametrize("index", range(8))
def test_deep_nesting_in_any_body_field_is_a_short_decode_error(index: int) -> None:
    packed = [codec.pack(field) for field in body_fields(SENDER, "ns/a")]
    packed[index] = deep_array(900)
    frame = hand_frame(SENDER, raw_body(*packed))
    with pytest.raises(DecodeError) as caught:
        envelopes.parse(frame)
    assert "[[" not in caught.value.message and len(caught.value.message) < 200


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH - 2, codec.MAX_DEPTH + 5])
def test_a_bad_version_is_described_not_repr_d(depth: int) -> None:
    packed = [codec.pack(field) for field in body_fields(SENDER, "ns/a")]
    packed[0] = deep_array(depth)
    with pytest.raises(DecodeError) as caught:
        envelopes.parse(hand_frame(SENDER, raw_body(*packed)))
    assert "[" not in caught.value.message and "None" not in caught.value.message


def test_a_lying_length_header_is_a_decode_error() -> None:
    for lie in (b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"):
        with pytest.raises(DecodeError):
            envelopes.parse(b"\x92" + lie + b"\xc4\x40" + bytes(64))


def test_seal_refuses_a_frame_over_the_limit_before_sending() -> None:
    pos = [PayloadObject.binary(b"x" * 1000)]
    frame = envelopes.seal(SENDER, "ns/a", pos, max_bytes=10_000)
    with pytest.raises(FrameTooLarge) as caught:
        envelopes.seal(SENDER, "ns/a", pos, max_bytes=len(frame) - 1)
    assert isinstance(caught.value, LimitExceeded) and isinstance(caught.value, DecodeError)
    assert caught.value.code == "frame_too_large"
    assert caught.value.details == {"size": len(frame), "limit": len(frame) - 1}
    assert envelopes.seal(SENDER, "ns/a", pos, max_bytes=len(frame), ts_ns=1, nonce=bytes(16))


def test_seal_refuses_payloads_over_sixteen_mebibytes_with_the_default_limit() -> None:
    big = PayloadObject.binary(bytes(envelopes.DEFAULT_MAX_FRAME))  # detached, + the body
    with pytest.raises(FrameTooLarge, match="over the 16777216-byte limit"):
        envelopes.seal(SENDER, "ns/a", [big])
    just_fits = PayloadObject.binary(bytes(envelopes.DEFAULT_MAX_FRAME - 1024))
    frame = envelopes.seal(SENDER, "ns/a", [just_fits])
    assert envelopes.decode(frame).pos[0].data == just_fits.data


def test_check_frame_size_is_the_same_rule_for_transports() -> None:
    envelopes.check_frame_size(envelopes.DEFAULT_MAX_FRAME)
    with pytest.raises(FrameTooLarge) as caught:
        envelopes.check_frame_size(envelopes.DEFAULT_MAX_FRAME + 1)
    assert caught.value.details["limit"] == envelopes.DEFAULT_MAX_FRAME


def test_an_oversize_frame_is_refused_before_any_decoding() -> None:
    garbage = b"\xc1" * (envelopes.DEFAULT_MAX_FRAME + 1)  # not even msgpack
    with pytest.raises(FrameTooLarge):
        envelopes.parse(garbage)
