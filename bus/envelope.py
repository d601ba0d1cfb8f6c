"""The envelope: the signed frame every bus message travels in.

Wire form (msgpack)::

    frame = [body: bin, signature: bin(64)]                      (no detached payloads)
          | [body: bin, signature: bin(64), [blob: bin, ...]]   (detached payloads)
    body  = [version=1, uri: str, pos: [po, ...], origin: bin(32),
             ts_ns: int, nonce: bin(16), persist: bool, proof: [grant: bin, ...]]
    po    = [po_number: str, data: bin]                         (inline)
          | [po_number: str, sha256: bin(32), size: int]        (detached: bytes in the blobs)
    signature = Ed25519(origin's key, b"modelbus envelope v1\\x00" + body)

The signature covers the exact body bytes, so receivers never re-encode to check it. Payload
objects over 64 KiB travel *detached*: the body carries their SHA-256 and size, the bytes follow
the signature in order. Ed25519 hashes what it signs twice; one SHA-256 of a 1 MiB chunk is
several times cheaper, and the signed digest binds the bytes just as well. A sender that already
hashed a payload passes the digest in ``PayloadObject.sha256`` and sealing does not hash it
again; a decoded detached payload carries its verified digest there, so a receiver that needs
the bytes' SHA-256 (an upload's chunk) need not hash them again either.
:func:`decode` checks the shape, limits, URI grammar, PO numbers and the signature; grants and
freshness are the :class:`~bus.verifier.Verifier`'s job.

Frames are hostile: :func:`parse` raises only :class:`~bus.errors.DecodeError` (its subclass
:class:`~bus.errors.FrameTooLarge` for a frame over the limit, before any decoding),
:class:`~bus.errors.InvalidUri` for a signed URI that breaks the grammar, or
:class:`~bus.errors.BadSignature` for a detached payload that does not match its digest — any
other exception from one frame is a bug turned into a ``DecodeError``. Messages describe a bad
value by type and size (:func:`bus.codec.describe`), never by ``repr``. :func:`seal` refuses to
make a frame over the limit (``FrameTooLarge``, which is also a ``LimitExceeded``), so an
oversized message fails at its sender, typed, before anything is sent.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bus import codec
from bus import uri as uris
from bus.entity import KEY_BYTES, SIGNATURE_BYTES, Entity, verify
from bus.errors import BadSignature, BusError, DecodeError, FrameTooLarge
from bus.grants import MAX_CHAIN
from bus.po import PayloadObject, check_po_number

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ENVELOPE_VERSION",
    "MAX_POS",
    "Envelope",
    "RepeatPattern",
    "check_frame_size",
    "decode",
    "parse",
    "seal",
]

ENVELOPE_VERSION = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_POS = 64
NONCE_BYTES = 16
DETACH_OVER = 64 * 1024
DIGEST_BYTES = 32
_SIGNING_CONTEXT = b"modelbus envelope v1\x00"
_NONCE_MARKER = b"\xc4\x10"  # msgpack bin 8 of 16 bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    uri: str
    pos: tuple[PayloadObject, ...]
    origin: bytes
    ts_ns: int
    nonce: bytes
    persist: bool
    proof: tuple[bytes, ...]
    signature: bytes
    body: bytes = field(repr=False, default=b"")

    def check_signature(self) -> None:
        """Raise BadSignature unless the origin signed exactly this body."""
        verify(self.origin, _SIGNING_CONTEXT + self.body, self.signature)

    @property
    def is_tombstone(self) -> bool:
        """A persisted envelope without payload objects deletes the persisted message."""
        return self.persist and not self.pos


@dataclass(frozen=True, slots=True)
class RepeatPattern:
    """The bytes of every frame that says what one parsed frame says — same URI, payload objects,
    origin, persist flag and proof — with only its timestamp and nonce (and so its signature)
    new: a monitor tells a re-published state from a changed one without decoding it.

    Made from a frame in the layout :func:`seal` writes (no detached payloads, a timestamp of
    8 bytes): ``[body, signature]`` where the body ends ``origin, ts, nonce, persist, proof``.
    A frame matches when it is the same bytes but for the 8 timestamp bytes, the 16 nonce bytes
    and the 64 signature bytes. Msgpack decodes each value from its own bytes, so such a frame
    decodes to the same fields but those. A match says nothing about the signature."""

    head: bytes  # frame header, body up to and with the origin, and the timestamp's marker
    tail: bytes  # after the nonce: persist, proof and the signature's marker
    size: int

    @classmethod
    def of(cls, frame: bytes) -> RepeatPattern | None:
        """The pattern of ``frame``; None if it does not parse or has another layout."""
        try:
            envelope = parse(frame)
        except BusError:
            return None
        stamp = b"\xcf" + envelope.ts_ns.to_bytes(8, "big") if envelope.ts_ns >> 32 else b""
        end = codec.pack(envelope.persist) + codec.pack(list(envelope.proof))
        stamped = b"\xc4\x20" + envelope.origin + stamp + _NONCE_MARKER + envelope.nonce + end
        if not stamp or not envelope.body.endswith(stamped):
            return None
        if codec.pack_bins([envelope.body, envelope.signature]) != frame:
            return None  # blobs, or not the shortest headers
        at = len(frame) - SIGNATURE_BYTES - 2 - len(end) - NONCE_BYTES - 2 - 8
        return cls(frame[:at], end + b"\xc4\x40", len(frame))

    def matches(self, frame: bytes) -> bool:
        at = len(self.head) + 8
        return (
            len(frame) == self.size
            and frame.startswith(self.head)
            and frame.startswith(_NONCE_MARKER, at)
            and frame.startswith(self.tail, at + 2 + NONCE_BYTES)
        )


def seal(
    entity: Entity,
    uri: str,
    pos: tuple[PayloadObject, ...] | list[PayloadObject],
    *,
    persist: bool = False,
    proof: tuple[bytes, ...] = (),
    ts_ns: int | None = None,
    nonce: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """Sign and encode an envelope; returns the frame bytes. A frame over ``max_bytes`` raises
    FrameTooLarge (before signing when the payloads alone are over it)."""
    uris.parse(uri)
    entries: list[list[Any]] = []
    blobs: list[bytes] = []
    for po in pos:
        _check_number(po.number)
        if len(po.data) > DETACH_OVER:
            entries.append([po.number, _digest_of(po), len(po.data)])
            blobs.append(po.data)
        else:
            entries.append([po.number, po.data])
    body = codec.pack(
        [
            ENVELOPE_VERSION,
            uri,
            entries,
            entity.public_key,
            time.time_ns() if ts_ns is None else ts_ns,
            os.urandom(NONCE_BYTES) if nonce is None else nonce,
            persist,
            list(proof),
        ]
    )
    check_frame_size(len(body) + sum(len(blob) for blob in blobs), max_bytes)  # a lower bound
    signature = entity.sign(_SIGNING_CONTEXT + body)
    frame = codec.pack_bins([body, signature, blobs] if blobs else [body, signature])
    check_frame_size(len(frame), max_bytes)
    return frame


def check_frame_size(size: int, max_bytes: int = DEFAULT_MAX_FRAME) -> None:
    """Raise FrameTooLarge (a DecodeError and a LimitExceeded) when a frame of ``size`` bytes is
    over ``max_bytes``; for a transport to call on a frame it did not seal itself."""
    if size > max_bytes:
        raise FrameTooLarge(
            f"a frame of {size} bytes is over the {max_bytes}-byte limit (large files travel "
            "as a chunked transfer, PROTOCOL.md section 14)",
            size=size,
            limit=max_bytes,
        )


def _check_number(number: object) -> str:
    """:func:`~bus.po.check_po_number`, remembering the numbers that passed (a few hundred at
    most; a message uses a handful): a set lookup for the numbers every message carries."""
    if type(number) is str and number in _VALID_NUMBERS:
        return number
    checked = check_po_number(number)
    if len(_VALID_NUMBERS) < _VALID_NUMBERS_SIZE:
        _VALID_NUMBERS.add(checked)
    return checked


_VALID_NUMBERS: set[str] = set()
_VALID_NUMBERS_SIZE = 512


def _digest_of(po: PayloadObject) -> bytes:
    """The SHA-256 of a detached PO: the one its creator already computed, if any (a wrong one
    only makes receivers reject the frame), else hashed here."""
    if po.sha256 is None:
        return hashlib.sha256(po.data).digest()
    if len(po.sha256) != DIGEST_BYTES:
        raise DecodeError(f"a payload object's sha256 is {DIGEST_BYTES} bytes")
    return po.sha256


def decode(frame: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME) -> Envelope:
    """Decode a frame from the bus and check its signature; raise DecodeError/BadSignature."""
    envelope = parse(frame, max_bytes=max_bytes)
    envelope.check_signature()
    return envelope


def parse(frame: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME) -> Envelope:
    """Decode a frame WITHOUT checking its signature (the Verifier checks it after cheaper
    checks); never trust the result before ``check_signature()``."""
    try:
        return _parse(frame, max_bytes)
    except BusError:
        raise
    except Exception as exc:  # a bug on hostile input: still one frame's decode error
        raise DecodeError(f"malformed frame ({type(exc).__name__})") from exc


def _parse(frame: bytes, max_bytes: int) -> Envelope:
    outer = codec.unpack(frame, max_bytes=max_bytes)
    if not (isinstance(outer, list) and len(outer) in (2, 3)):
        raise DecodeError("a frame is [body, signature] or [body, signature, blobs]")
    body, signature = outer[0], outer[1]
    blobs = outer[2] if len(outer) == 3 else []
    if not (isinstance(blobs, list) and all(isinstance(blob, bytes) for blob in blobs)):
        raise DecodeError("a frame's detached payloads are a list of bytes")
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise DecodeError("a frame's body and signature are bytes")
    if len(signature) != SIGNATURE_BYTES:
        raise DecodeError(f"a signature is {SIGNATURE_BYTES} bytes")
    # _parse_body checks the type of every nested value, so a body nested deeper than
    # codec.MAX_DEPTH fails there; only then is its depth walked, to say so.
    fields = codec.unpack(body, max_bytes=max_bytes, shape_checked=True)
    try:
        return _parse_body(fields, signature, body, blobs)
    except Exception:
        if type(fields) is list or type(fields) is dict:
            codec.check_depth(fields)
        raise


def _parse_body(fields: Any, signature: bytes, body: bytes, blobs: list[bytes]) -> Envelope:
    if not isinstance(fields, list) or not fields:
        raise DecodeError("an envelope body is a list")
    if type(fields[0]) is not int or fields[0] != ENVELOPE_VERSION:  # msgpack true == 1
        raise DecodeError(
            f"unsupported envelope version ({codec.describe(fields[0])}); this side speaks 1"
        )
    if len(fields) != 8:
        raise DecodeError("an envelope body has 8 fields")
    _, uri, raw_pos, origin, ts_ns, nonce, persist, proof = fields
    if not isinstance(uri, str):
        raise DecodeError("an envelope URI is a string")
    uris.parse(uri)
    if not (isinstance(origin, bytes) and len(origin) == KEY_BYTES):
        raise DecodeError("an envelope origin is a 32-byte key")
    if not (isinstance(ts_ns, int) and not isinstance(ts_ns, bool) and ts_ns >= 0):
        raise DecodeError("an envelope timestamp is a non-negative integer (ns)")
    if not (isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES):
        raise DecodeError(f"an envelope nonce is {NONCE_BYTES} bytes")
    if not isinstance(persist, bool):
        raise DecodeError("an envelope persist flag is a boolean")
    if not (isinstance(proof, list) and len(proof) <= MAX_CHAIN):
        raise DecodeError(f"an envelope proof is a list of at most {MAX_CHAIN} grants")
    if not all(isinstance(grant, bytes) for grant in proof):
        raise DecodeError("an envelope proof holds encoded grants (bytes)")
    return Envelope(
        uri,
        _parse_pos(raw_pos, blobs),
        origin,
        ts_ns,
        nonce,
        persist,
        tuple(proof),
        signature,
        body,
    )


def _parse_pos(raw_pos: Any, blobs: list[bytes]) -> tuple[PayloadObject, ...]:
    if not (isinstance(raw_pos, list) and len(raw_pos) <= MAX_POS):
        raise DecodeError(f"an envelope carries a list of at most {MAX_POS} payload objects")
    pending = iter(blobs)
    pos = []
    for item in raw_pos:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes):
            pos.append(PayloadObject(_check_number(item[0]), item[1]))
        elif isinstance(item, list) and len(item) == 3:
            data, digest = _detached(item, next(pending, None))
            pos.append(PayloadObject(_check_number(item[0]), data, digest))
        else:
            raise DecodeError("a payload object is [po_number, bytes] or [po_number, sha256, size]")
    if next(pending, None) is not None:
        raise DecodeError("a frame carries more detached payloads than its body names")
    return tuple(pos)


def _detached(item: list[Any], blob: bytes | None) -> tuple[bytes, bytes]:
    """A detached PO's bytes and their signed SHA-256, once they match."""
    _, digest, size = item
    if not (isinstance(digest, bytes) and len(digest) == DIGEST_BYTES and isinstance(size, int)):
        raise DecodeError("a detached payload object is [po_number, sha256 (32 bytes), size]")
    if blob is None:
        raise DecodeError("a detached payload object has no bytes after the signature")
    if len(blob) != size or hashlib.sha256(blob).digest() != digest:
        raise BadSignature("a detached payload does not match its signed digest")
    return blob, digest
