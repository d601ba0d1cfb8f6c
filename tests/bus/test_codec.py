"""The msgpack codec: deterministic pack, strict unpack, every failure a DecodeError."""

from __future__ import annotations

import math

import msgpack
import msgpack.fallback
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import DecodeError, FrameTooLarge, codec

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip(value: object) -> None:
    assert codec.unpack(codec.pack(value)) == value


@given(values)
def test_pack_is_deterministic(value: object) -> None:
    assert codec.pack(value) == codec.pack(value)


def test_bytes_and_str_stay_distinct() -> None:
    assert codec.unpack(codec.pack([b"ab", "ab"])) == [b"ab", "ab"]


def test_tuples_come_back_as_lists() -> None:
    assert codec.unpack(codec.pack((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, -(2**63) - 1, complex(1, 2)])
def test_unencodable_values_raise_decode_error(value: object) -> None:
    with pytest.raises(DecodeError):
        codec.pack(value)


def reference_unpack(data: bytes) -> object:
    """msgpack's pure-Python decoder, as strict as ours about trailing bytes: the reference a
    successful decode must agree with."""
    return msgpack.fallback.unpackb(data, raw=False, strict_map_key=False)


def nests_deeper_than(value: object, depth: int) -> bool:
    if isinstance(value, list | dict):
        items = value if isinstance(value, list) else list(value.values())
        return depth == 0 or any(nests_deeper_than(item, depth - 1) for item in items)
    return False


@given(st.binary(max_size=64) | values.map(codec.pack).map(lambda b: b[: len(b) // 2 + 1]))
def test_random_bytes_raise_decode_error_or_decode_as_the_reference_does(data: bytes) -> None:
    """Either a DecodeError, or exactly what an independent decoder makes of the bytes."""
    try:
        value = codec.unpack(data)
    except DecodeError:
        try:
            reference = reference_unpack(data)
        except Exception:
            return  # both refuse
        # The reference accepted it: only what we refuse on purpose may differ.
        assert isinstance(reference, msgpack.ExtType | msgpack.Timestamp) or nests_deeper_than(
            reference, codec.MAX_DEPTH
        ), f"refused {len(data)} bytes the reference decodes"
        return
    assert codec.pack(value) == codec.pack(reference_unpack(data))  # bytes: NaN != NaN


@given(values, st.data())
def test_truncated_encodings_raise_decode_error(value: object, data: st.DataObject) -> None:
    encoded = codec.pack(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        codec.unpack(encoded[:cut])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\xc1", "never-used byte"),
        (b"\x01\x02", "trailing data"),
        (b"\x92\x01", "array shorter than declared"),
        (b"\xdd\xff\xff\xff\xff", "huge declared array"),
        (b"\xd4\x05\x00", "fixext 1"),
        (b"\xc7\x00\x05", "ext 8, empty"),
        (b"\xd6\xff\x00\x00\x00\x00", "timestamp extension (type -1)"),
        (b"\x91\xd6\xff\x00\x00\x00\x01", "timestamp nested in an array"),
        (b"\xa2\xff\xfe", "str with bad UTF-8"),
        (b"\x81\x90\x01", "unhashable map key"),
        (b"\x91" * 5000 + b"\x01", "nesting too deep"),
    ],
)
def test_malformed_input_raises_decode_error(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(data)


@pytest.mark.parametrize("value", ["text", None, 12, [b"x"]])
def test_non_bytes_input_raises_decode_error(value: object) -> None:
    with pytest.raises(DecodeError, match="expected bytes"):
        codec.unpack(value)  # type: ignore[arg-type]


def test_bytes_like_input_is_accepted() -> None:
    encoded = codec.pack({"a": 1})
    assert codec.unpack(bytearray(encoded)) == {"a": 1}
    assert codec.unpack(memoryview(encoded)) == {"a": 1}


def test_oversize_raises_frame_too_large_with_the_facts() -> None:
    encoded = codec.pack(b"x" * 100)
    assert codec.unpack(encoded, max_bytes=len(encoded)) == b"x" * 100
    with pytest.raises(FrameTooLarge) as caught:
        codec.unpack(encoded, max_bytes=len(encoded) - 1)
    assert caught.value.details == {"size": len(encoded), "limit": len(encoded) - 1}
    assert isinstance(caught.value, DecodeError)


def test_default_limit_is_sixteen_mebibytes() -> None:
    assert codec.DEFAULT_MAX_BYTES == 16 * 1024 * 1024
    with pytest.raises(FrameTooLarge):
        codec.unpack(b"\x00" * (codec.DEFAULT_MAX_BYTES + 1))


def test_floats_keep_their_value() -> None:
    assert codec.unpack(codec.pack(math.pi)) == math.pi
    assert math.isinf(codec.unpack(codec.pack(-math.inf)))


byte_strings = st.binary(max_size=20) | st.sampled_from([b"x" * 255, b"x" * 256, b"x" * 70_000])


@given(st.lists(byte_strings | st.lists(byte_strings, max_size=17), max_size=17))
def test_pack_bins_makes_the_bytes_pack_makes(items: list[bytes | list[bytes]]) -> None:
    assert codec.pack_bins(items) == codec.pack(items)


def test_pack_bins_refuses_what_is_not_bytes() -> None:
    with pytest.raises(DecodeError):
        codec.pack_bins([[b"x", "text"]])
