"""Grants: permissions, the grant codec, and chain verification with one typed error per failure."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import (
    BadSignature,
    BrokenChain,
    DecodeError,
    Entity,
    Grant,
    GrantExpired,
    InvalidUri,
    OutOfScope,
    PermissionMissing,
    Permissions,
    TtlExceeded,
    UntrustedRoot,
    codec,
    decode_chain,
    encode_chain,
    key_to_text,
)
from bus.grants import MAX_CHAIN, check_chain
from tests.bus.helpers import HOUR_NS, Namespace, make_grant

NOW = time.time_ns()

# -- permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rights", "canonical"),
    [
        ("C", {"C"}, "C"),
        ("C+", {"C+", "C"}, "C+"),
        ("C*", {"C*", "C+", "C"}, "C*"),
        ("C*P", {"C*", "C+", "C", "P"}, "C*P"),
        ("PC*", {"C*", "C+", "C", "P"}, "C*P"),
        ("P", {"P"}, "P"),
        ("L", {"L"}, "L"),
        ("C+PL", {"C+", "C", "P", "L"}, "C+PL"),
        ("LP", {"P", "L"}, "PL"),
    ],
)
def test_permissions_parse(text: str, rights: set[str], canonical: str) -> None:
    permissions = Permissions.parse(text)
    assert permissions.rights == frozenset(rights)
    assert str(permissions) == canonical
    assert Permissions.parse(str(permissions)) == permissions


@pytest.mark.parametrize("text", ["", "X", "c", "C-", "C**", "C+*", "+", "*", "P ", "CP!", None, 3])
def test_bad_permissions_raise_decode_error(text: object) -> None:
    with pytest.raises(DecodeError):
        Permissions.parse(text)  # type: ignore[arg-type]


def test_permissions_and() -> None:
    both = Permissions.parse("C*P") & Permissions.parse("C+L")
    assert both.rights == frozenset({"C+", "C"})
    assert not both.has("P")
    assert str(Permissions.parse("P") & Permissions.parse("C")) == ""


# -- the grant codec -------------------------------------------------------------------------------


def test_grant_round_trip() -> None:
    namespace = Namespace()
    receiver = Entity.generate()
    grant = namespace.grant(receiver, "a/*", "PC*", ttl=3, expires_ns=NOW + 5, created_ns=NOW)
    decoded = Grant.decode(grant.encode())
    assert decoded == grant
    assert decoded.giver == namespace.owner.public_key
    assert decoded.receiver == receiver.public_key
    assert decoded.pattern == namespace.uri("a", "*")
    assert str(decoded.permissions) == "C*P"
    assert (decoded.ttl, decoded.expires_ns, decoded.created_ns) == (3, NOW + 5, NOW)
    assert decoded.namespace == namespace.owner.public_key
    decoded.check_signature()


def test_chain_file_round_trip() -> None:
    namespace = Namespace()
    member = namespace.member("a/*", "C*P", ttl=1).delegate(namespace.uri("a", "b"), "P")
    assert decode_chain(encode_chain(member.chain)) == member.chain
    assert decode_chain(encode_chain(list(member.chain))) == member.chain


@pytest.mark.parametrize(
    ("pattern", "ttl", "error"),
    [
        ("ns/a", 0, DecodeError),  # the namespace must be a key
        ("{key}/a//b", 0, InvalidUri),
        ("{key}/*/*", 0, InvalidUri),
        ("{key}/a", -1, DecodeError),
        ("{key}/a", MAX_CHAIN + 1, DecodeError),
    ],
)
def test_create_refuses_bad_grants(pattern: str, ttl: int, error: type[Exception]) -> None:
    owner = Entity.generate()
    with pytest.raises(error):
        make_grant(owner, owner, pattern.format(key=owner.key_text), "P", ttl=ttl)


def _reencoded(grant: Grant, index: int, value: object) -> bytes:
    fields = codec.unpack(grant.body)
    fields[index] = value
    return codec.pack([codec.pack(fields), grant.signature])


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 2),
        (0, True),
        (1, b"\x00" * 31),
        (2, "A" * 43),
        (3, 5),
        (3, "ns/a"),
        (4, "X"),
        (5, "0"),
        (5, False),
        (6, 1.5),
        (7, None),
    ],
)
def test_decode_refuses_malformed_grant_fields(index: int, value: object) -> None:
    grant = Namespace().grant(Entity.generate(), "a", "P")
    with pytest.raises(DecodeError):
        Grant.decode(_reencoded(grant, index, value))


def test_decode_refuses_a_bad_pattern_with_invalid_uri() -> None:
    namespace = Namespace()
    grant = namespace.grant(Entity.generate(), "a", "P")
    with pytest.raises(InvalidUri):
        Grant.decode(_reencoded(grant, 3, namespace.uri("a", "", "b")))


VALID = Namespace().grant(Entity.generate(), "a/*", "C*P", ttl=2)
VALID_GRANT = VALID.encode()
any_field = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=70)
    | st.sampled_from([VALID.giver, VALID.pattern, "C*P", 3, VALID.expires_ns, [1], {"a": 1}])
)


@given(
    st.binary(max_size=200)
    | st.tuples(st.integers(0, len(VALID_GRANT) - 1), st.integers(1, 255)).map(
        lambda change: (
            VALID_GRANT[: change[0]]
            + bytes([VALID_GRANT[change[0]] ^ change[1]])
            + VALID_GRANT[change[0] + 1 :]
        )
    )
    | st.tuples(st.integers(0, 7), any_field).map(lambda change: _reencoded(VALID, *change))
)
def test_random_grant_bytes_raise_a_documented_error_or_decode_faithfully(data: bytes) -> None:
    """Bytes are refused with DecodeError/InvalidUri, or decode into a grant that says exactly
    what they say (a flipped signature byte decodes: the chain check refuses it later)."""
    try:
        grant = Grant.decode(data)
    except (DecodeError, InvalidUri):
        return
    assert codec.unpack(data) == [grant.body, grant.signature]
    version, giver, receiver, pattern, perms, ttl, expires_ns, created_ns = codec.unpack(grant.body)
    assert version == 1 and type(version) is int
    assert (giver, receiver, pattern) == (grant.giver, grant.receiver, grant.pattern)
    assert len(grant.giver) == len(grant.receiver) == 32 and len(grant.signature) == 64
    assert grant.permissions == Permissions.parse(perms)
    assert (ttl, expires_ns, created_ns) == (grant.ttl, grant.expires_ns, grant.created_ns)
    assert all(type(n) is int for n in (grant.ttl, grant.expires_ns, grant.created_ns))
    assert isinstance(grant.pattern, str) and isinstance(perms, str)
    assert key_to_text(grant.namespace) == pattern.split("/", 1)[0]


def test_oversize_grant_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        Grant.decode(codec.pack([b"x" * 5000, b"\x00" * 64]))


@pytest.mark.parametrize("data", [codec.pack("x"), codec.pack([1]), codec.pack([b"x"] * 9)])
def test_decode_chain_refuses_bad_chain_files(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_chain(data)


# -- chain verification: the good cases ---------------------------------------------------------


def test_one_grant_chain() -> None:
    namespace = Namespace()
    member = namespace.member("a/*", "C*P")
    verdict = check_chain(member.chain, now_ns=NOW)
    assert verdict.namespace == namespace.owner.public_key
    assert verdict.receiver == member.entity.public_key
    assert verdict.permissions == Permissions.parse("C*P")
    verdict.authorize(member.entity.public_key, namespace.uri("a", "b"), "P", now_ns=NOW)
    verdict.authorize(member.entity.public_key, namespace.uri("a", "*"), "C*", now_ns=NOW)


def test_two_grant_chain() -> None:
    namespace = Namespace()
    middle = namespace.member("a/*", "C*P", ttl=1)
    leaf = middle.delegate(namespace.uri("a", "b", "*"), "C+P")
    verdict = check_chain(leaf.chain, now_ns=NOW)
    assert verdict.receiver == leaf.entity.public_key
    assert verdict.patterns == (namespace.uri("a", "*"), namespace.uri("a", "b", "*"))
    assert verdict.expires_ns == min(grant.expires_ns for grant in leaf.chain)
    verdict.authorize(leaf.entity.public_key, namespace.uri("a", "b", "c"), "P", now_ns=NOW)


def test_a_chain_of_the_maximum_length() -> None:
    namespace = Namespace()
    member = namespace.member("*", "P", ttl=MAX_CHAIN - 1)
    for depth in range(MAX_CHAIN - 1):
        member = member.delegate(namespace.uri("*"), "P", ttl=MAX_CHAIN - 2 - depth)
    assert len(member.chain) == MAX_CHAIN
    check_chain(member.chain, now_ns=NOW).authorize(
        member.entity.public_key, namespace.uri("x"), "P", now_ns=NOW
    )


# -- chain verification: each failure has its own error -------------------------------------------


def test_forged_grant_signature_is_bad_signature() -> None:
    namespace = Namespace()
    mallory = Entity.generate()
    # Mallory signs a grant claiming to be from the namespace owner.
    fake = make_grant(mallory, mallory, namespace.uri("*"), "C*P")
    fields = codec.unpack(fake.body)
    fields[1] = namespace.owner.public_key
    body = codec.pack(fields)
    forged = Grant.decode(codec.pack([body, mallory.sign(b"modelbus grant v1\x00" + body)]))
    with pytest.raises(BadSignature):
        check_chain((forged,), now_ns=NOW)


@pytest.mark.parametrize(
    ("index", "value"),
    [(4, "C*PL"), (3, "{key}/*"), (5, 8), (6, NOW + 100 * HOUR_NS), (2, "receiver")],
)
def test_tampered_grant_is_bad_signature(index: int, value: object) -> None:
    namespace = Namespace()
    member = namespace.member("a", "C", ttl=0)
    mallory = Entity.generate()
    if value == "receiver":
        value = mallory.public_key
    elif isinstance(value, str) and "{key}" in value:
        value = value.format(key=namespace.key)
    tampered = Grant.decode(_reencoded(member.chain[0], index, value))
    with pytest.raises(BadSignature):
        check_chain((tampered,), now_ns=NOW)


def test_chain_not_rooted_at_the_namespace_is_untrusted_root() -> None:
    namespace = Namespace()
    stranger = Entity.generate()
    grant = make_grant(stranger, Entity.generate(), namespace.uri("*"), "P")
    with pytest.raises(UntrustedRoot):
        check_chain((grant,), now_ns=NOW)


def test_chain_for_another_namespace_is_untrusted_root() -> None:
    mine, theirs = Namespace(), Namespace()
    member = theirs.member("*", "C*P")
    verdict = check_chain(member.chain, now_ns=NOW)
    with pytest.raises(UntrustedRoot):
        verdict.authorize(member.entity.public_key, mine.uri("a"), "P", now_ns=NOW)


def test_receiver_and_giver_mismatch_is_broken_chain() -> None:
    namespace = Namespace()
    first = namespace.member("*", "P", ttl=1)
    stranger = Entity.generate()
    second = make_grant(stranger, Entity.generate(), namespace.uri("*"), "P")
    with pytest.raises(BrokenChain, match="not given by the receiver"):
        check_chain((*first.chain, second), now_ns=NOW)


def test_sender_not_the_last_receiver_is_broken_chain() -> None:
    namespace = Namespace()
    member = namespace.member("*", "P")
    verdict = check_chain(member.chain, now_ns=NOW)
    with pytest.raises(BrokenChain):
        verdict.authorize(Entity.generate().public_key, namespace.uri("a"), "P", now_ns=NOW)


def test_mixed_namespaces_are_broken_chain() -> None:
    namespace, other = Namespace(), Namespace()
    first = namespace.member("*", "P", ttl=1)
    second = make_grant(first.entity, Entity.generate(), other.uri("*"), "P")
    with pytest.raises(BrokenChain, match="different namespaces"):
        check_chain((*first.chain, second), now_ns=NOW)


def test_empty_and_overlong_chains_are_broken_chain() -> None:
    with pytest.raises(BrokenChain):
        check_chain((), now_ns=NOW)
    namespace = Namespace()
    grant = namespace.grant(namespace.owner, "*", "P", ttl=MAX_CHAIN)
    with pytest.raises(BrokenChain):
        check_chain((grant,) * (MAX_CHAIN + 1), now_ns=NOW)


def test_expired_grant_is_grant_expired() -> None:
    namespace = Namespace()
    member = namespace.member("*", "P", expires_ns=NOW)
    with pytest.raises(GrantExpired):
        check_chain(member.chain, now_ns=NOW)
    check_chain(member.chain, now_ns=NOW - 1)  # valid up to the instant before expiry


def test_expired_second_grant_is_grant_expired() -> None:
    namespace = Namespace()
    leaf = namespace.member("*", "P", ttl=1).delegate(namespace.uri("*"), "P", expires_ns=NOW - 1)
    with pytest.raises(GrantExpired):
        check_chain(leaf.chain, now_ns=NOW)


def test_verdict_expires_with_its_earliest_grant() -> None:
    namespace = Namespace()
    leaf = namespace.member("*", "P", ttl=1).delegate(namespace.uri("*"), "P", expires_ns=NOW + 10)
    verdict = check_chain(leaf.chain, now_ns=NOW)
    verdict.authorize(leaf.entity.public_key, namespace.uri("a"), "P", now_ns=NOW + 9)
    with pytest.raises(GrantExpired):
        verdict.authorize(leaf.entity.public_key, namespace.uri("a"), "P", now_ns=NOW + 10)


def test_ttl_zero_grant_redelegated_is_ttl_exceeded() -> None:
    namespace = Namespace()
    leaf = namespace.member("*", "C*P", ttl=0).delegate(namespace.uri("*"), "C*P")
    with pytest.raises(TtlExceeded):
        check_chain(leaf.chain, now_ns=NOW)


def test_ttl_counts_every_later_grant() -> None:
    namespace = Namespace()
    two = namespace.member("*", "P", ttl=1).delegate(namespace.uri("*"), "P", ttl=1)
    check_chain(two.chain, now_ns=NOW)
    three = two.delegate(namespace.uri("*"), "P")  # the root allowed only one re-delegation
    with pytest.raises(TtlExceeded, match="grant 0"):
        check_chain(three.chain, now_ns=NOW)


def test_missing_permission_is_permission_missing() -> None:
    namespace = Namespace()
    member = namespace.member("*", "C*")
    verdict = check_chain(member.chain, now_ns=NOW)
    with pytest.raises(PermissionMissing) as caught:
        verdict.authorize(member.entity.public_key, namespace.uri("a"), "P", now_ns=NOW)
    assert caught.value.details["needed"] == "P"


def test_permissions_and_along_the_chain() -> None:
    namespace = Namespace()
    leaf = namespace.member("*", "C+P", ttl=1).delegate(namespace.uri("*"), "C*")
    verdict = check_chain(leaf.chain, now_ns=NOW)
    assert verdict.permissions.rights == frozenset({"C+", "C"})
    key = leaf.entity.public_key
    verdict.authorize(key, namespace.uri("+"), "C+", now_ns=NOW)
    for right in ("C*", "P"):  # the leaf has C* but not its giver; the giver has P, not the leaf
        with pytest.raises(PermissionMissing):
            verdict.authorize(key, namespace.uri("*"), right, now_ns=NOW)


def test_uri_outside_the_pattern_is_out_of_scope() -> None:
    namespace = Namespace()
    member = namespace.member("a/*", "C*P")
    verdict = check_chain(member.chain, now_ns=NOW)
    key = member.entity.public_key
    for asked in (namespace.uri("b"), namespace.uri("ab"), namespace.uri("*")):
        with pytest.raises(OutOfScope):
            verdict.authorize(key, asked, "C*", now_ns=NOW)


def test_patterns_intersect_along_the_chain() -> None:
    namespace = Namespace()
    leaf = namespace.member("a/*", "P", ttl=1).delegate(namespace.uri("*", "x"), "P")
    verdict = check_chain(leaf.chain, now_ns=NOW)
    key = leaf.entity.public_key
    verdict.authorize(key, namespace.uri("a", "b", "x"), "P", now_ns=NOW)
    with pytest.raises(OutOfScope):
        verdict.authorize(key, namespace.uri("a", "b", "y"), "P", now_ns=NOW)  # not */x
    with pytest.raises(OutOfScope):
        verdict.authorize(key, namespace.uri("b", "x"), "P", now_ns=NOW)  # not a/*
