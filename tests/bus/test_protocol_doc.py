"""bus/PROTOCOL.md cannot drift from the code: its test vectors, error codes and PO numbers are
checked here against the reference implementation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bus
from bus import codec, errors, grants, po, rpc
from bus import envelope as envelopes
from bus import uri as uris
from bus.entity import Entity, key_to_text, verify
from bus.grants import Grant, check_chain, decode_chain, encode_chain
from bus.po import PayloadObject
from bus.verifier import Verifier

DOC = Path(bus.__file__).with_name("PROTOCOL.md")
_VECTOR = re.compile(r"^```vector ([a-z0-9-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _vectors() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, text in _VECTOR.findall(DOC.read_text()):
        assert name not in found, f"vector {name!r} appears twice in PROTOCOL.md"
        found[name] = text
    return found


VECTORS = _vectors()


def hex_vector(name: str) -> bytes:
    return bytes.fromhex("".join(VECTORS[name].split()))


def inputs(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VECTORS[name].splitlines() if line.strip())
    return {key.strip(): value.strip() for key, value in pairs}


def entity(role: str) -> Entity:
    return Entity(hex_vector(f"{role}-seed"))


def root_grant() -> Grant:
    spec = inputs("grant-inputs")
    return Grant.create(
        entity(spec["giver"]),
        entity(spec["receiver"]).public_key,
        spec["pattern"],
        spec["permissions"],
        ttl=int(spec["ttl"]),
        expires_ns=int(spec["expires_ns"]),
        created_ns=int(spec["created_ns"]),
    )


def sealed_frame() -> bytes:
    spec = inputs("envelope-inputs")
    assert spec["proof"] == "grant" and spec["persist"] in ("true", "false")
    return envelopes.seal(
        entity(spec["signer"]),
        spec["uri"],
        [PayloadObject.text(spec["po_text"], spec["po_number"])],
        persist=spec["persist"] == "true",
        proof=(root_grant().encode(),),
        ts_ns=int(spec["ts_ns"]),
        nonce=bytes.fromhex(spec["nonce"]),
    )


def test_the_doc_has_every_vector() -> None:
    expected = {
        "namespace-seed",
        "namespace-public-key",
        "namespace-key-text",
        "publisher-seed",
        "publisher-key-text",
        "envelope-context",
        "grant-context",
        "grant-inputs",
        "grant-body",
        "grant-signature",
        "grant",
        "chain-file",
        "envelope-inputs",
        "envelope-body",
        "envelope-signature",
        "frame",
        "request-po-data",
        "reply-ok-po-data",
        "reply-error-po-data",
    }
    assert expected <= set(VECTORS)


def test_keys_from_seeds() -> None:
    namespace = entity("namespace")
    assert namespace.public_key == hex_vector("namespace-public-key")
    assert namespace.key_text == VECTORS["namespace-key-text"].strip()
    assert len(namespace.key_text) == 43
    assert entity("publisher").key_text == VECTORS["publisher-key-text"].strip()


def test_signing_contexts() -> None:
    assert hex_vector("envelope-context") == b"modelbus envelope v1\x00"
    assert hex_vector("grant-context") == b"modelbus grant v1\x00"
    # The code signs exactly context || body: the signature verifies over the documented bytes.
    grant = root_grant()
    verify(grant.giver, hex_vector("grant-context") + grant.body, grant.signature)


def test_grant_bytes() -> None:
    grant = root_grant()
    assert grant.body == hex_vector("grant-body")
    assert grant.signature == hex_vector("grant-signature")
    assert grant.encode() == hex_vector("grant")
    assert encode_chain([grant]) == hex_vector("chain-file")
    assert decode_chain(hex_vector("chain-file")) == (grant,)


def test_grant_chain_verdict() -> None:
    spec = inputs("grant-inputs")
    verdict = check_chain((Grant.decode(hex_vector("grant")),), now_ns=int(spec["created_ns"]))
    assert verdict.receiver == entity("publisher").public_key
    assert str(verdict.permissions) == spec["permissions"]
    assert verdict.patterns == (spec["pattern"],)


def test_envelope_bytes() -> None:
    frame = sealed_frame()
    assert frame == hex_vector("frame")
    envelope = envelopes.decode(frame)
    assert envelope.body == hex_vector("envelope-body")
    assert envelope.signature == hex_vector("envelope-signature")
    assert codec.pack([envelope.body, envelope.signature]) == frame
    verify(envelope.origin, hex_vector("envelope-context") + envelope.body, envelope.signature)


def test_the_frame_vector_decodes_and_verifies() -> None:
    spec = inputs("envelope-inputs")
    ts_ns = int(spec["ts_ns"])
    verifier = Verifier(clock_ns=lambda: ts_ns + 1_000_000_000)
    envelope = verifier.check_frame(hex_vector("frame"))
    assert envelope.uri == spec["uri"]
    assert envelope.ts_ns == ts_ns
    assert envelope.nonce == bytes.fromhex(spec["nonce"])
    assert envelope.persist is (spec["persist"] == "true")
    assert key_to_text(envelope.origin) == VECTORS["publisher-key-text"].strip()
    assert envelope.pos == (PayloadObject(spec["po_number"], spec["po_text"].encode()),)
    assert envelope.proof == (hex_vector("grant"),)


def test_a_changed_frame_byte_breaks_the_signature() -> None:
    frame = bytearray(hex_vector("frame"))
    frame[frame.index(b"hello, bus")] ^= 0x01
    with pytest.raises(errors.BadSignature):
        envelopes.decode(bytes(frame))


def test_request_and_reply_payloads() -> None:
    assert codec.pack({"id": "r1", "body": {"x": 1}}) == hex_vector("request-po-data")
    assert codec.pack({"id": "r1", "ok": True, "result": {"x": 1}}) == hex_vector(
        "reply-ok-po-data"
    )
    busy = errors.Overloaded("busy", limit=64)
    assert codec.pack({"id": "r1", "ok": False, "error": busy.to_wire()}) == hex_vector(
        "reply-error-po-data"
    )


def _error_classes(cls: type[errors.BusError]) -> list[type[errors.BusError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_error_classes(sub))
    return found


def _table_rows() -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if line.startswith("|")
    ]


def test_every_error_code_is_in_the_table() -> None:
    rows = {(row[0], row[1]) for row in _table_rows() if len(row) >= 2}
    for cls in _error_classes(errors.BusError):
        assert (f"`{cls.code}`", f"`{cls.__name__}`") in rows, f"{cls.code} is undocumented"


def test_every_po_constant_is_documented() -> None:
    rows = {(row[0], row[1]) for row in _table_rows() if len(row) >= 2}
    constants = {name: getattr(po, name) for name in po.__all__ if name.startswith("PO_")}
    assert constants, "bus/po.py defines no PO_ constants?"
    for name, number in constants.items():
        assert (f"`{name}`", f"`{number}`") in rows, f"{name} = {number} is undocumented"


def test_documented_limits_match_the_code() -> None:
    text = DOC.read_text()
    assert envelopes.DEFAULT_MAX_FRAME == 16 * 1024 * 1024 and "16 MiB" in text
    assert f"at most **{envelopes.MAX_POS}** payload objects" in text
    assert f"at most **{grants.MAX_CHAIN}**" in text
    assert f"**{uris.MAX_URI_LENGTH} characters**" in text
    assert f"**{uris.MAX_SEGMENTS} segments**" in text
    assert f"1 … {rpc.MAX_ID_LENGTH} characters" in text
    assert envelopes.DETACH_OVER == 65_536 and "64 KiB (65,536 bytes)" in text
