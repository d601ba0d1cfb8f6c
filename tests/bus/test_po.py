"""Payload objects: dotted PO numbers, their ranges, and decoding by range."""

from __future__ import annotations

import json

import msgpack
import msgpack.fallback
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import (
    PO_BINARY,
    PO_JSON,
    PO_METADATA,
    PO_MSGPACK,
    PO_REPLY,
    PO_REQUEST,
    PO_STATE,
    PO_STATUS,
    PO_TEXT,
    DecodeError,
    PayloadObject,
    codec,
)
from bus.po import check_po_number


def test_well_known_numbers() -> None:
    assert PO_METADATA == "2.0.3.1"  # XBOS metadata tuple {val, ts}
    numbers = [PO_BINARY, PO_MSGPACK, PO_METADATA, PO_REQUEST, PO_REPLY, PO_STATE, PO_STATUS]
    numbers += [PO_TEXT, PO_JSON]
    assert len(set(numbers)) == len(numbers)
    for number in numbers:
        assert check_po_number(number) == number


@pytest.mark.parametrize(
    ("number", "kind"),
    [("1.0.0.0", "binary"), ("2.0.3.1", "msgpack"), ("64.0.1.0", "text"), ("65.255.0.9", "json")],
)
def test_kind_follows_the_first_octet(number: str, kind: str) -> None:
    assert PayloadObject(check_po_number(number), b"").kind == kind


@pytest.mark.parametrize(
    "number",
    [
        "3.0.0.0",  # unknown range
        "0.0.0.0",
        "66.0.0.0",
        "255.0.0.0",
        "2.0.0",  # three octets
        "2.0.0.0.0",
        "2.0.0.256",  # octet out of range
        "2.0.0.1000",
        "02.0.0.0",  # not canonical: would be a second spelling of 2.0.0.0
        "2.00.0.0",
        "2.0.0.x",
        " 2.0.0.0",
        "2.0.0.0\n",
        "",
    ],
)
def test_bad_numbers_raise_decode_error(number: str) -> None:
    with pytest.raises(DecodeError):
        check_po_number(number)


@pytest.mark.parametrize("number", [2, 2.0, b"2.0.0.0", None, ["2", "0", "0", "0"]])
def test_non_string_numbers_raise_decode_error(number: object) -> None:
    with pytest.raises(DecodeError, match="dotted string"):
        check_po_number(number)


@given(st.text(max_size=16))
def test_every_accepted_number_has_a_kind(number: str) -> None:
    try:
        check_po_number(number)
    except DecodeError:
        return
    assert PayloadObject(number, b"").kind in {"binary", "msgpack", "text", "json"}


@given(
    st.recursive(
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=10)
        | st.binary(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=10,
    )
)
def test_msgpack_round_trip(value: object) -> None:
    po = PayloadObject.msgpack(value)
    assert po.number == PO_MSGPACK
    assert po.value() == value


def test_constructors_and_values() -> None:
    assert PayloadObject.text("h\u00e9").data == "h\u00e9".encode()
    assert PayloadObject.text("h\u00e9").value() == "h\u00e9"
    assert PayloadObject.json({"a": [1, 2]}).value() == {"a": [1, 2]}
    assert PayloadObject.json({"a": 1}).data == b'{"a":1}'
    assert PayloadObject.binary(bytearray(b"\x00\xff")).value() == b"\x00\xff"
    assert PayloadObject.msgpack({"val": 1, "ts": 2}, PO_METADATA).number == PO_METADATA
    known = PayloadObject.binary(b"ab", sha256=bytes(32))
    assert known.sha256 == bytes(32) and known == PayloadObject.binary(b"ab")
    assert hash(known) == hash(PayloadObject.binary(b"ab"))


@pytest.mark.parametrize(
    ("po", "why"),
    [
        (PayloadObject(PO_TEXT, b"\xff\xfe"), "text that is not UTF-8"),
        (PayloadObject(PO_JSON, b"{not json"), "bad JSON"),
        (PayloadObject(PO_JSON, b"\xff"), "JSON that is not UTF-8"),
        (PayloadObject(PO_MSGPACK, b"\xc1"), "bad msgpack"),
        (PayloadObject(PO_MSGPACK, b"\x01\x02"), "msgpack with trailing bytes"),
    ],
)
def test_undecodable_payloads_raise_decode_error(po: PayloadObject, why: str) -> None:
    with pytest.raises(DecodeError):
        po.value()


def expected_value(number: str, data: bytes) -> object:
    """What the standard library makes of the bytes (raises where it refuses them)."""
    if number == PO_BINARY:
        return data
    if number == PO_MSGPACK:
        return msgpack.fallback.unpackb(data, raw=False, strict_map_key=False)
    text = data.decode()
    return text if number == PO_TEXT else json.loads(text)


@given(
    st.sampled_from([PO_BINARY, PO_MSGPACK, PO_TEXT, PO_JSON]),
    st.binary(max_size=32) | st.sampled_from([b"[1, 2]", b'{"a": [true]}', b"\x92\x01\xa1x"]),
)
def test_value_of_random_bytes_is_a_decode_error_or_the_standard_value(
    number: str, data: bytes
) -> None:
    """Random bytes give a DecodeError exactly when the standard decoder refuses them, and
    otherwise the standard decoder's value — never something else, never silently."""
    try:
        expected = expected_value(number, data)
    except Exception:
        with pytest.raises(DecodeError):
            PayloadObject(number, data).value()
        return
    if isinstance(expected, msgpack.ExtType | msgpack.Timestamp):
        with pytest.raises(DecodeError):  # extension types are refused on purpose
            PayloadObject(number, data).value()
        return
    value = PayloadObject(number, data).value()
    assert type(value) is type(expected)
    assert codec.pack(value) == codec.pack(expected)  # bytes, so that NaN compares equal
