"""Payload objects: BOSSWAVE's typed byte strings, numbered in dotted ranges.

A PO number is four dotted octets ``a.b.c.d``. The first octet says how the bytes are encoded and
is the only part a receiver must understand:

    1.x.x.x   binary, opaque bytes
    2.x.x.x   msgpack                 (2.0.3.1: metadata tuple {val, ts}; 2.0.11.x: modelbus)
    64.x.x.x  UTF-8 text
    65.x.x.x  JSON (UTF-8)

Any other first octet is rejected as a decode error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from bus import codec
from bus.errors import DecodeError

__all__ = [
    "PO_BINARY",
    "PO_JSON",
    "PO_METADATA",
    "PO_MSGPACK",
    "PO_REPLY",
    "PO_REQUEST",
    "PO_STATE",
    "PO_STATUS",
    "PO_TEXT",
    "PayloadObject",
    "check_po_number",
]

PO_BINARY = "1.0.0.0"
PO_MSGPACK = "2.0.0.0"
PO_METADATA = "2.0.3.1"
PO_REQUEST = "2.0.11.1"
PO_REPLY = "2.0.11.2"
PO_STATE = "2.0.11.3"
PO_STATUS = "2.0.11.4"
PO_TEXT = "64.0.1.0"
PO_JSON = "65.0.0.0"

_KNOWN_RANGES = {1, 2, 64, 65}
_OCTET = r"(0|[1-9][0-9]{0,2})"  # decimal, no leading zeros: one spelling per number
_PO_NUMBER = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def check_po_number(number: object) -> str:
    """Validate a dotted PO number from the wire and return it."""
    if not isinstance(number, str):
        raise DecodeError(f"a PO number must be a dotted string, not {type(number).__name__}")
    match = _PO_NUMBER.fullmatch(number)
    if match is None or any(int(octet) > 255 for octet in match.groups()):
        raise DecodeError(f"malformed PO number {number[:32]!r}; expected a.b.c.d octets")
    if int(match.group(1)) not in _KNOWN_RANGES:
        raise DecodeError(
            f"unknown PO range {match.group(1)} in {number!r}; known: 1.x binary, "
            "2.x msgpack, 64.x text, 65.x JSON"
        )
    return number


@dataclass(frozen=True, slots=True)
class PayloadObject:
    """A PO number and its bytes.

    ``sha256`` is the SHA-256 of ``data`` when it is already known, so that sealing a detached
    PO need not hash it again (:func:`bus.envelope.seal`); a decoded detached PO carries the
    digest its envelope signed and the bytes were checked against. It is not part of the wire
    form of an inline PO, nor of equality. A wrong one only makes receivers reject the frame.
    """

    number: str
    data: bytes
    sha256: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def msgpack(cls, value: Any, number: str = PO_MSGPACK) -> PayloadObject:
        return cls(number, codec.pack(value))

    @classmethod
    def text(cls, value: str, number: str = PO_TEXT) -> PayloadObject:
        return cls(number, value.encode())

    @classmethod
    def json(cls, value: Any, number: str = PO_JSON) -> PayloadObject:
        return cls(number, json.dumps(value, separators=(",", ":")).encode())

    @classmethod
    def binary(
        cls, value: bytes, number: str = PO_BINARY, *, sha256: bytes | None = None
    ) -> PayloadObject:
        """Opaque bytes; pass ``sha256`` when the caller has already hashed ``value``."""
        return cls(number, bytes(value), sha256)

    @property
    def kind(self) -> str:
        """``binary``, ``msgpack``, ``text`` or ``json``, from the first octet."""
        return {"1": "binary", "2": "msgpack", "64": "text", "65": "json"}[
            self.number.split(".", 1)[0]
        ]

    def value(self) -> Any:
        """Decode the bytes by the PO range; any failure is a DecodeError. JSON and msgpack
        values nest at most :data:`bus.codec.MAX_DEPTH` levels deep."""
        kind = self.kind
        if kind == "binary":
            return self.data
        if kind == "msgpack":
            return codec.unpack(self.data)
        try:
            text = self.data.decode()
            value = text if kind == "text" else json.loads(text)
        except (ValueError, RecursionError) as exc:  # json recurses: '[' * 10**5 is not valid
            reason = str(exc)[:120] if isinstance(exc, ValueError) else "nested too deep"
            raise DecodeError(
                f"PO {self.number} is not valid {kind} ({len(self.data)} bytes): {reason}"
            ) from exc
        if type(value) is list or type(value) is dict:
            codec.check_depth(value)
        return value
