"""The verdict cache: steady traffic verified once, bogus chains cheap — every check without a
signature first, each distinct grant verified once, failures remembered for a while."""

from __future__ import annotations

import time

import pytest

from bus import (
    BadSignature,
    BrokenChain,
    BusError,
    Entity,
    Grant,
    GrantExpired,
    OutOfScope,
    PermissionMissing,
    codec,
)
from bus.grants import MAX_CHAIN
from bus.verdicts import VerdictCache
from tests.bus.helpers import Member, Namespace, make_grant

NOW = time.time_ns()
GRANT_CONTEXT = b"modelbus grant v1\x00"


def _reencoded(grant: Grant, index: int, value: object) -> bytes:
    fields = codec.unpack(grant.body)
    fields[index] = value
    return codec.pack([codec.pack(fields), grant.signature])


def forged_grant(giver: bytes, receiver: bytes, pattern: str, *, created_ns: int = NOW) -> bytes:
    """A grant claiming to be from ``giver``, signed by someone else: structurally valid."""
    mallory = Entity.generate()
    fake = make_grant(mallory, receiver, pattern, "P", created_ns=created_ns)
    fields = codec.unpack(fake.body)
    fields[1] = giver
    body = codec.pack(fields)
    return codec.pack([body, mallory.sign(GRANT_CONTEXT + body)])


def long_chain(namespace: Namespace, length: int) -> Member:
    member = namespace.member("*", "P", ttl=MAX_CHAIN - 1)
    for depth in range(length - 1):
        member = member.delegate(namespace.uri("*"), "P", ttl=MAX_CHAIN - 2 - depth)
    return member


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[Grant]:
    """Every grant whose signature is checked (a spy on our own method; the check still runs)."""
    checked: list[Grant] = []
    original = Grant.check_signature

    def spy(grant: Grant) -> None:
        checked.append(grant)
        original(grant)

    monkeypatch.setattr(Grant, "check_signature", spy)
    return checked


# -- steady traffic -------------------------------------------------------------------------------


def test_steady_traffic_verifies_the_chain_once() -> None:
    namespace = Namespace()
    member = namespace.member("a", "P", ttl=1).delegate(namespace.uri("a"), "P")
    cache = VerdictCache()
    verdicts = {id(cache.verdict(member.proof, now_ns=NOW + i)) for i in range(50)}
    assert len(verdicts) == 1
    assert (cache.misses, cache.hits) == (1, 49)


def test_verdict_without_a_sender_does_not_remember_failures() -> None:
    namespace = Namespace()
    member = namespace.member("a", "P", expires_ns=NOW)
    cache = VerdictCache()
    for _ in range(3):
        with pytest.raises(GrantExpired):
            cache.verdict(member.proof, now_ns=NOW)
    assert (cache.misses, cache.hits, cache.failure_hits) == (3, 0, 0)


def test_cached_verdicts_are_not_used_past_their_expiry() -> None:
    namespace = Namespace()
    member = namespace.member("a", "P", expires_ns=NOW + 10)
    cache = VerdictCache()
    cache.verdict(member.proof, now_ns=NOW)
    with pytest.raises(GrantExpired):
        cache.verdict(member.proof, now_ns=NOW + 10)
    assert (cache.misses, cache.hits) == (2, 0)


def test_cache_is_keyed_by_the_chain_and_bounded() -> None:
    namespace = Namespace()
    members = [namespace.member("a", "P") for _ in range(3)]
    cache = VerdictCache(size=2)
    receivers = [cache.verdict(m.proof, now_ns=NOW).receiver for m in members]
    assert receivers == [m.entity.public_key for m in members]
    cache.verdict(members[2].proof, now_ns=NOW)
    cache.verdict(members[0].proof, now_ns=NOW)  # evicted (least recently used): verified again
    assert (cache.misses, cache.hits) == (4, 1)


def test_tampered_proof_is_not_served_from_the_cache() -> None:
    namespace = Namespace()
    member = namespace.member("a", "P")
    cache = VerdictCache()
    cache.verdict(member.proof, now_ns=NOW)
    tampered = Grant.decode(_reencoded(member.chain[0], 4, "C*P"))
    with pytest.raises(BadSignature):
        cache.verdict((tampered.encode(),), now_ns=NOW)
    with pytest.raises(BadSignature):  # and its failure is not mistaken for the valid chain's
        cache.authorize(
            member.entity.public_key, (tampered.encode(),), member.chain[0].pattern, "P", now_ns=NOW
        )


def test_authorize_uses_and_fills_the_verdict_cache() -> None:
    namespace = Namespace()
    member = namespace.member("a/*", "P")
    cache = VerdictCache()
    for _ in range(3):
        cache.authorize(
            member.entity.public_key, member.proof, namespace.uri("a", "b"), "P", now_ns=NOW
        )
    assert (cache.misses, cache.hits) == (1, 2)
    with pytest.raises(OutOfScope):  # a valid chain asked for too much: the verdict says no
        cache.authorize(member.entity.public_key, member.proof, namespace.uri("b"), "P", now_ns=NOW)


# -- cheap checks before signatures ---------------------------------------------------------------


def test_the_sender_is_checked_before_any_signature(signature_checks: list[Grant]) -> None:
    namespace = Namespace()
    member = long_chain(namespace, MAX_CHAIN)
    with pytest.raises(BrokenChain, match="another entity"):
        VerdictCache().authorize(
            Entity.generate().public_key, member.proof, namespace.uri("a"), "P", now_ns=NOW
        )
    assert signature_checks == []


@pytest.mark.parametrize(
    ("asked", "right", "error"),
    [(("b",), "P", OutOfScope), (("a",), "C", PermissionMissing)],
)
def test_scope_and_rights_are_checked_before_any_signature(
    signature_checks: list[Grant], asked: tuple[str, ...], right: str, error: type
) -> None:
    namespace = Namespace()
    first = namespace.member("a", "P", ttl=1)
    # A chain whose last grant is forged: scope and rights fail before its signature is read.
    proof = (*first.proof, forged_grant(first.entity.public_key, b"\x01" * 32, namespace.uri("a")))
    with pytest.raises(error):
        VerdictCache().authorize(b"\x01" * 32, proof, namespace.uri(*asked), right, now_ns=NOW)
    assert signature_checks == []


def test_the_whole_structure_is_checked_before_any_signature(
    signature_checks: list[Grant],
) -> None:
    namespace = Namespace()
    member = long_chain(namespace, MAX_CHAIN - 1)
    expired = make_grant(
        member.entity, Entity.generate(), namespace.uri("*"), "P", expires_ns=NOW - 1
    )
    proof = (*member.proof, expired.encode())
    with pytest.raises(GrantExpired, match="grant 7"):
        VerdictCache().authorize(expired.receiver, proof, namespace.uri("a"), "P", now_ns=NOW)
    assert signature_checks == []


def test_a_copied_prefix_is_verified_once(signature_checks: list[Grant]) -> None:
    """A chain copied from the bus with a fresh forged grant appended costs one signature
    check per frame, not one per grant."""
    namespace = Namespace()
    member = long_chain(namespace, MAX_CHAIN - 1)
    attacker = Entity.generate().public_key
    cache = VerdictCache()
    for attempt in range(5):
        forged = forged_grant(
            member.entity.public_key, attacker, namespace.uri("*"), created_ns=NOW + attempt
        )
        with pytest.raises(BadSignature):
            cache.authorize(attacker, (*member.proof, forged), namespace.uri("a"), "P", now_ns=NOW)
    assert len(signature_checks) == (MAX_CHAIN - 1) + 5  # the prefix once, each forgery once
    assert cache.failure_hits == 0  # five different chains


def test_a_bad_grant_signature_is_never_remembered_as_good() -> None:
    namespace = Namespace()
    forged = forged_grant(namespace.owner.public_key, b"\x02" * 32, namespace.uri("*"))
    cache = VerdictCache(failure_size=0)
    for _ in range(3):
        with pytest.raises(BadSignature):
            cache.authorize(b"\x02" * 32, (forged,), namespace.uri("a"), "P", now_ns=NOW)


# -- the failure cache ----------------------------------------------------------------------------


def bogus(namespace: Namespace) -> tuple[bytes, tuple[bytes, ...]]:
    """A sender and an 8-grant chain of which the last grant is forged."""
    member = long_chain(namespace, MAX_CHAIN - 1)
    sender = Entity.generate().public_key
    return sender, (
        *member.proof,
        forged_grant(member.entity.public_key, sender, namespace.uri("*")),
    )


def test_a_failed_chain_is_remembered(signature_checks: list[Grant]) -> None:
    namespace = Namespace()
    sender, proof = bogus(namespace)
    cache = VerdictCache()
    errors = []
    for _ in range(3):
        with pytest.raises(BadSignature) as caught:
            cache.authorize(sender, proof, namespace.uri("a"), "P", now_ns=NOW)
        errors.append(caught.value)
    assert (cache.misses, cache.failure_hits) == (1, 2)
    assert len(signature_checks) == MAX_CHAIN  # the first time only
    assert len({id(error) for error in errors}) == 3  # a fresh error each time
    assert {error.message for error in errors} == {errors[0].message}
    assert {str(error.details) for error in errors} == {str(errors[0].details)}


@pytest.mark.parametrize("what", ["sender", "asked", "right"])
def test_a_failure_is_keyed_by_sender_uri_and_right(what: str) -> None:
    namespace = Namespace()
    sender, proof = bogus(namespace)
    cache = VerdictCache()
    with pytest.raises(BadSignature):
        cache.authorize(sender, proof, namespace.uri("a"), "P", now_ns=NOW)
    other = {
        "sender": (Entity.generate().public_key, namespace.uri("a"), "P"),
        "asked": (sender, namespace.uri("b"), "P"),
        "right": (sender, namespace.uri("a"), "C"),
    }[what]
    with pytest.raises((BadSignature, BrokenChain, PermissionMissing)):
        cache.authorize(other[0], proof, other[1], other[2], now_ns=NOW)
    assert (cache.misses, cache.failure_hits) == (2, 0)


def test_a_failure_is_remembered_for_its_ttl_only() -> None:
    namespace = Namespace()
    sender, proof = bogus(namespace)
    cache = VerdictCache(failure_ttl_s=30)
    uri = namespace.uri("a")
    with pytest.raises(BadSignature):
        cache.authorize(sender, proof, uri, "P", now_ns=NOW)
    with pytest.raises(BadSignature):
        cache.authorize(sender, proof, uri, "P", now_ns=NOW + 30 * 10**9 - 1)
    assert (cache.misses, cache.failure_hits) == (1, 1)
    with pytest.raises(BadSignature):
        cache.authorize(sender, proof, uri, "P", now_ns=NOW + 30 * 10**9)
    assert (cache.misses, cache.failure_hits) == (2, 1)
    with pytest.raises(BadSignature):  # a clock set back is not inside the remembered span
        cache.authorize(sender, proof, uri, "P", now_ns=NOW - 1)
    assert (cache.misses, cache.failure_hits) == (3, 1)


def test_the_failure_cache_is_bounded() -> None:
    namespace = Namespace()
    cache = VerdictCache(failure_size=2)
    attempts = [bogus(namespace) for _ in range(3)]
    uri = namespace.uri("a")
    for sender, proof in attempts:
        with pytest.raises(BadSignature):
            cache.authorize(sender, proof, uri, "P", now_ns=NOW)
    assert len(cache._failures) == 2
    for sender, proof in attempts[1:]:  # the two newest are remembered
        with pytest.raises(BadSignature):
            cache.authorize(sender, proof, uri, "P", now_ns=NOW)
    assert cache.failure_hits == 2
    with pytest.raises(BadSignature):  # the oldest was dropped: checked again
        cache.authorize(*attempts[0], uri, "P", now_ns=NOW)
    assert (cache.misses, cache.failure_hits) == (4, 2)


def test_expired_failures_are_pruned() -> None:
    namespace = Namespace()
    cache = VerdictCache(failure_ttl_s=1)
    uri = namespace.uri("a")
    for offset_s, (sender, proof) in enumerate(bogus(namespace) for _ in range(3)):
        with pytest.raises(BadSignature):
            cache.authorize(sender, proof, uri, "P", now_ns=NOW + offset_s * 10**9)
    assert len(cache._failures) == 1  # each new failure found the previous one expired


def test_a_malformed_proof_is_remembered_too() -> None:
    namespace = Namespace()
    cache = VerdictCache()
    for _ in range(2):
        with pytest.raises(BusError):
            cache.authorize(b"\x03" * 32, (b"\xc1",), namespace.uri("a"), "P", now_ns=NOW)
    assert (cache.misses, cache.failure_hits) == (1, 1)
