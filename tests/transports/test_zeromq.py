"""What only the ZeroMQ transport and its forwarder promise (the shared contract is elsewhere).

Raw zmq sockets here play hostile or foreign peers; the module under test is the only place that
imports zmq in the packages.

Covers transports/zeromq/sockets.py, transports/zeromq/forwarder.py,
transports/zeromq/client.py and transports/zeromq/embed.py.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bus.errors import LimitExceeded, TransportError
from bus.transport import Delivery, Will
from tests.fixtures.ports import free_port_block
from tests.fixtures.zmqbus import running_forwarder
from tests.transports.helpers import WAIT_S, connected, receive
from transports.zeromq import DEFAULT_HWM, Forwarder, ZmqTransport

PUBLISHER_SCRIPT = Path(__file__).with_name("publisher_process.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def raw_socket(kind: int, endpoint: str) -> AsyncIterator[zmq.asyncio.Socket]:
    context = zmq.asyncio.Context()
    sock = context.socket(kind)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        context.destroy(linger=0)


def port_of(url: str, offset: int) -> str:
    host, port = url.removeprefix("zmq://").rsplit(":", 1)
    return f"tcp://{host}:{int(port) + offset}"


async def test_a_subscriber_here_hears_a_publisher_in_another_process(
    zmq_bus_url: str, ns: str
) -> None:
    count = 500
    async with connected(zmq_bus_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/cross")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
        with anyio.fail_after(60):
            await anyio.run_process(
                [sys.executable, str(PUBLISHER_SCRIPT), zmq_bus_url, f"{ns}/cross", str(count)],
                cwd=REPO_ROOT,
                env=env,
            )

        frames = [d.frame for d in await receive(subscription, count)]
        kept = await subscriber.query(f"{ns}/cross/+")

    assert frames == [b"%d" % index for index in range(count)]
    assert kept == [Delivery(f"{ns}/cross/kept", b"kept")]


HOSTILE_REQUESTS = [
    [b""],
    [b"\xff\xfe garbage"],
    [b"ping", b"extra"],
    [b"PING"],
    [b"shutdown"],
    [b"persist"],
    [b"persist", b"ns/only-a-topic"],
    [b"persist", b"\xff\xfe", b"frame"],
    [b"persist", b"ns/+/wild", b"frame"],
    [b"persist", b"", b"frame"],
    [b"persist", b"ns/too-big", b"x" * 4096],
    [b"query"],
    [b"query", b"ns/*/a/*"],
    [b"query", b"\xff"],
    [b"query", b"ns/x", b"extra"],
    [b"", b"", b"", b""],
]


async def test_hostile_control_requests_get_errors_and_the_forwarder_keeps_serving(
    ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transports.zeromq")
    async with running_forwarder(max_frame_bytes=1024) as forwarder:
        async with raw_socket(zmq.DEALER, port_of(forwarder.url, 2)) as dealer:
            replies = []
            with anyio.fail_after(WAIT_S):
                for request in HOSTILE_REQUESTS:
                    await dealer.send_multipart(request)
                    replies.append(await dealer.recv_multipart())

        async with connected(forwarder.url) as transport:
            await transport.publish(f"{ns}/fine", b"still here", persist=True)
            kept = await transport.query(f"{ns}/*")

    assert all(reply[0] == b"error" and len(reply) == 2 for reply in replies), replies
    assert b"limit" in replies[HOSTILE_REQUESTS.index([b"persist", b"ns/too-big", b"x" * 4096])][1]
    assert kept == [Delivery(f"{ns}/fine", b"still here")]
    assert "refused a control request" in caplog.text


async def test_a_peer_over_the_hard_size_limit_is_disconnected_not_buffered(ns: str) -> None:
    async with running_forwarder(max_frame_bytes=1024) as forwarder:
        async with raw_socket(zmq.DEALER, port_of(forwarder.url, 2)) as dealer:
            monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            with anyio.fail_after(WAIT_S):
                await dealer.send_multipart([b"ping"])
                assert await dealer.recv_multipart() == [b"ok"]
                huge = b"x" * (2 << 20)  # over max_frame_bytes + 1 MiB: ZeroMQ's MAXMSGSIZE
                await dealer.send_multipart([b"persist", f"{ns}/huge".encode(), huge])
                event = parse_monitor_message(await monitor.recv_multipart())

        async with connected(forwarder.url) as transport:
            await transport.publish(f"{ns}/fine", b"still here", persist=True)
            kept = await transport.query(f"{ns}/*")

    assert event["event"] == zmq.EVENT_DISCONNECTED
    assert kept == [Delivery(f"{ns}/fine", b"still here")]


async def test_malformed_and_oversize_data_is_dropped_and_delivery_goes_on(
    ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transports.zeromq")
    async with (
        running_forwarder(max_frame_bytes=1024) as forwarder,
        connected(forwarder.url) as subscriber,
        raw_socket(zmq.XPUB, port_of(forwarder.url, 0)) as raw_publisher,
    ):
        subscription = await subscriber.subscribe(f"{ns}/*")
        with anyio.fail_after(WAIT_S):
            assert await raw_publisher.recv() == b"\x01"  # the forwarder subscribed to all
        for message in [
            [f"{ns}/one-part".encode()],
            [f"{ns}/three".encode(), b"parts", b"here"],
            [f"{ns}/\xff\xfe".encode("latin-1"), b"not UTF-8"],
            [f"{ns}/not a uri".encode(), b"bad segment"],
            [f"{ns}/too-big".encode(), b"x" * 4096],
            [f"{ns}/fine".encode(), b"sentinel"],
        ]:
            await raw_publisher.send_multipart(message)

        [delivery] = await receive(subscription, 1)

    assert delivery == Delivery(f"{ns}/fine", b"sentinel")
    assert "dropped a frame of 4096 bytes" in caplog.text
    assert forwarder.dropped == {"parts": 2, "oversized": 1}


async def test_an_oversize_persist_is_refused_with_transport_error(ns: str) -> None:
    async with (
        running_forwarder(max_frame_bytes=1024) as forwarder,
        connected(forwarder.url) as transport,
    ):
        with pytest.raises(TransportError, match="limit"):
            await transport.publish(f"{ns}/big", b"x" * 2048, persist=True)
        await transport.publish(f"{ns}/small", b"x" * 1024, persist=True)

        assert [d.topic for d in await transport.query(f"{ns}/*")] == [f"{ns}/small"]


async def test_connect_without_a_forwarder_fails_with_an_actionable_error() -> None:
    url = f"zmq://127.0.0.1:{free_port_block(3)}"
    transport = ZmqTransport(url, connect_timeout_s=0.3)

    with anyio.fail_after(WAIT_S), pytest.raises(TransportError, match="modelbus bus") as caught:
        await transport.connect()

    assert url in str(caught.value)


async def test_forwarder_sockets_report_the_high_water_marks_set_before_bind() -> None:
    async with running_forwarder() as forwarder:
        default = forwarder.socket_options()
    async with running_forwarder(hwm=12_345, max_frame_bytes=1000) as forwarder:
        custom = forwarder.socket_options()

    for role in ("xsub", "xpub", "router"):
        assert default[role]["sndhwm"] == default[role]["rcvhwm"] == DEFAULT_HWM
        assert custom[role]["sndhwm"] == custom[role]["rcvhwm"] == 12_345
    assert custom["xsub"]["maxmsgsize"] == custom["router"]["maxmsgsize"] == 1000 + (1 << 20)


async def test_a_burst_far_over_default_high_water_marks_arrives_whole(
    zmq_bus_url: str, ns: str
) -> None:
    count = 20_000  # ZeroMQ's default high-water mark of 1,000 loses a good part of this
    async with connected(zmq_bus_url) as publisher, connected(zmq_bus_url) as subscriber:
        subscription = await subscriber.subscribe(f"{ns}/burst", buffer=count)
        for index in range(count):
            await publisher.publish(f"{ns}/burst", b"%d" % index)

        frames = await receive(subscription, count)

    assert [d.frame for d in frames] == [b"%d" % index for index in range(count)]


async def test_subscriptions_sharing_a_prefix_are_counted(zmq_bus_url: str, ns: str) -> None:
    async with connected(zmq_bus_url) as publisher, connected(zmq_bus_url) as subscriber:
        plus = await subscriber.subscribe(f"{ns}/room/+")  # ZeroMQ prefix: ns/room
        star = await subscriber.subscribe(f"{ns}/room/*")  # the same prefix, subscribed twice
        await plus.close()  # one unsubscribe: the other subscription must still be served
        await publisher.publish(f"{ns}/room/1", b"after one close")

        [delivery] = await receive(star, 1)

    assert delivery.frame == b"after one close"
    assert plus.drain_nowait() == []


async def test_a_client_recovers_when_the_forwarder_restarts(ns: str) -> None:
    async with running_forwarder() as forwarder:
        url = forwarder.url
        transport = ZmqTransport(url, request_timeout_s=0.5)
        await transport.connect()
        subscription = await transport.subscribe(f"{ns}/live")
    try:
        with anyio.fail_after(WAIT_S), pytest.raises(TransportError, match="no reply"):
            await transport.publish(f"{ns}/kept", b"lost", persist=True)

        async with Forwarder(url):
            await transport.publish(f"{ns}/kept", b"kept", persist=True)
            assert await transport.query(f"{ns}/kept") == [Delivery(f"{ns}/kept", b"kept")]
            await transport.subscribe(f"{ns}/other")  # a probe round trip: resubscribed by now
            await transport.publish(f"{ns}/live", b"live again")

            [delivery] = await receive(subscription, 1)
    finally:
        await transport.close()

    assert delivery.frame == b"live again"


async def test_serve_forever_runs_until_cancelled(ns: str) -> None:
    url = f"zmq://127.0.0.1:{free_port_block(3)}"
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(Forwarder(url).serve_forever)
        async with connected(url) as transport:
            await transport.publish(f"{ns}/up", b"1", persist=True)
            assert await transport.query(f"{ns}/up") == [Delivery(f"{ns}/up", b"1")]
        tasks.cancel_scope.cancel()

    async with Forwarder(url):  # the ports are free again
        pass


async def test_a_second_forwarder_on_the_same_ports_fails_to_bind(zmq_bus_url: str) -> None:
    with pytest.raises(TransportError, match="cannot bind"):
        async with Forwarder(zmq_bus_url):
            pass


@pytest.mark.parametrize(
    "url", ["zmq://", "mqtt://127.0.0.1:1883", "zmq://127.0.0.1:65534", "zmq://127.0.0.1:port"]
)
def test_a_bad_url_is_refused_before_any_socket_exists(url: str) -> None:
    with pytest.raises(TransportError):
        ZmqTransport(url)
    with pytest.raises(TransportError):
        Forwarder(url)


async def test_a_will_is_ignored_on_zeromq(
    zmq_bus_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="transports.zeromq")
    transport = ZmqTransport(zmq_bus_url)
    await transport.connect(will=Will(f"{ns}/state", b"dead"))
    await transport.close()

    async with connected(zmq_bus_url) as observer:
        assert await observer.query(f"{ns}/state") == []
    assert "no Last Will" in caplog.text


async def test_close_while_a_request_waits_raises_transport_closed(ns: str) -> None:
    async with running_forwarder() as forwarder:
        url = forwarder.url
        transport = ZmqTransport(url)
        await transport.connect()
    outcome: list[BaseException] = []

    async def persist() -> None:
        try:
            await transport.publish(f"{ns}/never", b"x", persist=True)
        except TransportError as exc:
            outcome.append(exc)

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(persist)
            await anyio.wait_all_tasks_blocked()
            await transport.close()

    assert [type(exc).__name__ for exc in outcome] == ["TransportClosed"]


async def test_a_local_transport_shares_the_bus_with_tcp_clients(ns: str) -> None:
    """``Forwarder.local_transport()`` (how ``modelbus serve`` talks to the bus it embeds) is the
    same bus over inproc: live frames both ways, persisted frames, queries, and closing it
    leaves the forwarder serving everyone else."""
    url = f"zmq://127.0.0.1:{free_port_block(3)}"
    async with Forwarder(url) as forwarder:
        local = forwarder.local_transport(request_timeout_s=2.0)
        await local.connect()
        async with connected(url) as remote:
            from_remote = await local.subscribe(f"{ns}/to-local")
            from_local = await remote.subscribe(f"{ns}/to-remote")
            await remote.publish(f"{ns}/to-local", b"over tcp")
            await local.publish(f"{ns}/to-remote", b"over inproc")
            assert [d.frame for d in await receive(from_remote, 1)] == [b"over tcp"]
            assert [d.frame for d in await receive(from_local, 1)] == [b"over inproc"]

            await local.publish(f"{ns}/kept", b"state", persist=True)
            assert await remote.query(f"{ns}/kept") == [Delivery(f"{ns}/kept", b"state")]

            await local.close()
            await remote.publish(f"{ns}/kept", b"still served", persist=True)
            assert await remote.query(f"{ns}/kept") == [Delivery(f"{ns}/kept", b"still served")]


async def test_a_local_transport_needs_a_running_forwarder() -> None:
    forwarder = Forwarder(f"zmq://127.0.0.1:{free_port_block(3)}")
    with pytest.raises(RuntimeError, match="not running"):
        forwarder.local_transport()


async def test_a_flood_of_persists_is_bounded_in_count_and_bytes(ns: str) -> None:
    """Issue 12 item 11: anyone who reaches the control port may persist; the forwarder keeps at
    most ``max_persisted`` frames and ``max_persisted_bytes`` bytes, refuses the rest with a typed
    ``limit_exceeded``, keeps what it had, and still accepts replacements and deletions."""
    async with (
        running_forwarder(max_persisted=5, max_persisted_bytes=10_000) as forwarder,
        connected(forwarder.url) as transport,
    ):
        refused = 0
        for index in range(40):  # a flood of 3,000-byte persists: only three fit the bytes
            try:
                await transport.publish(f"{ns}/f{index}", b"x" * 3000, persist=True)
            except LimitExceeded:
                refused += 1
        relay = forwarder.relay
        assert relay is not None
        assert (len(relay.persisted), relay.persisted_bytes, refused) == (3, 9000, 37)
        await transport.publish(f"{ns}/f0", b"y" * 100, persist=True)  # a replacement fits
        for index in range(3):  # now count is the bound: two more small frames
            try:
                await transport.publish(f"{ns}/g{index}", b"z", persist=True)
            except LimitExceeded:
                refused += 1
        assert (len(relay.persisted), refused) == (5, 38)
        await transport.publish(f"{ns}/f1", b"", persist=True)  # a deletion is always taken
        await transport.publish(f"{ns}/g9", b"z", persist=True)
        kept = await transport.query(f"{ns}/*")
    assert [d.topic for d in kept] == [f"{ns}/{t}" for t in ("f0", "f2", "g0", "g1", "g9")]
    assert relay.persisted_bytes == 100 + 3000 + 3
