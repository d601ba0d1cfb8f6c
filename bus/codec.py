"""msgpack, behind two pure functions: the only module that imports msgpack.

``pack`` is deterministic for the same input (maps keep insertion order, bytes stay ``bin``,
strings stay ``str``); ``unpack`` accepts only what ``pack`` makes — no extension types, strict
map keys, bounded sizes — and every failure is a :class:`~bus.errors.DecodeError`.

Unpacking is for hostile bytes: the input is at most ``max_bytes`` long (else
:class:`~bus.errors.FrameTooLarge`, before msgpack sees it), no string, byte string, array or map
may claim more than the input holds, and arrays and maps nest at most :data:`MAX_DEPTH` levels
(msgpack itself allows 1024, deeper than Python's recursion limit: ``repr``, ``==`` or a
validator recursing over such a value raises ``RecursionError``). Whatever msgpack raises becomes
a ``DecodeError``; messages describe a bad value by :func:`describe` (type and size), never by
``repr``.
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

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "check_depth",
    "describe",
    "pack",
    "pack_bins",
    "unpack",
]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
_CONTAINERS = frozenset((list, dict))
_BYTES_LIKE = (bytes, bytearray, memoryview)
# fixmap, fixarray, array 16/32, map 16/32: every byte that can start an array or map header.
_CONTAINER_HEADERS = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if b not in _CONTAINER_HEADERS)
_SCAN_UP_TO = 512  # bytes; above, the walk of an envelope body costs less than the scan


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


def unpack(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, shape_checked: bool = False) -> Any:
    """Decode exactly one msgpack value from ``data``; raise DecodeError on anything else.
    ``shape_checked``: the caller checks the type of every nested value before it uses the
    value (an envelope body), so a deep nesting fails there without recursion and the depth
    walk is skipped (msgpack's own decoder stops at 1024 levels)."""
    if not isinstance(data, _BYTES_LIKE):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise FrameTooLarge(
            f"{size} bytes is over the {max_bytes}-byte limit", size=size, limit=max_bytes
        )
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            max_ext_len=0,  # the timestamp extension (-1) bypasses ext_hook; refuse it too
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ExtraData, ...
        raise DecodeError(f"malformed msgpack in {size} bytes ({_reason(exc)})") from exc
    if not shape_checked and (type(value) is list or type(value) is dict):
        _bound_depth(value, data)
    return value


def _bound_depth(value: list[Any] | dict[Any, Any], data: bytes | bytearray | memoryview) -> None:
    """The depth check, skipped when a cheaper look proves it unneeded: a list of scalars (a
    frame's ``[body, signature]``), or a small input with no more than MAX_DEPTH bytes that
    could be an array or map header (an envelope body: about 10)."""
    if type(value) is list and _CONTAINERS.isdisjoint(map(type, value)):
        return
    if len(data) <= _SCAN_UP_TO:
        scanned = data if type(data) is bytes else bytes(data)
        if len(scanned.translate(None, _NOT_CONTAINER_HEADERS)) <= MAX_DEPTH:
            return
    check_depth(value)


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise DecodeError if ``value``'s lists and dicts nest deeper than ``max_depth``.

    Level by level, without recursion, keeping only each level's containers; a list without a
    container in it costs one pass of ``map(type, ...)`` (about 10 ns an item). Map keys need no
    look: a list or dict cannot be one."""
    level = [value]
    for _ in range(max_depth):
        inner: list[Any] = []
        for container in level:
            items = container if type(container) is list else container.values()
            if not _CONTAINERS.isdisjoint(map(type, items)):
                inner += [item for item in items if type(item) in _CONTAINERS]
        if not inner:
            return
        level = inner
    raise DecodeError(f"arrays and maps nest at most {max_depth} levels deep")


def describe(value: object) -> str:
    """A value from the bus described by its type and size, safe to put in a message (never its
    ``repr``: that may recurse without bound, or be megabytes long)."""
    kind = type(value).__name__
    if isinstance(value, bool | int | float) or value is None:
        text = str(value)
        return f"{kind} {text}" if len(text) <= 24 else f"{kind} of {len(text)} digits"
    if isinstance(value, str):
        return f"str of {len(value)} characters"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{kind} of {len(value)} bytes"
    if isinstance(value, list | tuple | dict):
        return f"{kind} of {len(value)} items"
    return kind


def _reason(exc: BaseException) -> str:
    """msgpack's own message, bounded (its messages do not quote the input)."""
    try:
        text = str(exc)
    except Exception:  # a hostile value's __str__ cannot get here, but never let a message fail
        text = ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")
