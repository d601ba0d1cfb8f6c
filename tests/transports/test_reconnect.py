"""Reconnect hooks on a real Mosquitto, restarted under the transport, and oversized frames from
another client that the broker refuses without disturbing us.

Covers transports/mqtt/gate.py (the gate that opens after the hooks) and ``on_reconnect`` of
transports/mqtt/client.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import anyio
import pytest

from bus.transport import DEFAULT_MAX_FRAME_BYTES, Delivery
from tests.fixtures.mosquitto import MosquittoBroker
from tests.transports.helpers import WAIT_S, receive
from transports.mqtt import MqttTransport

pytestmark = pytest.mark.mqtt

POLL_S = 0.02


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait for a log line: a lost connection is seen on paho's thread, with nothing to await."""
    with anyio.fail_after(WAIT_S):
        while not any(text in record.getMessage() for record in caplog.records):  # noqa: ASYNC110
            await anyio.sleep(POLL_S)


async def test_hooks_publish_before_anything_else_after_a_broker_restart(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="transports.mqtt")
    transport = MqttTransport(mosquitto_url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    events: list[str] = []

    async def birth() -> None:
        events.append("hook started")
        await transport.publish(f"{ns}/state", b"online", persist=True)
        events.append("hook published")

    async def publish_other() -> None:
        await transport.publish(f"{ns}/other", b"other")
        events.append("other published")

    await transport.connect()
    remove = transport.on_reconnect(birth)
    try:
        await transport.publish(f"{ns}/first", b"first connection: no hook")
        assert events == []
        await anyio.to_thread.run_sync(mosquitto.stop)
        await until_logged(caplog, "lost the connection")
        waiting = asyncio.ensure_future(publish_other())  # waits for the gate
        await anyio.to_thread.run_sync(mosquitto.start)
        with anyio.fail_after(WAIT_S):
            await waiting
        assert events == ["hook started", "hook published", "other published"]
        assert await transport.query(f"{ns}/state") == [Delivery(f"{ns}/state", b"online")]

        remove()
        caplog.clear()
        await anyio.to_thread.run_sync(mosquitto.restart)
        await until_logged(caplog, "reconnected to")
        await transport.publish(f"{ns}/later", b"no hook any more")
        assert events == ["hook started", "hook published", "other published"]
    finally:
        await transport.close()
        mosquitto.start()


async def test_a_failing_hook_is_logged_and_the_connection_opens(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bus.transport")
    transport = MqttTransport(mosquitto_url, reconnect_min_s=0.1, reconnect_max_s=0.5)

    async def broken() -> None:
        raise RuntimeError("a bug in a hook")

    await transport.connect()
    transport.on_reconnect(broken)
    try:
        await anyio.to_thread.run_sync(mosquitto.restart)
        with anyio.fail_after(WAIT_S):
            await transport.publish(f"{ns}/after", b"the gate opened")
        assert "a reconnect hook failed" in caplog.text
    finally:
        await transport.close()
        mosquitto.start()


async def test_an_oversized_publish_by_another_client_leaves_subscribers_connected(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str
) -> None:
    """Mosquitto's message_size_limit (16 MiB, as the bus) refuses the frame at the sender; a
    subscriber on the topic never sees it, and its connection is never dropped."""
    subscriber = MqttTransport(mosquitto_url)
    # An attacker's transport with the check turned off, at QoS 0 so paho keeps nothing to re-send.
    attacker = MqttTransport(mosquitto_url, qos=0, max_frame_bytes=2 * DEFAULT_MAX_FRAME_BYTES)
    await subscriber.connect()
    await attacker.connect()
    try:
        subscription = await subscriber.subscribe(f"{ns}/slot")
        await attacker.publish(f"{ns}/slot", b"x" * (DEFAULT_MAX_FRAME_BYTES + 1))
        await subscriber.publish(f"{ns}/slot", b"after")
        [delivery] = await receive(subscription, 1)
    finally:
        await attacker.close()
        await subscriber.close()

    assert delivery == Delivery(f"{ns}/slot", b"after")
    log = mosquitto.log_path.read_text(errors="replace")
    assert log.count(f"as {subscriber.client_id} ") == 1  # connected once, never again
