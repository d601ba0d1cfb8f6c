"""A subscription's queue is bounded in bytes as well as in deliveries: frames near the 16 MiB
limit cannot pile up by the thousand behind a slow consumer (what a flood of big frames would
otherwise hold). Full, it drops the newest deliveries and counts them; a lone delivery larger
than the byte bound still passes; taking deliveries frees their bytes.

Covers the byte bound of bus/transport.py's Subscription.
"""

from __future__ import annotations

from bus.transport import DEFAULT_BUFFER_BYTES, Delivery, Subscription

MIB = 1024 * 1024


def frame(size: int, tag: int = 0) -> Delivery:
    return Delivery(f"ns/t/{tag}", bytes([tag]) * size)


def test_the_default_holds_at_most_a_few_frames_near_the_limit() -> None:
    subscription = Subscription("ns/*")
    for tag in range(20):
        subscription.offer(frame(15 * MIB, tag))
    assert subscription.queued_bytes <= DEFAULT_BUFFER_BYTES
    assert len(subscription.drain_nowait()) == DEFAULT_BUFFER_BYTES // (15 * MIB)
    assert subscription.dropped == 20 - DEFAULT_BUFFER_BYTES // (15 * MIB)


async def test_full_by_bytes_it_drops_the_newest_and_frees_what_is_taken() -> None:
    subscription = Subscription("ns/*", buffer=1000, buffer_bytes=10 * MIB)
    for tag in range(4):
        subscription.offer(frame(3 * MIB, tag))
    assert (subscription.queued_bytes, subscription.dropped) == (9 * MIB, 1)
    subscription.offer(frame(MIB, 9))  # still room for a small one
    assert subscription.queued_bytes == 10 * MIB

    first = await subscription.__anext__()
    assert first.frame[:1] == b"\x00" and subscription.queued_bytes == 7 * MIB
    subscription.offer(frame(3 * MIB, 5))
    taken = [d.frame[0] for d in subscription.drain_nowait()]
    assert taken == [1, 2, 9, 5]
    assert (subscription.queued_bytes, subscription.dropped) == (0, 1)


def test_a_lone_frame_over_the_bound_passes_when_nothing_is_queued() -> None:
    subscription = Subscription("ns/*", buffer_bytes=MIB)
    subscription.offer(frame(2 * MIB, 1))
    subscription.offer(frame(10, 2))
    assert [d.frame[0] for d in subscription.drain_nowait()] == [1]
    assert subscription.dropped == 1


def test_the_count_bound_still_holds_for_small_frames() -> None:
    subscription = Subscription("ns/*", buffer=3)
    for tag in range(5):
        subscription.offer(frame(10, tag))
    assert len(subscription.drain_nowait()) == 3 and subscription.dropped == 2
