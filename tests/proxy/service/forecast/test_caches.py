"""The forecast's bounded caches: least recently used first out, by entries and by bytes; results
expire after their TTL (a clock the test turns)."""

from __future__ import annotations

from chooser import ModelRef, ModelSeries, Place, SegmentRequest
from proxy.service.forecast.caches import Lru, ResultCache


def request(start: int, model: str = "m") -> SegmentRequest:
    return SegmentRequest(ModelRef(model, "1"), "thermal", Place("zone", "A"), start, start + 4, 1)


def series(values: int) -> ModelSeries:
    return ModelSeries(ModelRef("m", "1"), 0, 1, tuple([1.0] * values))


def test_lru_drops_the_least_recently_used() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)


def test_results_expire_after_their_ttl() -> None:
    now = [100.0]
    cache = ResultCache(clock=lambda: now[0])
    cache.put(request(0), series(4), ttl_s=10)
    assert cache.get(request(0)) == series(4) and cache.hits == 1
    assert cache.get(request(1)) is None
    now[0] = 109.9
    assert cache.get(request(0)) is not None
    now[0] = 110.0
    assert cache.get(request(0)) is None and len(cache) == 0 and cache.bytes == 0


def test_results_are_bounded_by_entries_and_bytes() -> None:
    cache = ResultCache(max_entries=3)
    for start in range(5):
        cache.put(request(start), series(4), ttl_s=60)
    assert len(cache) == 3 and cache.get(request(0)) is None and cache.get(request(4)) is not None
    small = ResultCache(max_bytes=1000)
    for start in range(10):
        small.put(request(start), series(20), ttl_s=60)  # 520 bytes each: one fits
    assert len(small) == 1 and small.bytes <= 1000 and small.get(request(9)) is not None
    small.put(request(99), series(1000), ttl_s=60)  # larger than the whole budget: not kept
    assert small.get(request(99)) is None and small.get(request(9)) is not None
    cache.put(request(4), series(8), ttl_s=60)  # replacing an entry keeps the byte count right
    assert cache.bytes == sum(200 + 16 * n for n in (4, 4, 8))
