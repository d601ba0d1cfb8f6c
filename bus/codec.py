"""msgpack, behind two pure functions: the only module that imports msgpack.

``pack`` is deterministic for the same input (maps keep insertion order, bytes stay ``bin``,
strings stay ``str``); ``unpack`` accepts only what ``pack`` makes — no extension types, strict
map keys, bounded sizes — and every failure is a :class:`~bus.errors.DecodeError`.
``pack_bins`` makes the same bytes as ``pack`` for an array of byte strings (and arrays of them),
copying each byte string once: msgpack's packer copies a large one twice (into its buffer,
then into the result), and frames carry chunks of megabytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from bus.errors import DecodeError, FrameTooLarge

__all__ = ["DEFAULT_MAX_BYTES", "pack", "pack_bins", "unpack"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def pack(value: Any) -> bytes:
    """Encode a value made of None, bool, int, float, str, bytes, lists, tuples and dicts."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"value cannot be encoded as msgpack: {exc}") from exc
    return data


def pack_bins(items: Sequence[bytes | Sequence[bytes]]) -> bytes:
    """``pack(items)`` for an array whose elements are bytes or arrays of bytes, in one copy."""
    parts: list[bytes] = [_array_header(len(items))]
    for item in items:
        if isinstance(item, bytes):
            parts += (_bin_header(len(item)), item)
        else:
            parts.append(_array_header(len(item)))
            for blob in item:
                if not isinstance(blob, bytes):
                    raise DecodeError(f"pack_bins takes bytes, not {type(blob).__name__}")
                parts += (_bin_header(len(blob)), blob)
    return b"".join(parts)


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    return b"\xdc" + struct.pack(">H", length) if length < 1 << 16 else _header(0xDD, length)


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return bytes((0xC4, length))
    return b"\xc5" + struct.pack(">H", length) if length < 1 << 16 else _header(0xC6, length)


def _header(marker: int, length: int) -> bytes:
    if length >= 1 << 32:
        raise DecodeError(f"{length} items or bytes cannot be encoded as msgpack")
    return bytes((marker,)) + struct.pack(">I", length)


def unpack(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode exactly one msgpack value from ``data``; raise DecodeError on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise FrameTooLarge(
            f"{len(data)} bytes is over the {max_bytes}-byte limit",
            size=len(data),
            limit=max_bytes,
        )
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            max_ext_len=0,  # the timestamp extension (-1) bypasses ext_hook; refuse it too
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    except Exception as exc:  # msgpack raises a few odd types on hostile input
        raise DecodeError(f"malformed msgpack ({type(exc).__name__}): {exc}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")
