"""The bus client: publish, subscribe, persist and query — over memory, and over the real
transports where the broker's behaviour matters (delivery, retained messages).

Covers bus/client.py and bus/message.py (verified messages, rejections, streams).
"""

from __future__ import annotations

import pytest

from bus import (
    PO_JSON,
    BadSignature,
    BusClient,
    Message,
    OutOfScope,
    PayloadObject,
    PermissionMissing,
    Rejected,
    TransportClosed,
    VerificationError,
    Verifier,
    consume_right,
)
from bus import envelope as envelopes
from tests.bus.helpers import (
    TRANSPORTS,
    Namespace,
    RecordingTransport,
    bus_url_for,
    connect,
    memory_url,
    next_message,
)
from transports import open_transport


@pytest.fixture(params=TRANSPORTS)
def bus_url(request: pytest.FixtureRequest) -> str:
    return bus_url_for(request, request.param)


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


def test_consume_right() -> None:
    assert consume_right("ns/a/b") == "C"
    assert consume_right("ns/+/b") == "C+"
    assert consume_right("ns/*/b") == "C*"
    assert consume_right("ns/+/*") == "C*"


async def test_publish_and_subscribe_deliver_verified_messages(
    bus_url: str, namespace: Namespace
) -> None:
    publisher = namespace.member("sensors/*", "P")
    subscriber = namespace.member("sensors/*", "C*")
    async with (
        connect(bus_url, publisher) as pub,
        connect(bus_url, subscriber) as sub,
        sub.subscribe(namespace.uri("sensors", "*")) as stream,
    ):
        pos = (PayloadObject.msgpack({"temp": 21.5}), PayloadObject.text("celsius"))
        await pub.publish(namespace.uri("sensors", "zone-a", "temp"), pos)
        message = await next_message(stream)
    assert isinstance(message, Message)
    assert message.uri == namespace.uri("sensors", "zone-a", "temp")
    assert message.pos == pos
    assert message.origin == publisher.entity.public_key
    assert message.origin_text == publisher.key
    assert message.persist is False
    assert message.value() == {"temp": 21.5}
    assert message.value("64.0.1.0") == "celsius"
    assert message.value(PO_JSON) is None


async def test_messages_arrive_in_order_and_only_on_matching_patterns(
    bus_url: str, namespace: Namespace
) -> None:
    owner = namespace.as_member
    async with (
        connect(bus_url, owner) as client,
        client.subscribe(namespace.uri("a", "+")) as narrow,
        client.subscribe(namespace.uri("*")) as wide,
    ):
        for index in range(5):
            await client.publish(namespace.uri("a", str(index)), PayloadObject.msgpack(index))
        await client.publish(namespace.uri("b", "0"), PayloadObject.msgpack("b"))
        assert [(await next_message(narrow)).value() for _ in range(5)] == list(range(5))
        wide_values = [(await next_message(wide)).value() for _ in range(6)]
        assert wide_values == [0, 1, 2, 3, 4, "b"]


async def test_overlapping_subscriptions_of_one_client_each_get_the_message(
    bus_url: str, namespace: Namespace
) -> None:
    """One frame delivered to two subscriptions of the same client is not a replay."""
    publisher = namespace.member("a/*", "P")
    async with (
        connect(bus_url, publisher) as pub,
        connect(bus_url, namespace.as_member) as sub,
        sub.subscribe(namespace.uri("*")) as first,
        sub.subscribe(namespace.uri("a", "b")) as second,
    ):
        await pub.publish(namespace.uri("a", "b"), PayloadObject.text("once"))
        assert (await next_message(first)).value() == "once"
        assert (await next_message(second)).value() == "once"
    assert not sub.verifier.rejected


async def test_forged_frames_never_reach_the_subscriber(bus_url: str, namespace: Namespace) -> None:
    publisher = namespace.member("a", "P")
    uri = namespace.uri("a")
    async with (
        connect(bus_url, publisher) as pub,
        connect(bus_url, namespace.as_member) as sub,
        sub.subscribe(uri) as stream,
        sub.subscribe(uri, include_rejected=True) as inspecting,
    ):
        forged = bytearray(pub.seal(uri, [PayloadObject.text("forged")]))
        forged[-1] ^= 0x01
        await pub.transport.publish(uri, bytes(forged))
        await pub.publish(uri, PayloadObject.text("genuine"))
        assert (await next_message(stream)).value() == "genuine"
        rejected = await next_message(inspecting)
        assert isinstance(rejected, Rejected)
        assert isinstance(rejected.error, BadSignature)
        assert rejected.topic == uri
        assert (await next_message(inspecting)).value() == "genuine"
    assert sub.verifier.rejected == {"bad_signature": 2}


async def test_a_frame_on_another_topic_than_it_was_signed_for_is_rejected(
    namespace: Namespace,
) -> None:
    url = memory_url()
    async with (
        connect(url, namespace.as_member) as client,
        client.subscribe(namespace.uri("*"), include_rejected=True) as stream,
    ):
        frame = client.seal(namespace.uri("a"), [PayloadObject.text("x")])
        await client.transport.publish(namespace.uri("b"), frame)
        rejected = await next_message(stream)
    assert isinstance(rejected, Rejected)
    assert type(rejected.error) is VerificationError
    assert rejected.envelope is not None and rejected.envelope.uri == namespace.uri("a")


async def test_subscription_scope_is_checked_before_subscribing(namespace: Namespace) -> None:
    member = namespace.member("a/+", "C+")
    transport = RecordingTransport(open_transport(memory_url()))
    async with BusClient(transport, member.entity, proofs=member.proofs) as client:
        with pytest.raises(OutOfScope):
            async with client.subscribe(namespace.uri("b", "+")):
                pass
        with pytest.raises(OutOfScope):
            async with client.subscribe(namespace.uri("a", "+", "+")):
                pass
        for wider in (namespace.uri("a", "*"), namespace.uri("*")):  # need C*
            with pytest.raises(PermissionMissing):
                async with client.subscribe(wider):
                    pass
        assert transport.subscribed == []
        async with client.subscribe(namespace.uri("a", "+")):
            pass
        async with client.subscribe(namespace.uri("a", "b")):
            pass
        assert transport.subscribed == [namespace.uri("a", "+"), namespace.uri("a", "b")]


async def test_without_a_fitting_chain_the_error_lists_every_reason(namespace: Namespace) -> None:
    member = namespace.member("a", "P")
    second = namespace.grant(member.entity, "b/*", "C")
    client = BusClient(
        open_transport(memory_url()), member.entity, proofs=[member.chain, (second,)]
    )
    async with client:
        with pytest.raises(PermissionMissing) as caught:
            async with client.subscribe(namespace.uri("c", "*")):
                pass
    assert caught.value.details["needed"] == "C*"
    assert len(caught.value.details["reasons"]) == 2
    assert member.key in caught.value.message  # tells the user what to ask for


@pytest.mark.parametrize(
    ("perms", "uri", "error"), [("C*", ("a", "b"), PermissionMissing), ("P", ("b",), OutOfScope)]
)
async def test_publishing_needs_a_grant_and_fails_before_sending(
    namespace: Namespace, perms: str, uri: tuple[str, ...], error: type[Exception]
) -> None:
    member = namespace.member("a/*", perms)
    transport = RecordingTransport(open_transport(memory_url()))
    async with BusClient(transport, member.entity, proofs=member.proofs) as client:
        with pytest.raises(error):
            await client.publish(namespace.uri(*uri), PayloadObject.text("x"))
    assert transport.published == []


async def test_errors_in_the_client_block_propagate_unwrapped(namespace: Namespace) -> None:
    """Not as an ExceptionGroup from the client's task group."""
    member = namespace.member("a", "C")
    with pytest.raises(PermissionMissing):
        async with connect(memory_url(), member) as client:
            await client.publish(namespace.uri("a"), PayloadObject.text("x"))


async def test_query_returns_verified_persisted_messages(
    bus_url: str, namespace: Namespace
) -> None:
    writer = namespace.member("data/*", "P")
    reader = namespace.member("data/*", "C*")
    async with connect(bus_url, writer) as pub, connect(bus_url, reader) as sub:
        for name in ("x", "y", "z"):
            await pub.publish(
                namespace.uri("data", name), PayloadObject.msgpack(name), persist=True
            )
        await pub.publish(namespace.uri("data", "x"), PayloadObject.msgpack("x2"), persist=True)
        await pub.publish(namespace.uri("data", "live"), PayloadObject.msgpack("live"))
        found = await sub.query(namespace.uri("data", "*"))
        assert {m.uri: m.value() for m in found} == {
            namespace.uri("data", "x"): "x2",  # the latest per URI
            namespace.uri("data", "y"): "y",
            namespace.uri("data", "z"): "z",
        }
        assert all(m.persist and m.origin == writer.entity.public_key for m in found)

        await pub.unpersist(namespace.uri("data", "y"))
        found = await sub.query(namespace.uri("data", "*"))
        assert sorted(m.uri for m in found) == [namespace.uri("data", n) for n in ("x", "z")]
        assert await sub.query(namespace.uri("data", "y")) == []
        exact = await sub.query(namespace.uri("data", "z"))
        assert [m.value() for m in exact] == ["z"]


async def test_query_needs_a_consume_right(namespace: Namespace) -> None:
    member = namespace.member("data/*", "P")
    transport = RecordingTransport(open_transport(memory_url()))
    async with BusClient(transport, member.entity, proofs=member.proofs) as client:
        with pytest.raises(PermissionMissing):
            await client.query(namespace.uri("data", "*"))
    assert transport.queried == []


async def test_query_leaves_out_frames_that_fail_verification(namespace: Namespace) -> None:
    url = memory_url()
    writer = namespace.member("data/*", "P")
    async with connect(url, writer) as pub, connect(url, namespace.as_member) as reader:
        good_uri, bad_uri = namespace.uri("data", "good"), namespace.uri("data", "bad")
        await pub.publish(good_uri, PayloadObject.text("good"), persist=True)
        forged = bytearray(pub.seal(bad_uri, [PayloadObject.text("bad")], persist=True))
        forged[-1] ^= 0x01
        await pub.transport.publish(bad_uri, bytes(forged), persist=True)
        assert [m.value() for m in await reader.query(namespace.uri("data", "*"))] == ["good"]
        both = await reader.query(namespace.uri("data", "*"), include_rejected=True)
    kinds = {item.uri if isinstance(item, Message) else item.topic: type(item) for item in both}
    assert kinds == {good_uri: Message, bad_uri: Rejected}
    assert reader.verifier.rejected == {"bad_signature": 2}


async def test_subscriptions_do_not_replay_persisted_messages(
    bus_url: str, namespace: Namespace
) -> None:
    owner = namespace.as_member
    async with connect(bus_url, owner) as client:
        await client.publish(namespace.uri("kept"), PayloadObject.text("old"), persist=True)
        async with client.subscribe(namespace.uri("*")) as stream:
            await client.publish(namespace.uri("kept"), PayloadObject.text("new"), persist=True)
            message = await next_message(stream)
    assert (message.value(), message.persist) == ("new", True)


async def test_aliases_work_end_to_end(namespace: Namespace) -> None:
    url = memory_url()
    member = namespace.member("a/*", "P")
    aliases = {"bldg": namespace.key}
    publisher = connect(url, member, verifier=Verifier(aliases=aliases))
    reader = connect(url, namespace.as_member, verifier=Verifier(aliases=aliases))
    async with publisher as pub, reader as sub, sub.subscribe("bldg/a/*") as stream:
        await pub.publish("bldg/a/b", PayloadObject.text("via alias"))
        message = await next_message(stream)
    assert (message.uri, message.value()) == ("bldg/a/b", "via alias")


async def test_a_closed_client_cannot_publish(namespace: Namespace) -> None:
    client = connect(memory_url(), namespace.as_member)
    async with client:
        await client.publish(namespace.uri("a"), PayloadObject.text("x"))
    with pytest.raises(TransportClosed):
        await client.publish(namespace.uri("a"), PayloadObject.text("x"))


async def test_closing_the_client_ends_its_streams(namespace: Namespace) -> None:
    client = connect(memory_url(), namespace.as_member)
    async with client, client.subscribe(namespace.uri("*")) as stream:
        await client.transport.close()
        assert [item async for item in stream] == []


async def test_tombstones_are_signed_and_need_publish_rights(namespace: Namespace) -> None:
    url = memory_url()
    writer = namespace.member("data/*", "P")
    vandal = namespace.member("other/*", "P")
    async with connect(url, writer) as pub, connect(url, vandal) as bad:
        await pub.publish(namespace.uri("data", "x"), PayloadObject.text("x"), persist=True)
        with pytest.raises(OutOfScope):
            await bad.unpersist(namespace.uri("data", "x"))
        await pub.unpersist(namespace.uri("data", "x"))
        tombstone = (await pub.transport.query(namespace.uri("data", "x")))[0].frame
    envelope = envelopes.decode(tombstone)
    assert envelope.is_tombstone and envelope.origin == writer.entity.public_key
