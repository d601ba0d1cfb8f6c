"""The one contract every transport keeps: memory, ZeroMQ (through its forwarder) and MQTT.

Every test runs once per transport, on a fresh topic namespace (brokers may be shared between
tests). Non-delivery is asserted with a sentinel: frames on one connection arrive in publish order,
so once the sentinel is in, anything that should have come before it has.

Covers transports/factory.py, transports/memory.py and the client transports
(transports/zeromq/client.py, transports/mqtt/client.py) through that contract.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from bus.errors import FrameTooLarge, InvalidUri, TransportClosed
from bus.transport import DEFAULT_MAX_FRAME_BYTES, Delivery, Subscription
from tests.transports.helpers import WAIT_S, connected, receive
from transports import open_transport


@pytest.fixture(params=["memory", "zeromq", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def transport_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://contract-{uuid.uuid4().hex}"
    if request.param == "zeromq":
        return str(request.getfixturevalue("zmq_bus_url"))
    return str(request.getfixturevalue("mosquitto_url"))


async def receive_until(subscription: Subscription, sentinel: bytes) -> list[str]:
    """Topics received up to and including the frame ``sentinel``."""
    topics: list[str] = []
    with anyio.fail_after(WAIT_S):
        async for delivery in subscription:
            topics.append(delivery.topic)
            if delivery.frame == sentinel:
                return topics
    raise AssertionError(f"the subscription ended before {sentinel!r}; got {topics}")


async def test_publish_subscribe_round_trip(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/s.thermal/zone-a/signal/out")
        await publisher.publish(f"{ns}/s.thermal/zone-a/signal/out", b"21.5")

        [delivery] = await receive(subscription, 1)

    assert delivery == Delivery(f"{ns}/s.thermal/zone-a/signal/out", b"21.5")


async def test_one_transport_hears_itself(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as transport:
        subscription = await transport.subscribe(f"{ns}/loop")
        await transport.publish(f"{ns}/loop", b"echo")

        [delivery] = await receive(subscription, 1)

    assert delivery.frame == b"echo"


async def test_plus_matches_exactly_one_segment(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/room/+/temp")
        for topic in ["room/1/temp", "room/temp", "room/1/2/temp", "room/2/temp/x", "room/3/temp"]:
            await publisher.publish(f"{ns}/{topic}", topic.encode())

        topics = await receive_until(subscription, b"room/3/temp")

    assert topics == [f"{ns}/room/1/temp", f"{ns}/room/3/temp"]


async def test_star_matches_zero_or_more_segments_anywhere(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/a/*/b")
        for topic in ["a/b", "a/bc", "a/x/y/b", "a/b/c", "ab/b", "a/x/bb", "a/z/b"]:
            await publisher.publish(f"{ns}/{topic}", topic.encode())

        topics = await receive_until(subscription, b"a/z/b")

    assert topics == [f"{ns}/a/b", f"{ns}/a/x/y/b", f"{ns}/a/z/b"]


async def test_trailing_star_matches_the_prefix_itself_and_below(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/dev/*")
        for topic in ["dev", "device/1", "dev/1", "dev/1/!meta/lastalive", "dev/end"]:
            await publisher.publish(f"{ns}/{topic}", topic.encode())

        topics = await receive_until(subscription, b"dev/end")

    assert topics == [f"{ns}/dev", f"{ns}/dev/1", f"{ns}/dev/1/!meta/lastalive", f"{ns}/dev/end"]


async def test_a_topic_is_not_delivered_to_a_longer_prefix_collision(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        exact = await subscriber.subscribe(f"{ns}/a")
        longer = await subscriber.subscribe(f"{ns}/ab")
        await publisher.publish(f"{ns}/ab", b"for ab")
        await publisher.publish(f"{ns}/abc", b"for nobody")
        await publisher.publish(f"{ns}/a/b", b"for nobody either")
        await publisher.publish(f"{ns}/a", b"for a")

        exact_topics = await receive_until(exact, b"for a")
        longer_topics = await receive_until(longer, b"for ab")

    assert exact_topics == [f"{ns}/a"]
    assert longer_topics == [f"{ns}/ab"]


async def test_persisted_frames_are_queried_with_wildcards_sorted(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as reader:
        await publisher.publish(f"{ns}/b/!meta/lastalive", b"b", persist=True)
        await publisher.publish(f"{ns}/a/!meta/lastalive", b"a", persist=True)
        await publisher.publish(f"{ns}/a/signal/out", b"not meta", persist=True)
        await publisher.publish(f"{ns}/a/!meta/live", b"live only")

        metas = await reader.query(f"{ns}/+/!meta/lastalive")
        everything = await reader.query(f"{ns}/*")
        exact = await reader.query(f"{ns}/a/signal/out")

    assert metas == [
        Delivery(f"{ns}/a/!meta/lastalive", b"a"),
        Delivery(f"{ns}/b/!meta/lastalive", b"b"),
    ]
    assert [d.topic for d in everything] == [
        f"{ns}/a/!meta/lastalive",
        f"{ns}/a/signal/out",
        f"{ns}/b/!meta/lastalive",
    ]
    assert exact == [Delivery(f"{ns}/a/signal/out", b"not meta")]


async def test_the_latest_persisted_frame_wins_and_an_empty_one_deletes(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as transport:
        await transport.publish(f"{ns}/state", b"v1", persist=True)
        await transport.publish(f"{ns}/state", b"v2", persist=True)
        await transport.publish(f"{ns}/other", b"stays", persist=True)
        latest = await transport.query(f"{ns}/state")

        await transport.publish(f"{ns}/state", b"", persist=True)
        after_delete = await transport.query(f"{ns}/*")

    assert latest == [Delivery(f"{ns}/state", b"v2")]
    assert after_delete == [Delivery(f"{ns}/other", b"stays")]


async def test_query_of_nothing_is_empty(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as transport:
        assert await transport.query(f"{ns}/nothing/*") == []


async def test_persisted_frames_also_reach_live_subscribers(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/kept")
        await publisher.publish(f"{ns}/kept", b"kept and live", persist=True)

        [delivery] = await receive(subscription, 1)

    assert delivery == Delivery(f"{ns}/kept", b"kept and live")


async def test_subscribe_does_not_deliver_persisted_frames(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        await publisher.publish(f"{ns}/kept", b"old", persist=True)
        subscription = await subscriber.subscribe(f"{ns}/kept")
        await publisher.publish(f"{ns}/kept", b"new")

        [delivery] = await receive(subscription, 1)

    assert delivery.frame == b"new"


async def test_two_subscriptions_on_one_pattern_are_independent(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        first = await subscriber.subscribe(f"{ns}/shared/+")
        second = await subscriber.subscribe(f"{ns}/shared/+")
        await publisher.publish(f"{ns}/shared/1", b"both")
        assert [d.frame for d in await receive(first, 1)] == [b"both"]
        assert [d.frame for d in await receive(second, 1)] == [b"both"]

        await first.close()
        await publisher.publish(f"{ns}/shared/2", b"second only")

        assert [d.frame for d in await receive(second, 1)] == [b"second only"]
        assert first.is_closed
        assert first.drain_nowait() == []


async def test_closing_a_subscription_stops_its_delivery_only(transport_url: str, ns: str) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        closed = await subscriber.subscribe(f"{ns}/x")
        kept = await subscriber.subscribe(f"{ns}/y")
        await closed.close()
        await publisher.publish(f"{ns}/x", b"to nobody")
        await publisher.publish(f"{ns}/y", b"to kept")

        [delivery] = await receive(kept, 1)

    assert delivery.frame == b"to kept"
    assert await receive(closed, 1) == []


async def test_close_ends_open_subscriptions_and_is_idempotent(transport_url: str, ns: str) -> None:
    transport = open_transport(transport_url)
    await transport.connect()
    subscription = await transport.subscribe(f"{ns}/ending")
    received: list[Delivery] = []
    first_arrived = anyio.Event()

    async def consume() -> None:
        async for delivery in subscription:
            received.append(delivery)
            first_arrived.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume)
            await transport.publish(f"{ns}/ending", b"before close")
            await first_arrived.wait()
            await transport.close()  # consume() must end, or the task group never exits
        await transport.close()

    assert subscription.is_closed
    assert [d.frame for d in received] == [b"before close"]


async def test_use_after_close_raises_transport_closed(transport_url: str, ns: str) -> None:
    transport = open_transport(transport_url)
    await transport.connect()
    await transport.close()

    with pytest.raises(TransportClosed):
        await transport.publish(f"{ns}/late", b"x")
    with pytest.raises(TransportClosed):
        await transport.publish(f"{ns}/late", b"x", persist=True)
    with pytest.raises(TransportClosed):
        await transport.subscribe(f"{ns}/late")
    with pytest.raises(TransportClosed):
        await transport.query(f"{ns}/late")
    with pytest.raises(TransportClosed):
        await transport.connect()


async def test_a_full_buffer_drops_newest_without_stalling_others(
    transport_url: str, ns: str
) -> None:
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        slow = await subscriber.subscribe(f"{ns}/slow", buffer=10)
        fast = await subscriber.subscribe(f"{ns}/fast")
        for index in range(50):
            await publisher.publish(f"{ns}/slow", b"%d" % index)
        for index in range(50):
            await publisher.publish(f"{ns}/fast", b"%d" % index)

        fast_frames = [d.frame for d in await receive(fast, 50)]

        assert fast_frames == [b"%d" % index for index in range(50)]
        assert slow.dropped == 40
        assert [d.frame for d in slow.drain_nowait()] == [b"%d" % index for index in range(10)]


@pytest.mark.parametrize(
    "topic",
    ["", "ns/+/wild", "ns/*", "ns//empty", "ns/white space", "ns/!a/!b", "!meta/ns", "ns/ü"],
)
async def test_invalid_topic_on_publish_raises_invalid_uri(transport_url: str, topic: str) -> None:
    async with connected(transport_url) as transport:
        with pytest.raises(InvalidUri):
            await transport.publish(topic, b"x")
        with pytest.raises(InvalidUri):
            await transport.publish(topic, b"x", persist=True)


@pytest.mark.parametrize("pattern", ["", "+/x", "ns/*/a/*", "ns//x", "ns/a b"])
async def test_invalid_pattern_raises_invalid_uri(transport_url: str, pattern: str) -> None:
    async with connected(transport_url) as transport:
        with pytest.raises(InvalidUri):
            await transport.subscribe(pattern)
        with pytest.raises(InvalidUri):
            await transport.query(pattern)


async def test_large_frames_pass_live_and_persisted(transport_url: str, ns: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/big")
        await publisher.publish(f"{ns}/big", big)
        [delivery] = await receive(subscription, 1)
        await publisher.publish(f"{ns}/big-kept", big, persist=True)
        [kept] = await subscriber.query(f"{ns}/big-kept")

    assert delivery.frame == big
    assert kept.frame == big


async def test_a_burst_arrives_complete_and_in_order(transport_url: str, ns: str) -> None:
    count = 5_000
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/burst/+")
        for index in range(count):
            await publisher.publish(f"{ns}/burst/{index % 7}", b"%d" % index)

        frames = [d.frame for d in await receive(subscription, count)]

    assert frames == [b"%d" % index for index in range(count)]
    assert subscription.dropped == 0


async def test_a_frame_over_the_limit_is_refused_before_sending_and_the_transport_stays_usable(
    transport_url: str, ns: str
) -> None:
    """On MQTT the broker would drop the connection (and paho re-send the frame after every
    reconnect); on ZeroMQ the forwarder would drop the frame: refused here, nothing is sent."""
    at_limit = b"l" * DEFAULT_MAX_FRAME_BYTES
    over = b"o" * (DEFAULT_MAX_FRAME_BYTES + 1)
    async with connected(transport_url) as publisher, connected(transport_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/big/+")
        for persist in (False, True):
            with pytest.raises(FrameTooLarge) as refused:
                await publisher.publish(f"{ns}/big/over", over, persist=persist)
            assert refused.value.code == "frame_too_large"
            assert refused.value.details == {"size": len(over), "limit": DEFAULT_MAX_FRAME_BYTES}
        await publisher.publish(f"{ns}/big/at-limit", at_limit)
        await publisher.publish(f"{ns}/big/end", b"end")

        received = await receive(subscription, 2)
        kept = await subscriber.query(f"{ns}/big/+")

    assert [(d.topic, len(d.frame)) for d in received] == [
        (f"{ns}/big/at-limit", DEFAULT_MAX_FRAME_BYTES),
        (f"{ns}/big/end", 3),
    ]
    assert kept == []
