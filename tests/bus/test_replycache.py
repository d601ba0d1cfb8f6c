"""The reply cache: bounded by count, by bytes in all and by bytes per sender, oldest first."""

from __future__ import annotations

import random

from bus.po import PO_REPLY, PayloadObject
from bus.replycache import ReplyCache

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def reply(size: int) -> PayloadObject:
    return PayloadObject(PO_REPLY, b"r" * size)


def test_a_reply_is_kept_and_found_by_sender_and_id() -> None:
    cache = ReplyCache()
    assert cache.put((A, "1"), reply(10))
    assert cache.get((A, "1")) == reply(10)
    assert cache.get((B, "1")) is None
    assert (A, "1") in cache and (B, "1") not in cache
    assert (len(cache), cache.nbytes, cache.sender_bytes(A)) == (1, 10, 10)


def test_the_count_bound_forgets_the_oldest() -> None:
    cache = ReplyCache(max_entries=3)
    for rid in "12345":
        cache.put((A, rid), reply(1))
    assert [rid for rid in "12345" if (A, rid) in cache] == ["3", "4", "5"]


def test_one_sender_over_its_share_loses_its_own_oldest_not_others() -> None:
    cache = ReplyCache(max_bytes=1000, max_sender_bytes=300)
    cache.put((B, "b1"), reply(100))
    for index in range(10):
        cache.put((A, str(index)), reply(100))
    assert (B, "b1") in cache  # the flood of A never pushed B out
    assert [index for index in range(10) if (A, str(index)) in cache] == [7, 8, 9]
    assert (cache.sender_bytes(A), cache.sender_bytes(B), cache.nbytes) == (300, 100, 400)


def test_the_byte_bound_forgets_the_oldest_of_anyone() -> None:
    cache = ReplyCache(max_bytes=250, max_sender_bytes=250)
    cache.put((A, "1"), reply(100))
    cache.put((B, "1"), reply(100))
    cache.put((C, "1"), reply(100))
    assert [(A, "1") in cache, (B, "1") in cache, (C, "1") in cache] == [False, True, True]
    assert cache.nbytes == 200


def test_a_reply_bigger_than_a_share_is_not_kept() -> None:
    cache = ReplyCache(max_bytes=1000, max_sender_bytes=100)
    cache.put((A, "small"), reply(50))
    assert not cache.put((A, "big"), reply(101))
    assert (A, "big") not in cache and (A, "small") in cache


def test_putting_the_same_key_again_replaces_it() -> None:
    cache = ReplyCache()
    cache.put((A, "1"), reply(10))
    cache.put((A, "1"), reply(30))
    assert (len(cache), cache.nbytes, cache.sender_bytes(A)) == (1, 30, 30)


def test_bounds_hold_under_a_random_mix_and_the_totals_stay_exact() -> None:
    rng = random.Random(11)
    cache = ReplyCache(max_entries=50, max_bytes=5_000, max_sender_bytes=2_000)
    senders = [bytes([n]) * 32 for n in range(6)]
    for step in range(3_000):
        origin = rng.choice(senders)
        cache.put((origin, str(rng.randrange(200))), reply(rng.randrange(0, 400)))
        assert len(cache) <= 50 and cache.nbytes <= 5_000
        assert all(cache.sender_bytes(s) <= 2_000 for s in senders), step
    assert cache.nbytes == sum(cache.sender_bytes(s) for s in senders)
