"""The receiving side's checks: freshness, replay, authorisation, counting and logging."""

from __future__ import annotations

import logging
import os
import time

import pytest

from bus import (
    BadSignature,
    BrokenChain,
    ClockSkew,
    DecodeError,
    Entity,
    FrameTooLarge,
    GrantExpired,
    LimitExceeded,
    OutOfScope,
    Overloaded,
    PayloadObject,
    PermissionMissing,
    ReplayedNonce,
    UntrustedRoot,
    Verifier,
    key_to_text,
)
from bus import envelope as envelopes
from tests.bus.helpers import Member, Namespace

NOW = time.time_ns()  # a fixed "now" for the verifier; grants expire an hour from the real one
SKEW_S = 30


def fixed_clock_verifier(**options: object) -> Verifier:
    return Verifier(clock_ns=lambda: NOW, skew_s=SKEW_S, **options)  # type: ignore[arg-type]


def frame(member: Member, uri: str, **options: object) -> bytes:
    options.setdefault("ts_ns", NOW)
    return envelopes.seal(
        member.entity, uri, [PayloadObject.text("x")], proof=member.proof, **options
    )


def forged(frame_bytes: bytes) -> bytes:
    tampered = bytearray(frame_bytes)
    tampered[-1] ^= 0x01  # the signature's last byte
    return bytes(tampered)


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


def test_accepts_a_granted_sender(namespace: Namespace) -> None:
    member = namespace.member("a/*", "P")
    envelope = fixed_clock_verifier().check_frame(frame(member, namespace.uri("a", "b")))
    assert envelope.uri == namespace.uri("a", "b")
    assert envelope.origin == member.entity.public_key


def test_the_namespace_owner_needs_no_proof(namespace: Namespace) -> None:
    verifier = fixed_clock_verifier()
    verifier.check_frame(frame(namespace.as_member, namespace.uri("anything", "at", "all")))
    assert verifier.verdicts.misses == 0


def test_a_stranger_without_proof_is_rejected(namespace: Namespace) -> None:
    with pytest.raises(BrokenChain, match="empty proof"):
        fixed_clock_verifier().check_frame(frame(Member(Entity.generate()), namespace.uri("a")))


def test_someone_elses_proof_is_broken_chain(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    thief = Member(Entity.generate(), member.chain)
    with pytest.raises(BrokenChain):
        fixed_clock_verifier().check_frame(frame(thief, namespace.uri("a")))


@pytest.mark.parametrize(
    ("suffix", "perms", "uri", "error"),
    [
        ("a/*", "C*", ("a", "b"), PermissionMissing),
        ("a/*", "P", ("b",), OutOfScope),
    ],
)
def test_authorisation_failures_keep_their_type(
    namespace: Namespace, suffix: str, perms: str, uri: tuple[str, ...], error: type
) -> None:
    member = namespace.member(suffix, perms)
    with pytest.raises(error):
        fixed_clock_verifier().check_frame(frame(member, namespace.uri(*uri)))


def test_a_replayed_frame_is_rejected(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    data = frame(member, namespace.uri("a"))
    verifier.check_frame(data)
    with pytest.raises(ReplayedNonce):
        verifier.check_frame(data)
    # The same nonce re-signed over another body is the same message id: also a replay.
    again = frame(member, namespace.uri("a"), nonce=envelopes.parse(data).nonce, ts_ns=NOW + 1)
    with pytest.raises(ReplayedNonce):
        verifier.check_frame(again)
    assert verifier.rejected == {"replayed_nonce": 2}


def test_forgeries_cannot_poison_the_replay_cache(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    genuine = frame(member, namespace.uri("a"))
    with pytest.raises(BadSignature):
        verifier.check_frame(forged(genuine))
    accepted = verifier.check_frame(genuine)  # its nonce was not remembered from the forgery
    assert accepted.nonce == envelopes.parse(genuine).nonce
    assert verifier.rejected == {"bad_signature": 1}
    with pytest.raises(ReplayedNonce):  # the genuine one was remembered
        verifier.check_frame(genuine)


def test_replay_is_judged_per_scope(namespace: Namespace) -> None:
    """One client with two subscriptions gets the same frame twice: that is not a replay."""
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    envelope = envelopes.parse(frame(member, namespace.uri("a")))
    first_scope, second_scope = object(), object()
    verifier.check(envelope, replay_scope=first_scope)
    verifier.check(envelope, replay_scope=second_scope)
    with pytest.raises(ReplayedNonce):
        verifier.check(envelope, replay_scope=first_scope)


class Clock:
    """A clock the test moves by hand: no sleeping."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def test_a_nonce_is_remembered_as_long_as_a_copy_could_pass_the_skew_check(
    namespace: Namespace,
) -> None:
    member = namespace.member("a", "P")
    clock = Clock(NOW)
    verifier = Verifier(clock_ns=clock, skew_s=SKEW_S)
    uri = namespace.uri("a")
    ahead = frame(member, uri, ts_ns=NOW + SKEW_S * 10**9)  # as far ahead as the window allows
    verifier.check_frame(ahead)
    clock.now_ns = NOW + 2 * SKEW_S * 10**9  # the last instant a copy passes the skew check
    verifier.check_frame(frame(member, uri, ts_ns=clock.now_ns))  # traffic goes on (and prunes)
    with pytest.raises(ReplayedNonce):
        verifier.check_frame(ahead)
    clock.now_ns += 1  # from now on the copy is stale: skew, not replay, rejects it
    with pytest.raises(ClockSkew):
        verifier.check_frame(ahead)
    assert verifier.rejected == {"replayed_nonce": 1, "clock_skew": 1}


def test_nonces_are_forgotten_after_the_window(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    clock = Clock(NOW)
    verifier = Verifier(clock_ns=clock, skew_s=SKEW_S, replay_capacity=1)
    uri = namespace.uri("a")
    verifier.check_frame(frame(member, uri, ts_ns=NOW))
    clock.now_ns = NOW + 2 * SKEW_S * 10**9 + 1  # the first nonce has left the window
    verifier.check_frame(frame(member, uri, ts_ns=clock.now_ns))  # room for the new one
    assert not verifier.rejected


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_full_replay_cache_refuses_rather_than_forgets(
    namespace: Namespace, capacity: int
) -> None:
    """A, B, A with a small capacity: the second A is a replay, whatever came between."""
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier(replay_capacity=capacity)
    uri = namespace.uri("a")
    a, b, c = (frame(member, uri) for _ in range(3))
    verifier.check_frame(a)
    if capacity == 1:
        with pytest.raises(Overloaded) as caught:
            verifier.check_frame(b)
        assert caught.value.details == {"limit": 1}
        assert isinstance(caught.value, LimitExceeded)
    else:
        verifier.check_frame(b)
    with pytest.raises(ReplayedNonce):
        verifier.check_frame(a)
    with pytest.raises(Overloaded):
        verifier.check_frame(c)
    assert verifier.rejected == {"replayed_nonce": 1, "overloaded": 3 - capacity}
    persisted = frame(member, uri, persist=True)  # not remembered, so not refused
    assert verifier.check_frame(persisted).persist


@pytest.mark.parametrize("offset_s", [-(SKEW_S + 1), SKEW_S + 1, -3600, 3600])
def test_skewed_timestamps_are_clock_skew(namespace: Namespace, offset_s: int) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    with pytest.raises(ClockSkew):
        verifier.check_frame(frame(member, namespace.uri("a"), ts_ns=NOW + offset_s * 10**9))
    assert verifier.rejected == {"clock_skew": 1}


@pytest.mark.parametrize("offset_ns", [-SKEW_S * 10**9, -1, 0, 1, SKEW_S * 10**9])
def test_timestamps_within_the_window_are_accepted(namespace: Namespace, offset_ns: int) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    envelope = verifier.check_frame(frame(member, namespace.uri("a"), ts_ns=NOW + offset_ns))
    assert envelope.ts_ns == NOW + offset_ns
    assert not verifier.rejected
    with pytest.raises(ClockSkew):  # one nanosecond further out is outside the window
        sign = 1 if offset_ns >= 0 else -1
        verifier.check_frame(
            frame(member, namespace.uri("a"), ts_ns=NOW + sign * (SKEW_S * 10**9 + 1))
        )


def test_persisted_messages_are_exempt_from_skew_and_replay(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    old = frame(member, namespace.uri("a"), persist=True, ts_ns=NOW - 86_400 * 10**9)
    for _ in range(3):
        assert verifier.check_frame(old).persist
    assert not verifier.rejected


def test_persisted_messages_still_need_signature_and_grants(namespace: Namespace) -> None:
    verifier = fixed_clock_verifier()
    member = namespace.member("a", "P", expires_ns=NOW - 1)
    with pytest.raises(GrantExpired):
        verifier.check_frame(frame(member, namespace.uri("a"), persist=True))
    good = namespace.member("a", "P")
    with pytest.raises(BadSignature):
        verifier.check_frame(forged(frame(good, namespace.uri("a"), persist=True)))


def test_aliases_are_canonicalised_for_authorisation(namespace: Namespace) -> None:
    member = namespace.member("a/*", "P")
    with_alias = fixed_clock_verifier(aliases={"bldg": namespace.key})
    assert with_alias.canonical("bldg/a/b") == namespace.uri("a", "b")
    assert with_alias.canonical("bldg") == namespace.key
    assert with_alias.canonical("other/a") == "other/a"
    with_alias.check_frame(frame(member, "bldg/a/b"))
    with_alias.check_frame(frame(namespace.as_member, "bldg/z"))  # the owner, by alias
    with pytest.raises(OutOfScope):
        with_alias.check_frame(frame(member, "bldg/b"))
    with pytest.raises(UntrustedRoot):
        fixed_clock_verifier().check_frame(frame(member, "bldg/a/b"))


def test_steady_traffic_costs_one_chain_verification(namespace: Namespace) -> None:
    leaf = namespace.member("a", "P", ttl=1).delegate(namespace.uri("a"), "P")
    verifier = fixed_clock_verifier()
    for _ in range(20):
        verifier.check_frame(frame(leaf, namespace.uri("a")))
    assert (verifier.verdicts.misses, verifier.verdicts.hits) == (1, 19)


def test_frame_size_limit(namespace: Namespace) -> None:
    data = frame(namespace.as_member, namespace.uri("a"))
    verifier = fixed_clock_verifier(max_frame_bytes=len(data) - 1)
    with pytest.raises(FrameTooLarge):
        verifier.check_frame(data)
    assert verifier.rejected == {"frame_too_large": 1}


def test_rejections_are_counted_per_code(namespace: Namespace) -> None:
    verifier = fixed_clock_verifier()
    member = namespace.member("a", "P")
    uri = namespace.uri("a")
    replayed = frame(member, uri)
    verifier.check_frame(replayed)
    bad_frames = [
        b"\xc1",
        b"\x92",
        forged(frame(member, uri)),
        forged(frame(member, uri)),
        replayed,
        frame(member, uri, ts_ns=NOW - 3600 * 10**9),
        frame(namespace.member("b", "P"), uri),
        frame(namespace.member("a", "C"), uri),
        frame(namespace.member("a", "P", expires_ns=NOW), uri),
    ]
    for data in bad_frames:
        with pytest.raises(
            (
                DecodeError,
                BadSignature,
                ReplayedNonce,
                ClockSkew,
                OutOfScope,
                PermissionMissing,
                GrantExpired,
            )
        ):
            verifier.check_frame(data)
    assert verifier.rejected == {
        "decode": 2,
        "bad_signature": 2,
        "replayed_nonce": 1,
        "clock_skew": 1,
        "out_of_scope": 1,
        "permission_missing": 1,
        "grant_expired": 1,
    }


def test_rejections_are_logged_without_secrets(
    namespace: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bus")
    seed = os.urandom(32)
    member = Member(Entity(seed), namespace.member("a", "P").chain)  # a stolen chain
    verifier = fixed_clock_verifier()
    with pytest.raises(BrokenChain):
        verifier.check_frame(frame(member, namespace.uri("a")))
    with pytest.raises(DecodeError):
        verifier.check_frame(b"\xc1")
    warnings = [r for r in caplog.records if r.name == "bus.verifier"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.INFO]
    text = warnings[0].getMessage()
    assert "broken_chain" in text and namespace.uri("a") in text
    assert member.key in text
    assert "decode" in warnings[1].getMessage()
    for record in caplog.records:
        message = record.getMessage() + repr(record.args)
        assert key_to_text(seed) not in message and seed.hex() not in message


def test_logging_is_rate_limited_per_code_but_counting_is_not(
    namespace: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bus")
    verifier = fixed_clock_verifier()
    for _ in range(5):
        with pytest.raises(DecodeError):
            verifier.check_frame(b"\xc1")
    assert verifier.rejected == {"decode": 5}
    assert len([r for r in caplog.records if r.name == "bus.verifier"]) == 1


def test_the_real_clock_is_the_default(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    data = envelopes.seal(member.entity, namespace.uri("a"), [], proof=member.proof)
    Verifier().check_frame(data)
    stale = envelopes.seal(
        member.entity, namespace.uri("a"), [], proof=member.proof, ts_ns=time.time_ns() - 10**11
    )
    with pytest.raises(ClockSkew):
        Verifier().check_frame(stale)


def test_anything_a_frame_causes_is_a_typed_error(namespace: Namespace) -> None:
    """Even a fault that is no BusError (here a clock that fails) leaves check_frame typed."""

    def broken_clock() -> int:
        raise ZeroDivisionError

    verifier = Verifier(clock_ns=broken_clock)
    with pytest.raises(DecodeError, match="could not be checked") as caught:
        verifier.check_frame(frame(namespace.as_member, namespace.uri("a")))
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert verifier.rejected == {"decode": 1}


def test_a_remembered_authorization_ends_when_the_chain_expires(namespace: Namespace) -> None:
    """Steady traffic is authorized from memory (counted as verdict-cache hits), until the
    instant the chain's earliest grant expires: from then on the same sender, chain and URI
    are refused, as on the first message."""
    expires_ns = NOW + 10 * 10**9
    member = namespace.member("a", "P", expires_ns=expires_ns)
    clock = Clock(NOW)
    verifier = Verifier(clock_ns=clock, skew_s=SKEW_S)
    uri = namespace.uri("a")
    for _ in range(3):
        verifier.check_frame(frame(member, uri))
    assert (verifier.verdicts.misses, verifier.verdicts.hits) == (1, 2)
    clock.now_ns = expires_ns - 1
    verifier.check_frame(frame(member, uri, ts_ns=clock.now_ns))
    clock.now_ns = expires_ns
    with pytest.raises(GrantExpired):
        verifier.check_frame(frame(member, uri, ts_ns=clock.now_ns))


def test_a_remembered_authorization_is_for_its_uri_and_right_only(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    verifier = fixed_clock_verifier()
    verifier.check_frame(frame(member, namespace.uri("a")))
    with pytest.raises(OutOfScope):
        verifier.check_frame(frame(member, namespace.uri("b")))
    with pytest.raises(PermissionMissing):
        verifier.check_frame(frame(member, namespace.uri("a")), right="C")
    verifier.check_frame(frame(member, namespace.uri("a")))  # still allowed where it was
