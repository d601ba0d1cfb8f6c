"""Grants (BOSSWAVE's declarations of trust) and the verification of grant chains.

A grant says: *giver* lets *receiver* use *permissions* on URIs matching *pattern* until
*expires*, and lets the receiver re-delegate at most *ttl* more times. The pattern's first
segment is the namespace key (base64url), so a grant is valid in exactly one namespace.

A chain (the "proof" in an envelope) lists grants root first. It is valid for an action when the
first giver is the namespace key, each receiver is the next giver, the last receiver is the
sender, every signature holds, no grant has expired, no grant is re-delegated further than its
TTL, the permissions of all grants together (AND) include the action's, and every grant's pattern
*contains* the URI or pattern asked for (WAVE 3's rule).

Signature checks (~40 µs each) come after every check that needs none, so a bogus chain costs
little: :func:`check_chain` checks the structure of the whole chain before its first signature,
and :class:`bus.verdicts.VerdictCache` also checks the sender, namespace, rights and scope first,
verifies each distinct grant's signature once, and remembers failed chains for a short while.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bus import codec
from bus import uri as uris
from bus.entity import KEY_BYTES, SIGNATURE_BYTES, Entity, key_from_text, key_to_text, verify
from bus.errors import (
    BrokenChain,
    BusError,
    DecodeError,
    GrantExpired,
    OutOfScope,
    PermissionMissing,
    TtlExceeded,
    UntrustedRoot,
)

__all__ = [
    "MAX_CHAIN",
    "ChainVerdict",
    "Grant",
    "Permissions",
    "check_chain",
    "check_structure",
    "decode_chain",
    "encode_chain",
    "load_chain",
]

GRANT_VERSION = 1
MAX_CHAIN = 8
MAX_GRANT_BYTES = 4096
_SIGNING_CONTEXT = b"modelbus grant v1\x00"
_PERM_TOKEN = re.compile(r"C\*|C\+|C|P|L")


@dataclass(frozen=True, slots=True)
class Permissions:
    """A set of rights: ``C`` consume, ``C+`` consume with ``+``, ``C*`` with ``*`` (each
    implying the ones before), ``P`` publish, ``L`` list persisted messages (query)."""

    rights: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Permissions:
        if not isinstance(text, str) or not text:
            raise DecodeError("permissions are a non-empty string like 'C*P' or 'PL'")
        tokens = _PERM_TOKEN.findall(text)
        if "".join(tokens) != text:
            raise DecodeError(f"bad permissions {text[:20]!r}; use C, C+, C*, P and L")
        rights = set(tokens)
        if "C*" in rights:
            rights.add("C+")
        if "C+" in rights:
            rights.add("C")
        return cls(frozenset(rights))

    def __and__(self, other: Permissions) -> Permissions:
        return Permissions(self.rights & other.rights)

    def has(self, right: str) -> bool:
        return right in self.rights

    def __str__(self) -> str:
        consume = "C*" if "C*" in self.rights else "C+" if "C+" in self.rights else "C"
        text = consume if "C" in self.rights else ""
        return text + "".join(r for r in ("P", "L") if r in self.rights)


@dataclass(frozen=True, slots=True)
class Grant:
    giver: bytes
    receiver: bytes
    pattern: str
    permissions: Permissions
    ttl: int
    expires_ns: int
    created_ns: int
    signature: bytes
    body: bytes

    @property
    def namespace(self) -> bytes:
        return key_from_text(uris.namespace_of(self.pattern))

    @classmethod
    def create(
        cls,
        giver: Entity,
        receiver: bytes,
        pattern: str,
        permissions: str,
        *,
        ttl: int,
        expires_ns: int,
        created_ns: int,
    ) -> Grant:
        uris.parse(pattern, allow_wildcards=True)
        key_from_text(uris.namespace_of(pattern))
        perms = Permissions.parse(permissions)
        if ttl < 0 or ttl > MAX_CHAIN:
            raise DecodeError(f"ttl must be between 0 and {MAX_CHAIN}")
        body = codec.pack(
            [
                GRANT_VERSION,
                giver.public_key,
                receiver,
                pattern,
                str(perms),
                ttl,
                expires_ns,
                created_ns,
            ]
        )
        return cls.decode(codec.pack([body, giver.sign(_SIGNING_CONTEXT + body)]))

    def encode(self) -> bytes:
        return codec.pack([self.body, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Grant:
        """Parse a grant's bytes (untrusted); the signature is checked by :func:`check_chain`.
        Raises DecodeError, or InvalidUri for a bad pattern; nothing else."""
        try:
            return cls._decode(data)
        except BusError:
            raise
        except Exception as exc:  # a bug on hostile input: still this grant's decode error
            raise DecodeError(f"malformed grant ({type(exc).__name__})") from exc

    @classmethod
    def _decode(cls, data: bytes) -> Grant:
        outer = codec.unpack(data, max_bytes=MAX_GRANT_BYTES)
        if not (isinstance(outer, list) and len(outer) == 2 and _all_bytes(outer)):
            raise DecodeError("a grant is [body, signature]")
        body, signature = outer
        fields = codec.unpack(body)
        if not (isinstance(fields, list) and len(fields) == 8):
            raise DecodeError("a grant body has 8 fields")
        version, giver, receiver, pattern, perms, ttl, expires_ns, created_ns = fields
        if type(version) is not int or version != GRANT_VERSION:  # msgpack true == 1
            raise DecodeError(f"unsupported grant version ({codec.describe(version)})")
        if not (_is_key(giver) and _is_key(receiver) and len(signature) == SIGNATURE_BYTES):
            raise DecodeError("a grant's keys are 32 bytes and its signature 64")
        if not all(
            isinstance(n, int) and not isinstance(n, bool) for n in (ttl, expires_ns, created_ns)
        ):
            raise DecodeError("a grant's ttl, expiry and creation time are integers")
        if not isinstance(pattern, str):
            raise DecodeError("a grant's pattern is a string")
        uris.parse(pattern, allow_wildcards=True)
        key_from_text(uris.namespace_of(pattern))
        return cls(
            giver,
            receiver,
            pattern,
            Permissions.parse(perms),
            ttl,
            expires_ns,
            created_ns,
            signature,
            body,
        )

    def check_signature(self) -> None:
        verify(self.giver, _SIGNING_CONTEXT + self.body, self.signature)


def _is_key(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_BYTES


def _all_bytes(values: list[object]) -> bool:
    return all(isinstance(v, bytes) for v in values)


def encode_chain(chain: list[Grant] | tuple[Grant, ...]) -> bytes:
    """A chain file's bytes: the encoded grants, root first."""
    return codec.pack([grant.encode() for grant in chain])


def decode_chain(data: bytes) -> tuple[Grant, ...]:
    items = codec.unpack(data, max_bytes=MAX_CHAIN * MAX_GRANT_BYTES)
    if not isinstance(items, list) or not _all_bytes(items):
        raise DecodeError("a chain is a list of encoded grants")
    return tuple(Grant.decode(item) for item in items)


def load_chain(path: str | os.PathLike[str]) -> tuple[Grant, ...]:
    """A grant chain file's grants (``modelbus grant -o FILE``): the one place chain files are
    read. An unreadable file or one that is no chain is a DecodeError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(f"cannot read the grant chain file {path}: {exc.strerror}") from exc
    try:
        return decode_chain(data)
    except DecodeError as error:
        raise DecodeError(f"{path} is not a grant chain file: {error.message}") from error


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """What a valid chain allows, computed once and reused for every message that carries it."""

    namespace: bytes
    receiver: bytes
    permissions: Permissions
    patterns: tuple[str, ...]
    expires_ns: int

    def authorize(self, sender: bytes, asked: str, right: str, *, now_ns: int) -> None:
        """Raise the specific error if this chain does not let ``sender`` do ``right`` on
        ``asked`` (a URI or pattern, namespace already canonical)."""
        if sender != self.receiver:
            raise BrokenChain(
                "the proof was granted to another entity, not to the sender",
                granted_to=key_to_text(self.receiver),
                sender=key_to_text(sender),
            )
        if uris.namespace_of(asked) != key_to_text(self.namespace):
            raise UntrustedRoot("the proof is for another namespace", uri=asked)
        if now_ns >= self.expires_ns:
            raise GrantExpired("a grant in the proof has expired", expired_ns=self.expires_ns)
        if not self.permissions.has(right):
            raise PermissionMissing(
                f"the proof does not grant {right!r} (it grants {self.permissions or 'nothing'})",
                uri=asked,
                needed=right,
            )
        for pattern in self.patterns:
            if not uris.contains(pattern, asked):
                raise OutOfScope(f"{asked!r} is outside the granted {pattern!r}", uri=asked)


def check_chain(chain: tuple[Grant, ...], *, now_ns: int) -> ChainVerdict:
    """Verify a chain's structure, TTLs and expiry, then its signatures; return what it allows."""
    verdict = check_structure(chain, now_ns=now_ns)
    for grant in chain:
        grant.check_signature()
    return verdict


def check_structure(chain: tuple[Grant, ...], *, now_ns: int) -> ChainVerdict:
    """Every check of :func:`check_chain` that needs no signature, over the whole chain. The
    verdict is NOT to be trusted before every grant's ``check_signature()``."""
    if not chain:
        raise BrokenChain("an empty proof grants nothing")
    if len(chain) > MAX_CHAIN:
        raise BrokenChain(f"a proof has at most {MAX_CHAIN} grants")
    namespace = chain[0].namespace
    if chain[0].giver != namespace:
        raise UntrustedRoot(
            "the proof does not start at the namespace key",
            namespace=key_to_text(namespace),
            first_giver=key_to_text(chain[0].giver),
        )
    namespace_text = uris.namespace_of(chain[0].pattern)  # canonical: one text per key
    permissions = chain[0].permissions
    for index, grant in enumerate(chain):
        if uris.namespace_of(grant.pattern) != namespace_text:
            raise BrokenChain("the grants in a proof are for different namespaces")
        if index and chain[index - 1].receiver != grant.giver:
            raise BrokenChain(f"grant {index} is not given by the receiver of grant {index - 1}")
        if len(chain) - 1 - index > grant.ttl:
            raise TtlExceeded(
                f"grant {index} allows {grant.ttl} re-delegations; the proof has "
                f"{len(chain) - 1 - index} after it"
            )
        if now_ns >= grant.expires_ns:
            raise GrantExpired(f"grant {index} of the proof has expired", index=index)
        permissions = permissions & grant.permissions
    return ChainVerdict(
        namespace=namespace,
        receiver=chain[-1].receiver,
        permissions=permissions,
        patterns=tuple(grant.pattern for grant in chain),
        expires_ns=min(grant.expires_ns for grant in chain),
    )
