"""Shared subscriptions: each frame reaches one member of a share group, on memory and on MQTT
(a real Mosquitto, ``$share/<group>/<filter>``); ZeroMQ refuses them with ``Unsupported``.

Non-delivery is asserted with a marker on a plain subscription of each member's connection: a
connection's frames arrive in publish order, so once a member has the marker it has every shared
frame the broker handed it before.

Covers transports/mqtt/table.py (the filter table: a shared and a plain subscription to one
filter are two MQTT subscriptions, each subscribed again after a reconnect) and the share group
parts of transports/memory.py, transports/zeromq/client.py and bus/transport.py.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import anyio
import pytest

from bus.errors import InvalidUri, Unsupported
from bus.transport import Subscription, Transport
from tests.fixtures.mosquitto import MosquittoBroker
from tests.transports.helpers import WAIT_S, connected, receive
from transports.mqtt import MqttTransport

FRAMES = 30


@pytest.fixture(params=["memory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def sharing_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://shared-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("mosquitto_url"))


async def until_marker(marks: Subscription, shared: Subscription) -> list[bytes]:
    """The shared frames a member got before the marker reached its plain subscription."""
    await receive(marks, 1)
    return [delivery.frame for delivery in shared.drain_nowait()]


async def test_each_frame_reaches_one_member_of_the_group(sharing_url: str, ns: str) -> None:
    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(connected(sharing_url)) for _ in range(3)]
        publisher = await stack.enter_async_context(connected(sharing_url))
        shared = [await m.subscribe(f"{ns}/svc/slot/+", share_group="svc-group") for m in members]
        plain = await publisher.subscribe(f"{ns}/svc/slot/+")  # outside the group: every frame
        marks = [await m.subscribe(f"{ns}/marker") for m in members]
        sent = [f"frame-{index:03d}".encode() for index in range(FRAMES)]
        for index, frame in enumerate(sent):
            await publisher.publish(f"{ns}/svc/slot/{'ab'[index % 2]}", frame)
        await publisher.publish(f"{ns}/marker", b"end")

        got = [await until_marker(m, s) for m, s in zip(marks, shared, strict=True)]
        assert sorted(frame for member in got for frame in member) == sent  # once each
        assert all(got), f"a member got nothing: {[len(g) for g in got]}"
        assert [d.frame for d in await receive(plain, FRAMES)] == sent


async def test_groups_are_independent_and_a_closed_member_leaves(sharing_url: str, ns: str) -> None:
    async with connected(sharing_url) as first, connected(sharing_url) as second:
        one = await first.subscribe(f"{ns}/slot", share_group="one")
        two = await second.subscribe(f"{ns}/slot", share_group="two")
        leaving = await second.subscribe(f"{ns}/slot", share_group="one")
        await leaving.close()
        for index in range(4):
            await first.publish(f"{ns}/slot", str(index).encode())
        expected = [b"0", b"1", b"2", b"3"]
        assert [d.frame for d in await receive(one, 4)] == expected  # the only member left
        assert [d.frame for d in await receive(two, 4)] == expected


@pytest.mark.parametrize("group", ["", "a/b", "a+", "#", "x" * 65, "$share"])
async def test_a_bad_group_name_is_refused(sharing_url: str, ns: str, group: str) -> None:
    async with connected(sharing_url) as transport:
        with pytest.raises(InvalidUri):
            await transport.subscribe(f"{ns}/slot", share_group=group)


async def test_zeromq_refuses_a_share_group(zmq_bus_url: str, ns: str) -> None:
    async with connected(zmq_bus_url) as transport:
        with pytest.raises(Unsupported, match="one machine's bus") as raised:
            await transport.subscribe(f"{ns}/slot", share_group="group")
        assert raised.value.details["share_group"] == "group"
        subscription = await transport.subscribe(f"{ns}/slot")  # still usable
        await transport.publish(f"{ns}/slot", b"x")
        assert (await receive(subscription, 1))[0].frame == b"x"


@pytest.mark.mqtt
async def test_a_shared_subscription_is_subscribed_again_after_a_broker_restart(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str
) -> None:
    member = MqttTransport(mosquitto_url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    publisher: Transport = MqttTransport(mosquitto_url)
    await member.connect()
    try:
        shared = await member.subscribe(f"{ns}/slot", share_group="g")
        plain = await member.subscribe(f"{ns}/slot")
        assert len(member._filters) == 2  # two MQTT subscriptions of one filter
        await anyio.to_thread.run_sync(mosquitto.restart)
        await publisher.connect()
        heard = {"shared": False, "plain": False}
        with anyio.fail_after(WAIT_S + 5):  # until the member has subscribed both again
            while not all(heard.values()):
                await publisher.publish(f"{ns}/slot", b"ping")
                await anyio.sleep(0.1)
                heard["shared"] |= bool(shared.drain_nowait())
                heard["plain"] |= bool(plain.drain_nowait())
    finally:
        await member.close()
        await publisher.close()
