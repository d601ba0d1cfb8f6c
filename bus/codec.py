"""msgpack, behind two pure functions: the only module that imports msgpack.

``pack`` is deterministic for the same input (maps keep insertion order, bytes stay ``bin``,
strings stay ``str``); ``unpack`` accepts only what ``pack`` makes — no extension types, strict
map keys, bounded sizes — and every failure is a :class:`~bus.errors.DecodeError`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from bus.errors import DecodeError, FrameTooLarge

__all__ = ["DEFAULT_MAX_BYTES", "pack", "unpack"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def pack(value: Any) -> bytes:
    """Encode a value made of None, bool, int, float, str, bytes, lists, tuples and dicts."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"value cannot be encoded as msgpack: {exc}") from exc
    return data


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
