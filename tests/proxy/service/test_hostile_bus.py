"""A running service on a hostile bus, on ZeroMQ and on Mosquitto: frames over the size limit,
replies over it, and a fuzz of malformed, truncated, deeply nested, oversized, type-confused and
signed-but-garbage frames published raw on its predict slot.

The service must stay up and on the bus, answer valid requests during and after, and count every
rejection by its code (``status`` → ``rejections``). Frames come from the seeded generator in
tests/proxy/service/hostile_frames.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import BusClient, Entity, FrameTooLarge, LimitExceeded, NotFound, Verifier
from bus.message import Message, MessageStream
from bus.transport import DEFAULT_MAX_FRAME_BYTES, Transport
from tests.fixtures.zmqbus import running_forwarder
from tests.proxy.conftest import ProxyHarness, Service, wait_until
from tests.proxy.service.hostile_frames import families, nested_frame
from transports.mqtt import MqttTransport
from transports.zeromq import Forwarder, ZmqTransport

BUSES = ["zeromq", pytest.param("mqtt", marks=pytest.mark.mqtt)]
OVER = DEFAULT_MAX_FRAME_BYTES + 1
FUZZ_SEED = 20261207


@asynccontextmanager
async def bus_for(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Forwarder | None]:
    """A forwarder of our own on ZeroMQ (to read its drop counters); the session's Mosquitto."""
    if kind == "zeromq":
        async with running_forwarder() as forwarder:
            yield forwarder
    else:
        request.getfixturevalue("mosquitto_url")
        yield None


def harness_url(kind: str, forwarder: Forwarder | None, request: pytest.FixtureRequest) -> str:
    return forwarder.url if forwarder else str(request.getfixturevalue("mosquitto_url"))


def attacker_transport(url: str, *, qos: int = 1) -> Transport:
    """A raw transport with the size check off: it publishes whatever it is given, unverified.
    Oversized frames go at MQTT QoS 0, so that paho keeps none to re-send."""
    if url.startswith("zmq://"):
        return ZmqTransport(url, max_frame_bytes=4 * DEFAULT_MAX_FRAME_BYTES)
    return MqttTransport(url, qos=qos, max_frame_bytes=4 * DEFAULT_MAX_FRAME_BYTES)


def double_sum(inputs: list[list[float]]) -> list[float]:
    return [2 * sum(x) for x in inputs]


async def deploy_doubler(service: Service) -> None:
    await service.operator.deploy_function("m", "1", double_sum, "doubles")
    await service.operator.wait_ready("m", "1")


# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BUSES)
async def test_a_request_over_the_frame_limit_is_refused_at_once_and_the_client_goes_on(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with bus_for(kind, request) as forwarder:
        harness = ProxyHarness(harness_url(kind, forwarder, request), tmp_path / "proxy")
        with anyio.fail_after(60):
            async with harness.serving() as service:
                started = time.monotonic()
                with pytest.raises(FrameTooLarge) as refused:
                    await service.viewer.predict(model="m", inputs=[b"x" * OVER])
                refused_s = time.monotonic() - started
                with pytest.raises(NotFound):  # the same client, answered
                    await service.viewer.predict(model="m", input=[1.0])
                assert (await service.operator.liveness()).is_alive
                rejections = (await service.operator.status())["rejections"]
    print(f"{kind}: refused in {refused_s * 1000:.1f} ms")  # shown with -s; never asserted
    assert refused.value.details["limit"] == DEFAULT_MAX_FRAME_BYTES
    assert rejections == {}  # nothing reached the service
    if forwarder is not None:
        assert forwarder.dropped == {}  # nothing reached the forwarder either


@pytest.mark.slow
@pytest.mark.parametrize("kind", BUSES)
async def test_a_model_reply_over_the_frame_limit_is_a_typed_error_and_the_service_stays(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    def huge_for_one(inputs: list[list[float]]) -> list[Any]:
        return ["x" * (17 * 1024 * 1024) if x == [1.0] else sum(x) for x in inputs]

    async with bus_for(kind, request) as forwarder:
        harness = ProxyHarness(harness_url(kind, forwarder, request), tmp_path / "proxy")
        with anyio.fail_after(90):
            async with harness.serving() as service:
                await service.operator.deploy_function("big", "1", huge_for_one, "doubles")
                await service.operator.wait_ready("big", "1")
                with pytest.raises(LimitExceeded) as refused:
                    await service.viewer.predict(model="big", input=[1.0], timeout_s=60)
                after = await service.viewer.predict(model="big", input=[2.0, 3.0])
                state = await service.operator.liveness()
    assert refused.value.code == "limit_exceeded"
    assert refused.value.details["size"] > refused.value.details["limit"]
    assert after["output"] == 5.0
    assert state.is_alive, state.reason
    if forwarder is not None:
        assert forwarder.dropped == {}


# -- fuzz -------------------------------------------------------------------------------------


async def publish_all(transport: Transport, topic: str, frames: list[bytes]) -> None:
    for frame in frames:
        await transport.publish(topic, frame)


async def rejections_of(service: Service) -> Counter[str]:
    return Counter((await service.operator.status())["rejections"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", BUSES)
async def test_fuzzed_frames_are_counted_by_reason_and_the_service_answers_throughout(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with bus_for(kind, request) as forwarder:
        harness = ProxyHarness(harness_url(kind, forwarder, request), tmp_path / "proxy")
        slot = harness.slot("predict")
        hostile = families(FUZZ_SEED, slot, harness.viewer, (harness.viewer_grant(),), scale=2)
        answered: list[float] = []
        by_family: dict[str, Counter[str]] = {}
        with anyio.fail_after(120):
            async with harness.serving() as service:
                await deploy_doubler(service)
                attacker = attacker_transport(harness.bus_url)
                await attacker.connect()
                fuzz_started = time.monotonic()
                try:
                    async with anyio.create_task_group() as tg:
                        stop = anyio.Event()

                        async def keep_asking() -> None:
                            while not stop.is_set():
                                reply = await service.viewer.predict(model="m", input=[1.5])
                                answered.append(reply["output"])

                        tg.start_soon(keep_asking)
                        before = await rejections_of(service)
                        for family in hostile:
                            await publish_all(attacker, slot, family.frames)
                            expected = sum(before.values()) + len(family.frames)

                            async def all_counted(expected: int = expected) -> bool:
                                return sum((await rejections_of(service)).values()) >= expected

                            await wait_until(
                                all_counted,
                                timeout_s=30,
                                what=f"{family.name}: {len(family.frames)} rejections counted",
                            )
                            now = await rejections_of(service)
                            by_family[family.name] = now - before
                            before = now
                        oversized = [b"o" * OVER, b"p" * (DEFAULT_MAX_FRAME_BYTES + 4096)]
                        big_attacker = attacker_transport(harness.bus_url, qos=0)
                        await big_attacker.connect()
                        try:
                            await publish_all(big_attacker, slot, oversized)
                        finally:
                            await big_attacker.close()

                        async def forwarder_dropped_both() -> bool:
                            return forwarder is None or forwarder.dropped["oversized"] == 2

                        await wait_until(forwarder_dropped_both, what="both oversized dropped")
                        during = len(answered)
                        stop.set()
                finally:
                    await attacker.close()
                fuzz_s = time.monotonic() - fuzz_started
                after = await service.viewer.predict(model="m", inputs=[[1.0], [2.0]])
                state = await service.operator.liveness()
                final = await rejections_of(service)

    print(f"{kind}: fuzz {fuzz_s:.1f} s, {during} valid answers during it, {dict(final)}")
    for family in hostile:
        counted = by_family[family.name]
        assert sum(counted.values()) == len(family.frames), (family.name, counted)
        assert set(counted) <= family.codes, (family.name, counted)
    assert final == before  # the oversized frames never reached the service
    assert during > 0 and set(answered) == {3.0}
    assert [p["output"] for p in after["batch_predictions"]] == [2.0, 4.0]
    assert state.is_alive, state.reason


@pytest.mark.parametrize("kind", BUSES)
async def test_a_subscriber_survives_the_nested_frame(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What ``modelbus sub`` does: a BusClient subscription reading every frame on a pattern."""
    async with bus_for(kind, request) as forwarder:
        url = harness_url(kind, forwarder, request)
        owner = Entity.generate(comment="owner")
        topic = f"{owner.key_text}/s.thermal/zone-a/slot/predict"
        attacker = attacker_transport(url)
        async with (
            BusClient(transport_for(url), owner, verifier=Verifier()) as client,
            client.subscribe(f"{owner.key_text}/*", include_rejected=True) as stream,
        ):
            await attacker.connect()
            try:
                for depth in (1000, 5000, 100_000):
                    await attacker.publish(topic, nested_frame(depth))
            finally:
                await attacker.close()
            await client.publish(topic, [], persist=False)
            received = await until(stream, rejected=3, messages=1)
    assert sorted(type(item).__name__ for item in received) == ["Message"] + ["Rejected"] * 3
    assert sum(client.verifier.rejected.values()) == 3


def transport_for(url: str) -> Transport:
    return ZmqTransport(url) if url.startswith("zmq://") else MqttTransport(url)


async def until(stream: MessageStream, *, rejected: int, messages: int) -> list[Any]:
    """Items until ``rejected`` Rejected and ``messages`` Message came (frames from two
    connections may arrive in either order)."""
    items: list[Any] = []
    with anyio.fail_after(30):
        async for item in stream:
            items.append(item)
            count = sum(isinstance(i, Message) for i in items)
            if count >= messages and len(items) - count >= rejected:
                return items
    raise AssertionError(f"the stream ended after {items}")
