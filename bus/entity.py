"""Entities: Ed25519 key pairs that sign messages and grants. The only module importing nacl.

A public key travels as 32 raw bytes and is written as unpadded base64url (43 characters), which
is also a valid URI segment, so a namespace key can be a URI's first segment. An entity file is
JSON (mode 0600) holding the public key and the 32-byte secret seed; nothing else ever prints the
seed — ``repr``, logs and errors show the public key only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import stat
import time
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from bus.errors import BadSignature, DecodeError

__all__ = [
    "KEY_BYTES",
    "SIGNATURE_BYTES",
    "Entity",
    "key_from_text",
    "key_to_text",
    "public_key_of",
    "verify",
]

KEY_BYTES = 32
SIGNATURE_BYTES = 64
_FILE_TYPE = "modelbus-entity"


def key_to_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def key_from_text(text: str) -> bytes:
    """Parse a 43-character base64url public key; raise DecodeError otherwise."""
    if not isinstance(text, str) or len(text) != 43:
        raise DecodeError(f"a key is 43 base64url characters, got {str(text)[:60]!r}")
    try:
        key = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{text!r} is not base64url: {exc}") from exc
    if len(key) != KEY_BYTES:
        raise DecodeError(f"{text!r} does not decode to {KEY_BYTES} bytes")
    if key_to_text(key) != text:  # '+', '/' or nonzero unused bits: a second spelling
        raise DecodeError(f"{text!r} is not the canonical base64url text of a key")
    return key


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise BadSignature if it does not hold."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise BadSignature("signature does not verify", signer=key_to_text(public_key)) from exc


class Entity:
    """A signing identity. Construct with :meth:`generate` or :meth:`load`."""

    def __init__(self, seed: bytes, *, comment: str = "") -> None:
        if len(seed) != KEY_BYTES:
            raise DecodeError(f"an entity seed is {KEY_BYTES} bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing_key.verify_key)
        # The 64-byte secret key libsodium signs with: signing through the binding skips the
        # wrapper's checks and SignedMessage (a third of a signature's cost on short frames).
        self._secret_key = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
        self.key_text = key_to_text(self.public_key)  # once: every frame sealed asks for it
        self.comment = comment

    @classmethod
    def generate(cls, *, comment: str = "") -> Entity:
        """A new random entity. Keys whose text would start with ``-`` are skipped (1 in 64):
        as a URI's first segment such a key reads as an option to command-line tools."""
        while True:
            entity = cls(os.urandom(KEY_BYTES), comment=comment)
            if not entity.key_text.startswith("-"):
                return entity

    def sign(self, message: bytes) -> bytes:
        return nacl.bindings.crypto_sign(message, self._secret_key)[
            : nacl.bindings.crypto_sign_BYTES
        ]

    def save(self, path: str | Path) -> None:
        """Write the entity file with mode 0600; refuse to overwrite an existing file."""
        document = {
            "type": _FILE_TYPE,
            "version": 1,
            "public_key": self.key_text,
            "secret_seed": key_to_text(bytes(self._signing_key)),
            "comment": self.comment,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)
            file.write("\n")

    @classmethod
    def load(cls, path: str | Path) -> Entity:
        """The entity in ``path``; refused if others than its owner may read the file."""
        document = _read_entity_file(path)
        if "secret_seed" not in document:
            raise DecodeError(f"{path} holds only a public key; signing needs the entity file")
        _check_private(path)
        entity = cls(key_from_text(document["secret_seed"]), comment=document.get("comment", ""))
        if entity.key_text != document.get("public_key"):
            raise DecodeError(f"{path}: the public key does not match the secret seed")
        return entity

    def __repr__(self) -> str:
        return f"Entity({self.key_text})"


def public_key_of(spec: str) -> bytes:
    """A public key from its text form or from an entity file's path."""
    if len(spec) == 43 and not os.path.exists(spec):
        return key_from_text(spec)
    document = _read_entity_file(spec)
    return key_from_text(str(document.get("public_key")))


def _check_private(path: str | Path) -> None:
    """Refuse a secret key that others may read, as ssh does, with the command that fixes it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise DecodeError(f"cannot read entity file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise DecodeError(
            f"{path} holds a secret key and others may read it (mode {mode:04o}); refusing to "
            f"use it: run chmod 600 {shlex.quote(str(path))}",
            mode=f"{mode:04o}",
        )


def _read_entity_file(path: str | Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DecodeError(f"cannot read entity file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise DecodeError(f"{path} is not an entity file (bad JSON)") from exc
    if not isinstance(document, dict) or document.get("type") != _FILE_TYPE:
        raise DecodeError(f"{path} is not a modelbus entity file")
    return document
