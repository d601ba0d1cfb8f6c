"""The MQTT transport against a real Mosquitto: mapping, acks, retained frames, Will, reconnect.

Covers transports/mqtt/broker.py, transports/mqtt/topics.py and transports/mqtt/client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from bus import uri as uris
from bus.errors import InvalidUri, TransportClosed, TransportError
from bus.transport import Delivery, Subscription
from tests.fixtures.mosquitto import MosquittoBroker, find_mosquitto
from tests.fixtures.ports import free_port
from transports import open_transport
from transports.mqtt import MqttTransport, mqtt_filter

pytestmark = pytest.mark.mqtt

PEER = Path(__file__).with_name("mqtt_peer.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test: the session broker keeps retained frames between tests."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def transport(mosquitto_url: str) -> AsyncIterator[MqttTransport]:
    opened = MqttTransport(mosquitto_url)
    await opened.connect()
    yield opened
    await opened.close()


@pytest.fixture
async def other(mosquitto_url: str) -> AsyncIterator[MqttTransport]:
    opened = MqttTransport(mosquitto_url)
    await opened.connect()
    yield opened
    await opened.close()


async def next_delivery(subscription: Subscription, timeout_s: float = 5.0) -> Delivery:
    async with asyncio.timeout(timeout_s):
        return await anext(subscription)


async def deliveries_until(subscription: Subscription, last: bytes) -> list[Delivery]:
    """Every delivery up to and including the first whose frame is ``last``."""
    seen: list[Delivery] = []
    while not seen or seen[-1].frame != last:
        seen.append(await next_delivery(subscription))
    return seen


@contextlib.asynccontextmanager
async def peer(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``tests/transports/mqtt_peer.py`` in its own process; killed on the way out."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def expect_line(process: asyncio.subprocess.Process, word: str) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(20):
        line = await process.stdout.readline()
    assert line.decode().strip() == word


# -- topic mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("ns/a/b", "ns/a/b"),
        ("ns", "ns"),
        ("ns/+/b", "ns/+/b"),
        ("ns/+/+", "ns/+/+"),
        ("ns/*", "ns/#"),
        ("ns/a/*", "ns/a/#"),
        ("ns/+/*", "ns/+/#"),
        ("ns/*/b", "ns/#"),
        ("ns/a/*/b/c", "ns/a/#"),
        ("ns/+/*/b", "ns/+/#"),
        ("ns/s.x/!meta/+", "ns/s.x/!meta/+"),
    ],
)
def test_patterns_map_to_the_narrowest_covering_filter(pattern: str, expected: str) -> None:
    assert mqtt_filter(pattern) == expected


@pytest.mark.parametrize("pattern", ["+/a", "*", "ns/*/*", "ns/a#", "ns//a", ""])
def test_bad_patterns_are_rejected_before_mapping(pattern: str) -> None:
    with pytest.raises(InvalidUri):
        mqtt_filter(pattern)


def test_url_defaults_and_the_password_never_shows() -> None:
    plain = MqttTransport("mqtt://127.0.0.1")
    tls = MqttTransport("mqtts://broker.example")
    secret = MqttTransport("mqtt://alice:s3cr%40t@broker.example:1999")
    assert plain.url == "mqtt://127.0.0.1:1883"
    assert tls.url == "mqtts://broker.example:8883"
    assert secret.url == "mqtt://alice@broker.example:1999"
    assert "s3cr" not in repr(vars(secret))
    assert isinstance(open_transport("mqtt://127.0.0.1:1883"), MqttTransport)


@pytest.mark.parametrize("url", ["http://host", "mqtt://", "mqtt://host/path", "mqtt://h:99999"])
def test_bad_urls_raise_transport_error(url: str) -> None:
    with pytest.raises(TransportError):
        MqttTransport(url)


@pytest.mark.parametrize("client_id", ["a/b", "a+", "#"])
def test_client_ids_with_topic_wildcards_are_refused(client_id: str) -> None:
    with pytest.raises(TransportError):
        MqttTransport("mqtt://127.0.0.1", client_id=client_id)


# -- connecting ---------------------------------------------------------------------------------


async def test_a_wrong_port_fails_quickly_without_the_password() -> None:
    transport = MqttTransport(f"mqtt://alice:s3cret@127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    # Quickly: the first refusal ends it — not retries until the connect timeout.
    assert isinstance(caught.value.__cause__, ConnectionRefusedError), caught.value.__cause__
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    await transport.close()


@pytest.fixture(scope="module")
def closed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A broker that refuses every client (no anonymous access, no password file)."""
    broker = MosquittoBroker(
        find_mosquitto(), tmp_path_factory.mktemp("closed-broker"), allow_anonymous=False
    )
    broker.start()
    yield broker
    broker.stop()


async def test_a_refused_connection_names_the_reason(closed_broker: MosquittoBroker) -> None:
    transport = MqttTransport(f"mqtt://alice:s3cret@127.0.0.1:{closed_broker.port}")
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    assert "refused" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    await transport.close()


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A broker whose ACL allows open/# and each client's own query sentinels, nothing else."""
    directory = tmp_path_factory.mktemp("acl-broker")
    acl = directory / "acl"
    acl.write_text("topic readwrite open/#\npattern readwrite !modelbus-query/%c/#\n")
    broker = MosquittoBroker(find_mosquitto(), directory, extra_config=f"acl_file {acl}\n")
    broker.start()
    yield broker
    broker.stop()


async def test_a_refused_publish_raises_and_an_allowed_query_works(
    acl_broker: MosquittoBroker,
) -> None:
    transport = MqttTransport(acl_broker.url)
    await transport.connect()
    try:
        with pytest.raises(TransportError, match="Not authorized"):
            await transport.publish("denied/x", b"x")
        await transport.publish("open/x", b"kept", persist=True)
        assert await transport.query("open/*") == [Delivery("open/x", b"kept")]
    finally:
        await transport.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A broker whose listener speaks TLS, with a self-signed certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls-broker")
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: apt-get install -y openssl", pytrace=False)
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    broker = MosquittoBroker(
        find_mosquitto(), directory, extra_config=f"certfile {cert}\nkeyfile {key}\n"
    )
    broker.start()
    yield broker
    broker.stop()


async def test_mqtts_verifies_the_broker_with_the_given_ca(
    tls_broker: MosquittoBroker, ns: str
) -> None:
    url = f"mqtts://127.0.0.1:{tls_broker.port}"
    transport = MqttTransport(url, ca_certs=str(tls_broker.log_path.with_name("cert.pem")))
    await transport.connect()
    try:
        subscription = await transport.subscribe(f"{ns}/tls")
        await transport.publish(f"{ns}/tls", b"secret")
        assert await next_delivery(subscription) == Delivery(f"{ns}/tls", b"secret")
    finally:
        await transport.close()
    untrusting = MqttTransport(url)  # the system's CAs do not know our self-signed certificate
    with pytest.raises(TransportError, match="certificate"):
        await untrusting.connect()
    await untrusting.close()


async def test_the_client_socket_has_tcp_nodelay(transport: MqttTransport) -> None:
    sock = transport._client.socket()  # type: ignore[union-attr]  # no public way to reach it
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_use_after_close_raises_and_close_is_idempotent(mosquitto_url: str, ns: str) -> None:
    transport = MqttTransport(mosquitto_url)
    await transport.connect()
    subscription = await transport.subscribe(f"{ns}/*")
    await transport.close()
    await transport.close()
    assert subscription.is_closed
    assert [d async for d in subscription] == []
    with pytest.raises(TransportClosed):
        await transport.publish(f"{ns}/a", b"x")
    with pytest.raises(TransportClosed):
        await transport.subscribe(f"{ns}/a")
    with pytest.raises(TransportClosed):
        await transport.query(f"{ns}/a")
    with pytest.raises(TransportClosed):
        await transport.connect()


# -- live frames --------------------------------------------------------------------------------


async def test_overlapping_subscriptions_each_get_one_copy(
    transport: MqttTransport, other: MqttTransport, ns: str
) -> None:
    patterns = [f"{ns}/*", f"{ns}/+/x", f"{ns}/*/x", f"{ns}/a/x", f"{ns}/a/x"]
    subscriptions = [await transport.subscribe(pattern) for pattern in patterns]
    topics = [f"{ns}/a/x", f"{ns}/b/y/x", f"{ns}/a/y", f"{ns}", f"{ns}/a/x"]
    for index, topic in enumerate(topics):
        await other.publish(topic, b"end" if index == len(topics) - 1 else str(index).encode())
    for pattern, subscription in zip(patterns, subscriptions, strict=True):
        expected = [t for t in topics if uris.matches(pattern, t)]
        assert [d.topic for d in await deliveries_until(subscription, b"end")] == expected


async def test_subscriptions_sharing_a_filter_are_reference_counted(
    transport: MqttTransport, other: MqttTransport, ns: str
) -> None:
    first = await transport.subscribe(f"{ns}/*/x")
    second = await transport.subscribe(f"{ns}/*/y")  # the same MQTT filter, ns/#
    await first.close()
    await other.publish(f"{ns}/a/y", b"end")
    assert (await next_delivery(second)).topic == f"{ns}/a/y"
    await second.close()
    assert len(transport._filters) == 0  # the last close released the MQTT subscription


async def test_topics_outside_the_bus_grammar_are_dropped(
    transport: MqttTransport, other: MqttTransport, mosquitto_url: str, ns: str
) -> None:
    subscription = await transport.subscribe(f"{ns}/*")
    async with peer("raw", mosquitto_url, f"{ns}/has space", "bad") as process:
        await expect_line(process, "done")
    async with peer("raw", mosquitto_url, f"{ns}//x", "bad") as process:
        await expect_line(process, "done")
    await other.publish(f"{ns}/ok", b"good")
    assert await next_delivery(subscription) == Delivery(f"{ns}/ok", b"good")


async def test_a_frame_from_another_process_arrives(
    transport: MqttTransport, mosquitto_url: str, ns: str
) -> None:
    subscription = await transport.subscribe(f"{ns}/feed")
    async with peer("publish", mosquitto_url, f"{ns}/feed", "50") as process:
        await expect_line(process, "done")
    frames = [(await next_delivery(subscription)).frame for _ in range(50)]
    assert frames == [str(index).encode() for index in range(50)]


# -- persisted frames ---------------------------------------------------------------------------


async def test_persisted_frames_are_queried_and_deleted(
    transport: MqttTransport, other: MqttTransport, ns: str
) -> None:
    for topic in (f"{ns}/b/x", f"{ns}/a/x", f"{ns}/a/y/x", f"{ns}/c"):
        await other.publish(topic, topic.encode(), persist=True)
    await other.publish(f"{ns}/live/x", b"not kept")
    assert await transport.query(f"{ns}/*/x") == [
        Delivery(f"{ns}/a/x", f"{ns}/a/x".encode()),
        Delivery(f"{ns}/a/y/x", f"{ns}/a/y/x".encode()),
        Delivery(f"{ns}/b/x", f"{ns}/b/x".encode()),
    ]
    await other.publish(f"{ns}/a/x", b"", persist=True)
    assert [d.topic for d in await transport.query(f"{ns}/*")] == [
        f"{ns}/a/y/x",
        f"{ns}/b/x",
        f"{ns}/c",
    ]
    assert await transport.query(f"{ns}/nothing/+") == []


async def test_live_subscriptions_never_see_retained_frames_and_queries_never_see_live_ones(
    transport: MqttTransport, other: MqttTransport, ns: str
) -> None:
    await other.publish(f"{ns}/kept", b"kept", persist=True)
    live = await transport.subscribe(f"{ns}/*")
    results = await asyncio.gather(
        transport.query(f"{ns}/*"),
        *(other.publish(f"{ns}/live/{i}", b"live") for i in range(20)),
    )
    assert results[0] == [Delivery(f"{ns}/kept", b"kept")]
    await other.publish(f"{ns}/marker", b"end")
    frames = [d.frame for d in await deliveries_until(live, b"end")]
    assert frames == [b"live"] * 20 + [b"end"]


async def test_concurrent_queries_do_not_mix(
    transport: MqttTransport, other: MqttTransport, ns: str
) -> None:
    topics = [f"{ns}/{group}/{i}" for group in ("a", "b") for i in range(15)]
    topics += [f"{ns}/a/deep/end", f"{ns}/b/deep/end"]
    for topic in topics:
        await other.publish(topic, topic.encode(), persist=True)
    patterns = [f"{ns}/a/*", f"{ns}/b/+", f"{ns}/*/end", f"{ns}/+/3", f"{ns}/*"] * 6
    results = await asyncio.gather(*(transport.query(p) for p in patterns))
    for pattern, result in zip(patterns, results, strict=True):
        expected = sorted(t for t in topics if uris.matches(pattern, t))
        assert [d.topic for d in result] == expected, pattern
        assert all(d.frame == d.topic.encode() for d in result)


# -- the Will -----------------------------------------------------------------------------------


async def test_a_killed_process_publishes_its_will(
    transport: MqttTransport, mosquitto_url: str, ns: str
) -> None:
    topic = f"{ns}/s.model/_/!meta/death"
    subscription = await transport.subscribe(topic)
    async with peer("will", mosquitto_url, topic, "dead") as process:
        await expect_line(process, "ready")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert await next_delivery(subscription, timeout_s=5) == Delivery(topic, b"dead")
    assert await transport.query(topic) == [Delivery(topic, b"dead")]


async def test_a_clean_close_publishes_no_will(
    transport: MqttTransport, other: MqttTransport, mosquitto_url: str, ns: str
) -> None:
    topic = f"{ns}/s.model/_/!meta/death"
    subscription = await transport.subscribe(f"{ns}/*")
    async with peer("will-close", mosquitto_url, topic, "dead") as process:
        await expect_line(process, "ready")
        await expect_line(process, "closed")
        await process.wait()
    await asyncio.sleep(0.5)  # a Will would follow the disconnect at once (see the test above)
    await other.publish(f"{ns}/marker", b"end")
    assert [d.topic for d in await deliveries_until(subscription, b"end")] == [f"{ns}/marker"]
    assert await transport.query(topic) == []


# -- reconnecting -------------------------------------------------------------------------------


async def test_subscriptions_survive_a_broker_restart(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transports.mqtt")
    subscriber = MqttTransport(mosquitto_url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    publisher = MqttTransport(mosquitto_url)
    await subscriber.connect()
    try:
        subscription = await subscriber.subscribe(f"{ns}/*")
        await anyio.to_thread.run_sync(mosquitto.restart)
        await publisher.connect()
        async with asyncio.timeout(15):  # until the subscriber has reconnected and resubscribed
            while not (received := subscription.drain_nowait()):
                await publisher.publish(f"{ns}/ping", b"ping")
                await asyncio.sleep(0.1)
        assert received[0] == Delivery(f"{ns}/ping", b"ping")
        assert any("lost the connection" in r.getMessage() for r in caplog.records)
    finally:
        await subscriber.close()
        await publisher.close()


async def test_a_publish_waits_for_the_broker_to_come_back(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str
) -> None:
    transport = MqttTransport(mosquitto_url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    await transport.connect()
    try:
        subscription = await transport.subscribe(f"{ns}/*")
        await anyio.to_thread.run_sync(mosquitto.stop)
        pending = asyncio.ensure_future(transport.publish(f"{ns}/late", b"late"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await anyio.to_thread.run_sync(mosquitto.start)
        async with asyncio.timeout(10):
            await pending
        # Published after the reconnect: its own subscription (subscribed again) may or may not
        # have been in place yet, so only a second frame is certain to arrive.
        await transport.publish(f"{ns}/after", b"end")
        assert (await deliveries_until(subscription, b"end"))[-1].topic == f"{ns}/after"
    finally:
        await transport.close()
        mosquitto.start()


async def test_a_publish_gives_up_after_its_timeout(
    mosquitto: MosquittoBroker, mosquitto_url: str, ns: str
) -> None:
    transport = MqttTransport(mosquitto_url, timeout_s=0.5)
    await transport.connect()
    try:
        await anyio.to_thread.run_sync(mosquitto.stop)
        with pytest.raises(TransportError, match=r"did not finish within 0\.5 s") as caught:
            await transport.publish(f"{ns}/never", b"x")
        assert isinstance(caught.value.__cause__, TimeoutError)  # its own bound ended it
    finally:
        await transport.close()
        mosquitto.start()


def test_a_password_can_come_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mqtt://user@host`` takes its password from $MODELBUS_MQTT_PASSWORD_FILE (first line)
    or $MODELBUS_MQTT_PASSWORD, so it stands in no command line or banner; one in the URL wins."""
    from transports.mqtt.broker import parse_url

    monkeypatch.delenv("MODELBUS_MQTT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("MODELBUS_MQTT_PASSWORD", "from-env")
    assert parse_url("mqtt://alice@broker").password == "from-env"
    assert parse_url("mqtt://alice:in-url@broker").password == "in-url"
    assert parse_url("mqtt://broker").password is None  # no user: no password
    secret = tmp_path / "mqtt.password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("MODELBUS_MQTT_PASSWORD_FILE", str(secret))
    broker = parse_url("mqtt://alice@broker")
    assert broker.password == "from-file"
    assert "from-file" not in broker.safe_url and "from-file" not in repr(broker)
    monkeypatch.setenv("MODELBUS_MQTT_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(TransportError, match="cannot read the MQTT password file"):
        parse_url("mqtt://alice@broker")
