"""``modelbus bench bus``: our signed bus next to the raw library, on the same broker, in one run.

For each bus, with the same payload size, it measures

- request/response round trips, one request at a time (p50, p99): ``client.request`` against a
  ``client.serve`` echo handler, next to a raw echo (paho for MQTT; pyzmq through the same
  forwarder for ZeroMQ);
- one-way messages/s, publisher → subscriber, counting every message received:
  ``client.publish`` → ``client.subscribe``, next to the raw library's publish → subscribe;

plus the receiving verifier's verdict-cache hits and misses and the cost of signing and verifying
one message, measured in the same run. Our entities present two-grant chains (namespace →
delegate → entity), so a verdict-cache miss costs three signature checks and a hit one. When ours
misses a target, a short cProfile of our path shows what dominates.

Ours and raw run the same way: both ends in this process (our clients on one event loop; paho
and pyzmq on their own threads). With no ``--bus`` it starts a ZeroMQ forwarder in a child process
and, if installed, a Mosquitto with ``set_tcp_nodelay`` and a raised queue limit. This module is
the one sanctioned importer of paho and zmq outside the transports: a baseline must not go through
our code. Only loopback buses are measured; counts and waits are bounded.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import os
import pstats
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import zmq
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bus import BusClient, Entity, Grant, PayloadObject, Request, Transport, Verifier, runner
from bus import envelope as envelopes
from transports import open_transport

__all__ = [
    "TARGET_RATE_RATIO",
    "TARGET_RTT_RATIO",
    "BenchSettings",
    "BusResult",
    "check_bus_url",
    "free_port_block",
    "own_buses",
    "run_bench",
]

TARGET_RTT_RATIO = 1.5  # our p50 round trip at most 1.5x the raw library's
TARGET_RATE_RATIO = 0.4  # our messages/s at least 40% of the raw library's
_WARMUP = 20
_PUBLISH_WINDOW = 64  # concurrent publishes: MQTT QoS 1 waits for each PUBACK
_CHAIN_LENGTH = 2
_REPLY_TIMEOUT_S = 5.0
_START_TIMEOUT_S = 10.0
_HWM = 100_000  # as the ZeroMQ transport sets, before connecting
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PROFILE_TOP = 8
_PROFILE_PLUMBING = ("asyncio", "anyio", "selectors", "threading", "bench_bus", "contextlib")
_PROFILE_BUILTINS = ("_contextvars.Context", "select.epoll", "builtins.exec", "_lsprof")
_MOSQUITTO_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 200000
max_inflight_messages 100
message_size_limit 16777216
persistence false
log_dest file {log}
"""
_FORWARDER = (
    "import sys; from bus import runner; from transports.zeromq import Forwarder; "
    "runner.run(Forwarder(sys.argv[1]).serve_forever)"
)


@dataclass(frozen=True)
class BenchSettings:
    buses: tuple[str, ...] = ()  # empty: start our own ZeroMQ forwarder and Mosquitto
    count: int = 5000  # one-way messages
    requests: int = 1000  # round trips
    size: int = 100  # payload bytes
    qos: int = 1  # MQTT QoS, ours and raw alike
    profile: bool = True  # profile our path when it misses a target
    idle_s: float = 3.0  # a stream ends when nothing arrived for this long


@dataclass
class Side:
    """One side's figures on one bus."""

    rtt_ns: list[int] = field(default_factory=list)
    received: int = 0
    sent: int = 0
    elapsed_s: float = 0.0

    def rtt_ms(self, fraction: float) -> float | None:
        ordered = sorted(self.rtt_ns)
        return (
            ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6 if ordered else None
        )

    @property
    def rate(self) -> float | None:
        return self.received / self.elapsed_s if self.received and self.elapsed_s > 0 else None


@dataclass
class BusResult:
    url: str
    label: str
    raw_name: str
    ours: Side = field(default_factory=Side)
    transport: Side = field(default_factory=Side)  # our transport alone: no signing, no client
    raw: Side = field(default_factory=Side)
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    profile: list[str] = field(default_factory=list)

    def ratio(self, metric: Callable[[Side], float | None]) -> float | None:
        ours, raw = metric(self.ours), metric(self.raw)
        return ours / raw if ours is not None and raw else None

    def missed_targets(self) -> list[str]:
        missed = []
        rtt = self.ratio(lambda side: side.rtt_ms(0.5))
        if rtt is not None and rtt > TARGET_RTT_RATIO:
            missed.append(f"rtt p50 {rtt:.2f}x raw (target <= {TARGET_RTT_RATIO}x)")
        rate = self.ratio(lambda side: side.rate)
        if rate is not None and rate < TARGET_RATE_RATIO:
            missed.append(f"msgs/s {rate:.0%} of raw (target >= {TARGET_RATE_RATIO:.0%})")
        return missed


# -- entities and grants -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Party:
    entity: Entity
    chain: tuple[Grant, ...]


class _Keys:
    """A throwaway namespace; every party holds namespace → delegate → party, C*P on bench/*."""

    def __init__(self) -> None:
        namespace, delegate = Entity.generate(), Entity.generate()
        self.prefix = f"{namespace.key_text}/bench"
        now_ns = time.time_ns()
        expiry = {"expires_ns": now_ns + 3600 * 10**9, "created_ns": now_ns}
        pattern = f"{self.prefix}/*"
        root = Grant.create(namespace, delegate.public_key, pattern, "C*P", ttl=1, **expiry)

        def party() -> _Party:
            entity = Entity.generate()
            leaf = Grant.create(delegate, entity.public_key, pattern, "C*P", ttl=0, **expiry)
            return _Party(entity, (root, leaf))

        self.requester, self.server, self.publisher, self.subscriber = (party() for _ in range(4))
        self.slot = f"{self.prefix}/s.echo/_/i.bench/slot/echo"
        self.stream = f"{self.prefix}/stream"
        self.raw = f"{self.prefix}/raw"


def _client(url: str, party: _Party, qos: int) -> BusClient:
    return BusClient(_transport(url, qos), party.entity, proofs=[party.chain])


# -- ours ----------------------------------------------------------------------------------------


async def _ours_rtt(
    url: str, keys: _Keys, settings: BenchSettings, profiler: cProfile.Profile | None = None
) -> list[int]:
    body = os.urandom(settings.size)

    async def echo(request: Request) -> Any:
        return request.body

    async with (
        _client(url, keys.server, settings.qos) as server,
        _client(url, keys.requester, settings.qos) as requester,
    ):
        await server.require_task_group().start(server.serve, keys.slot, echo)
        for _ in range(_WARMUP):
            await requester.request(keys.slot, body, timeout_s=_REPLY_TIMEOUT_S)
        rtts = []
        with _profiling(profiler):
            for _ in range(settings.requests):
                started = time.perf_counter_ns()
                await requester.request(keys.slot, body, timeout_s=_REPLY_TIMEOUT_S)
                rtts.append(time.perf_counter_ns() - started)
        return rtts


async def _ours_stream(
    url: str, keys: _Keys, settings: BenchSettings, profiler: cProfile.Profile | None = None
) -> tuple[Side, int, int, int]:
    """The stream and the receiving verifier's verdict hits, misses and rejections during it."""
    payload = PayloadObject.binary(os.urandom(settings.size))
    side = Side(sent=settings.count)
    last = [0.0]
    async with (
        _client(url, keys.subscriber, settings.qos) as subscriber,
        _client(url, keys.publisher, settings.qos) as publisher,
        subscriber.subscribe(keys.stream, buffer=settings.count + 1000) as stream,
    ):
        done = anyio.Event()

        async def consume() -> None:
            async for _ in stream:
                side.received += 1
                last[0] = time.perf_counter()
                if side.received >= settings.count:
                    done.set()

        async def publish(share: int) -> None:
            for _ in range(share):
                await publisher.publish(keys.stream, payload)

        verifier = subscriber.verifier
        before = (verifier.verdicts.hits, verifier.verdicts.misses, verifier.rejected.total())
        subscriber.require_task_group().start_soon(consume)
        with _profiling(profiler):
            started = time.perf_counter()
            async with anyio.create_task_group() as task_group:
                window = min(_PUBLISH_WINDOW, settings.count)
                for k in range(window):
                    task_group.start_soon(publish, len(range(k, settings.count, window)))
            await _until_done_or_idle(done, lambda: side.received, settings.idle_s)
        side.elapsed_s = last[0] - started
        after = (verifier.verdicts.hits, verifier.verdicts.misses, verifier.rejected.total())
        return side, after[0] - before[0], after[1] - before[1], after[2] - before[2]


async def _until_done_or_idle(
    done: anyio.Event, progress: Callable[[], int], idle_s: float
) -> None:
    seen = -1
    while not done.is_set() and progress() != seen:
        seen = progress()
        with anyio.move_on_after(idle_s):
            await done.wait()


@contextlib.contextmanager
def _profiling(profiler: cProfile.Profile | None) -> Iterator[None]:
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


# -- our transport alone: where the transport ends and the signed bus begins ---------------------


def _transport(url: str, qos: int) -> Transport:
    return open_transport(url, **({"qos": qos} if url.startswith("mqtt") else {}))


async def _transport_rtt(url: str, keys: _Keys, settings: BenchSettings) -> list[int]:
    asked, answered = f"{keys.prefix}/transport/request", f"{keys.prefix}/transport/reply"
    server, requester = _transport(url, settings.qos), _transport(url, settings.qos)
    await server.connect()
    await requester.connect()
    try:
        requests = await server.subscribe(asked)
        replies = (await requester.subscribe(answered)).__aiter__()

        async def echo() -> None:
            async for delivery in requests:
                await server.publish(answered, delivery.frame)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(echo)
            body, rtts = os.urandom(settings.size), []
            for index in range(_WARMUP + settings.requests):
                started = time.perf_counter_ns()
                await requester.publish(asked, body)
                with anyio.fail_after(_REPLY_TIMEOUT_S):
                    await replies.__anext__()
                if index >= _WARMUP:
                    rtts.append(time.perf_counter_ns() - started)
            task_group.cancel_scope.cancel()
        return rtts
    finally:
        await requester.close()
        await server.close()


async def _transport_stream(url: str, keys: _Keys, settings: BenchSettings) -> Side:
    topic, frame = f"{keys.prefix}/transport/stream", os.urandom(settings.size)
    subscriber, publisher = _transport(url, settings.qos), _transport(url, settings.qos)
    await subscriber.connect()
    await publisher.connect()
    try:
        stream = await subscriber.subscribe(topic, buffer=settings.count + 1000)
        side, done, last = Side(sent=settings.count), anyio.Event(), [0.0]

        async def consume() -> None:
            async for _ in stream:
                side.received += 1
                last[0] = time.perf_counter()
                if side.received >= settings.count:
                    done.set()

        async def publish(share: int) -> None:
            for _ in range(share):
                await publisher.publish(topic, frame)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(consume)
            started = time.perf_counter()
            async with anyio.create_task_group() as publishers:
                window = min(_PUBLISH_WINDOW, settings.count)
                for k in range(window):
                    publishers.start_soon(publish, len(range(k, settings.count, window)))
            await _until_done_or_idle(done, lambda: side.received, settings.idle_s)
            task_group.cancel_scope.cancel()
        side.elapsed_s = last[0] - started
        return side
    finally:
        await publisher.close()
        await subscriber.close()


# -- raw paho ------------------------------------------------------------------------------------


class _Paho:
    """One raw paho client: threaded network loop, MQTT 5, TCP_NODELAY, connected."""

    def __init__(self, url: str, qos: int, on_message: Callable[[bytes], None]) -> None:
        parts = urlsplit(url)
        self.qos = qos
        self._acks: queue.SimpleQueue[str] = queue.SimpleQueue()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5,
        )
        client.on_socket_open = _no_delay
        client.on_message = lambda _client, _userdata, message: on_message(bytes(message.payload))
        client.on_connect = lambda *_: self._acks.put("connect")
        client.on_subscribe = lambda *_: self._acks.put("subscribe")
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        client.loop_start()
        self.client = client
        self._expect("connect")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=self.qos)
        self._expect("subscribe")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=self.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _expect(self, what: str) -> None:
        try:
            got = self._acks.get(timeout=_START_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"raw paho: no {what} acknowledgement") from None
        if got != what:
            raise RuntimeError(f"raw paho: expected {what}, got {got}")


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _raw_mqtt_rtt(url: str, topic: str, settings: BenchSettings) -> list[int]:
    replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    asked, answered = f"{topic}/request", f"{topic}/reply"
    server = _Paho(url, settings.qos, lambda payload: server.publish(answered, payload))
    requester = _Paho(url, settings.qos, replies.put)
    try:
        server.subscribe(asked)
        requester.subscribe(answered)
        body = os.urandom(settings.size)
        rtts = []
        for index in range(_WARMUP + settings.requests):
            started = time.perf_counter_ns()
            requester.publish(asked, body)
            replies.get(timeout=_REPLY_TIMEOUT_S)
            if index >= _WARMUP:
                rtts.append(time.perf_counter_ns() - started)
        return rtts
    finally:
        requester.close()
        server.close()


class _Counter:
    """Counts a raw stream's arrivals on the library's thread."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.last = 0.0
        self.done = threading.Event()

    def arrived(self, _payload: bytes = b"") -> None:
        self.received += 1
        self.last = time.perf_counter()
        if self.received >= self.count:
            self.done.set()

    def wait(self, idle_s: float) -> None:
        seen = -1
        while not self.done.is_set() and self.received != seen:
            seen = self.received
            self.done.wait(idle_s)

    def side(self, started: float) -> Side:
        return Side(received=self.received, sent=self.count, elapsed_s=self.last - started)


def _raw_mqtt_stream(url: str, topic: str, settings: BenchSettings) -> Side:
    counter = _Counter(settings.count)
    subscriber = _Paho(url, settings.qos, counter.arrived)
    publisher = _Paho(url, settings.qos, lambda payload: None)
    try:
        subscriber.subscribe(f"{topic}/stream")
        payload = os.urandom(settings.size)
        started = time.perf_counter()
        for _ in range(settings.count):
            publisher.publish(f"{topic}/stream", payload)
        counter.wait(settings.idle_s)
        return counter.side(started)
    finally:
        publisher.close()
        subscriber.close()


# -- raw pyzmq through the forwarder --------------------------------------------------------------


def _zmq_socket(context: zmq.Context[Any], kind: int, url: str, offset: int) -> Any:
    parts = urlsplit(url)
    sock = context.socket(kind)
    for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, _HWM), (zmq.RCVHWM, _HWM)):
        sock.setsockopt(option, value)  # before connect, or they are ignored
    sock.connect(f"tcp://{parts.hostname}:{(parts.port or 7700) + offset}")
    return sock


def _raw_zmq_rtt(url: str, topic: str, settings: BenchSettings) -> list[int]:
    asked, answered = f"{topic}/request".encode(), f"{topic}/reply".encode()
    context: zmq.Context[Any] = zmq.Context()
    stop = threading.Event()
    server_sub = _zmq_socket(context, zmq.SUB, url, 1)
    server_sub.subscribe(asked)
    server_pub = _zmq_socket(context, zmq.PUB, url, 0)

    def serve() -> None:
        while not stop.is_set():
            if server_sub.poll(50):
                server_pub.send_multipart([answered, server_sub.recv_multipart()[1]])

    server = threading.Thread(target=serve, name="raw zmq echo", daemon=True)
    server.start()
    try:
        pub, sub = _zmq_socket(context, zmq.PUB, url, 0), _zmq_socket(context, zmq.SUB, url, 1)
        sub.subscribe(answered)
        padding = os.urandom(max(0, settings.size - 8))
        rtts = []
        for index in range(-1, _WARMUP + settings.requests):  # -1: until the path is open
            body = index.to_bytes(8, "big", signed=True) + padding
            started = time.perf_counter_ns()
            pub.send_multipart([asked, body])
            _zmq_reply(pub, sub, [asked, body], is_probe=index < 0)
            if index >= _WARMUP:
                rtts.append(time.perf_counter_ns() - started)
        return rtts
    finally:
        stop.set()
        server.join(_START_TIMEOUT_S)
        context.destroy(linger=0)


def _zmq_reply(pub: Any, sub: Any, request: list[bytes], *, is_probe: bool) -> None:
    """Wait for the echo of ``request``; a probe is re-sent until subscriptions have travelled
    through the forwarder (ZeroMQ drops what a PUB sends before it knows of a subscriber)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if sub.poll(20 if is_probe else int(_REPLY_TIMEOUT_S * 1000)):
            if sub.recv_multipart()[1][:8] == request[1][:8]:
                return
        elif is_probe:
            pub.send_multipart(request)
        else:
            break
    raise RuntimeError("raw pyzmq: no reply through the forwarder")


def _raw_zmq_stream(url: str, topic: str, settings: BenchSettings) -> Side:
    stream_topic = f"{topic}/stream".encode()
    context: zmq.Context[Any] = zmq.Context()
    counter, probed, stop = _Counter(settings.count), threading.Event(), threading.Event()
    sub = _zmq_socket(context, zmq.SUB, url, 1)
    sub.subscribe(stream_topic)

    def receive() -> None:
        while not counter.done.is_set() and not stop.is_set():
            if sub.poll(50):
                if sub.recv_multipart()[1] == b"probe":
                    probed.set()
                else:
                    counter.arrived()

    receiver = threading.Thread(target=receive, name="raw zmq subscriber", daemon=True)
    receiver.start()
    try:
        pub = _zmq_socket(context, zmq.PUB, url, 0)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not probed.wait(0.01):  # until the subscription has reached the forwarder
            if time.monotonic() > deadline:
                raise RuntimeError("raw pyzmq: the subscription never reached the forwarder")
            pub.send_multipart([stream_topic, b"probe"])
        payload = os.urandom(settings.size)
        started = time.perf_counter()
        for _ in range(settings.count):
            pub.send_multipart([stream_topic, payload])
        counter.wait(settings.idle_s)
        return counter.side(started)
    finally:
        stop.set()
        receiver.join(_START_TIMEOUT_S)
        context.destroy(linger=0)


# -- buses of our own ------------------------------------------------------------------------------


def free_port_block(count: int) -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


@contextlib.contextmanager
def _process(argv: list[str], port: int, what: str, log: Path) -> Iterator[None]:
    """Run ``argv`` (output to ``log``: an unread pipe blocks a server) until the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}: see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")
            time.sleep(0.02)  # another process's listening socket cannot be awaited
        yield
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def own_buses(notes: list[str]) -> Iterator[list[tuple[str, str]]]:
    """``[(label, url)]``: a ZeroMQ forwarder in a child process and, if installed, a Mosquitto
    (``set_tcp_nodelay``, raised queues), on free loopback ports, until the block ends. A missing
    mosquitto is said in ``notes``. The other benchmarks start their buses here too."""
    with (
        tempfile.TemporaryDirectory(prefix="modelbus-bench-") as name,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(name)
        base = free_port_block(3)
        url = f"zmq://127.0.0.1:{base}"
        argv = [sys.executable, "-c", _FORWARDER, url]
        stack.enter_context(_process(argv, base + 2, "the forwarder", directory / "forwarder.log"))
        buses = [("ZeroMQ forwarder", url)]
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
        if binary is None:
            notes.append(
                "MQTT NOT MEASURED: the mosquitto binary is missing (apt-get install mosquitto)"
            )
        else:
            port = free_port_block(1)
            log, config = directory / "mosquitto.log", directory / "mosquitto.conf"
            config.write_text(_MOSQUITTO_CONFIG.format(port=port, log=log))
            stack.enter_context(_process([binary, "-c", str(config)], port, "mosquitto", log))
            buses.append(("Mosquitto", f"mqtt://127.0.0.1:{port}"))
        yield buses


def check_bus_url(url: str) -> str:
    """A label for a bus the user named; ValueError unless it is zmq:// or mqtt:// on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("zmq", "mqtt"):
        raise ValueError(f"{url}: the bench measures zmq:// and mqtt:// buses")
    host = parts.hostname or ""
    if host not in _LOOPBACK and not host.startswith("127."):
        raise ValueError(f"{url}: the bench only measures buses on loopback addresses")
    return "ZeroMQ forwarder" if parts.scheme == "zmq" else "MQTT broker"


# -- measuring -----------------------------------------------------------------------------------


def _run(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return runner.run(function, *args)


def _bench_one(url: str, label: str, settings: BenchSettings, notes: list[str]) -> BusResult:
    keys, is_mqtt = _Keys(), url.startswith("mqtt")
    result = BusResult(url, label, "raw paho" if is_mqtt else "raw pyzmq")

    def measure(name: str, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except Exception as exc:  # a bench reports a failed measurement and goes on
            notes.append(f"{url} {name} failed: {type(exc).__name__}: {exc}")
            return None

    if stream := measure("ours stream", lambda: _run(_ours_stream, url, keys, settings)):
        result.ours, result.hits, result.misses, result.rejected = stream
    result.ours.rtt_ns = measure("ours rtt", lambda: _run(_ours_rtt, url, keys, settings)) or []
    result.transport = measure(
        "transport stream", lambda: _run(_transport_stream, url, keys, settings)
    ) or Side(sent=settings.count)
    result.transport.rtt_ns = (
        measure("transport rtt", lambda: _run(_transport_rtt, url, keys, settings)) or []
    )
    raw_rtt, raw_stream = (
        (_raw_mqtt_rtt, _raw_mqtt_stream) if is_mqtt else (_raw_zmq_rtt, _raw_zmq_stream)
    )
    result.raw = measure("raw stream", lambda: raw_stream(url, keys.raw, settings)) or Side(
        sent=settings.count
    )
    result.raw.rtt_ns = measure("raw rtt", lambda: raw_rtt(url, keys.raw, settings)) or []
    if settings.profile and result.missed_targets():
        result.profile = measure("profile", lambda: _profile(url, keys, settings)) or []
    return result


_ProfileTable = dict[tuple[str, int, str], tuple[int, int, float, float, Any]]


def _profile(url: str, keys: _Keys, settings: BenchSettings) -> list[str]:
    """Top functions by cumulative time over a short run of our path, event loop left out."""
    short = dataclasses.replace(
        settings, requests=min(settings.requests, 300), count=min(settings.count, 2000)
    )
    # Wall time (cheap to read); a CPU-time clock costs ~0.7 us a reading and would inflate
    # every small Python function far above the C crypto calls.
    profiler = cProfile.Profile()
    _run(_ours_rtt, url, keys, short, profiler)
    _run(_ours_stream, url, keys, short, profiler)
    # pstats keeps (file, line, function) -> (primitive calls, calls, own s, cumulative s, callers)
    # in an attribute typeshed does not declare; get_stats_profile() merges same-named functions.
    table = cast(_ProfileTable, getattr(pstats.Stats(profiler), "stats"))  # noqa: B009
    rows = []
    for (filename, line, name), (_, calls, own_s, cumulative_s, _) in table.items():
        if any(part in filename for part in _PROFILE_PLUMBING) or any(
            part in name for part in _PROFILE_BUILTINS
        ):
            continue
        where = name if filename == "~" else f"{name} ({_short_path(filename)}:{line})"
        rows.append((cumulative_s, own_s, calls, where))
    rows.sort(reverse=True)
    header = f"   {'cumulative':>10}  {'own':>9}  {'calls':>7}  function"
    lines = [
        f"   {cumulative_s * 1e3:8.1f}ms  {own_s * 1e3:7.1f}ms  {calls:7d}  {where}"
        for cumulative_s, own_s, calls, where in rows[:_PROFILE_TOP]
    ]
    return [f"{short.requests} round trips + {short.count} messages:", header, *lines]


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return Path(filename).name


@dataclass(frozen=True)
class _Costs:
    """Microseconds per message, measured here: the crypto and codec share of our path."""

    sign_us: float
    verify_us: float
    seal_us: float  # pack + sign one envelope
    check_us: float  # a receiver's parse + cached chain + verify + replay check


def _crypto_costs(size: int, count: int = 1000) -> _Costs:
    keys = _Keys()
    party, pos = keys.publisher, (PayloadObject.binary(os.urandom(size)),)
    proof = tuple(grant.encode() for grant in party.chain)

    def per_message(work: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(count):
            work()
        return (time.perf_counter() - started) / count * 1e6

    frames = [envelopes.seal(party.entity, keys.stream, pos, proof=proof) for _ in range(count)]
    envelope, verifier, pending = envelopes.parse(frames[0]), Verifier(), iter(frames)
    return _Costs(
        sign_us=per_message(lambda: party.entity.sign(envelope.body)),
        verify_us=per_message(envelope.check_signature),
        seal_us=per_message(lambda: envelopes.seal(party.entity, keys.stream, pos, proof=proof)),
        check_us=per_message(lambda: verifier.check_frame(next(pending))),
    )


# -- reporting -----------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if digits == 0 else f"{value:.{digits}f}{unit}"


def _table(results: list[BusResult]) -> list[str]:
    header = ("bus", "side", "rtt p50 ms", "rtt p99 ms", "msgs/s", "received")
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        for first, name, side in (
            (result.url, "ours", result.ours),
            (result.label, "our transport alone", result.transport),
            ("", result.raw_name, result.raw),
        ):
            rows.append(
                (
                    first,
                    name,
                    _number(side.rtt_ms(0.5)),
                    _number(side.rtt_ms(0.99)),
                    _number(side.rate, digits=0),
                    f"{side.received}/{side.sent}",
                )
            )
        rows.append(
            (
                "",
                "ours/raw",
                _number(result.ratio(lambda s: s.rtt_ms(0.5)), "x"),
                _number(result.ratio(lambda s: s.rtt_ms(0.99)), "x"),
                _number(result.ratio(lambda s: s.rate), "x"),
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def _where_time_goes(result: BusResult, costs: _Costs) -> list[str]:
    """Raw → our transport alone → ours, with the share of our signing and verifying."""
    crypto_us = costs.seal_us + costs.check_us
    steps = []
    rtts = [side.rtt_ms(0.5) for side in (result.raw, result.transport, result.ours)]
    if all(rtt is not None for rtt in rtts):
        raw, transport, ours = (cast(float, rtt) for rtt in rtts)
        steps.append(
            f"round trip p50: raw {raw:.2f} ms -> our transport alone {transport:.2f} "
            f"({transport - raw:+.2f}) -> ours {ours:.2f} ({ours - transport:+.2f}, of which "
            f"2 seals + 2 receive checks {2 * crypto_us / 1000:.2f})"
        )
    rates = [side.rate for side in (result.raw, result.transport, result.ours)]
    if all(rates):
        raw, transport, ours = (1e6 / cast(float, rate) for rate in rates)
        steps.append(
            f"stream: raw {raw:.0f} us/message -> our transport alone {transport:.0f} "
            f"({transport - raw:+.0f}) -> ours {ours:.0f} ({ours - transport:+.0f}; seal + "
            f"receive check cost {crypto_us:.0f} on the event loop)"
        )
    return [f"  {result.url} {step}" for step in steps]


def _report(
    settings: BenchSettings, results: list[BusResult], costs: _Costs, notes: list[str]
) -> str:
    lines = [
        f"modelbus bench bus: {settings.size} B payloads; {settings.requests} round trips one at a "
        f"time; {settings.count} messages one-way; MQTT QoS {settings.qos}",
        "ours = BusClient, every message signed and verified (2-grant chains); "
        "raw = the library alone",
        "",
        *_table(results),
        "",
        "receiving verifier during our stream (verdict cache keyed by chain hash):",
    ]
    for result in results:
        checks = result.ours.received + _CHAIN_LENGTH * result.misses
        per_message = checks / result.ours.received if result.ours.received else 0.0
        lines.append(
            f"  {result.url}: hits {result.hits}, misses {result.misses}, "
            f"rejected {result.rejected} -> {per_message:.4f} signature checks per message "
            f"(a miss costs {_CHAIN_LENGTH + 1})"
        )
    lines += [
        f"per message, measured in this run: sign {costs.sign_us:.1f} us, verify "
        f"{costs.verify_us:.1f} us; seal (pack+sign) {costs.seal_us:.1f} us; receive check "
        f"(parse, cached chain, verify, replay) {costs.check_us:.1f} us",
        "where our time goes:",
        *(line for result in results for line in _where_time_goes(result, costs)),
        f"targets: rtt p50 <= {TARGET_RTT_RATIO}x raw; msgs/s >= {TARGET_RATE_RATIO:.0%} of raw",
    ]
    for result in results:
        missed = result.missed_targets()
        verdict = "BELOW TARGET: " + "; ".join(missed) if missed else "met"
        lines.append(f"  {result.url}: {verdict}")
    for result in results:
        if result.profile:
            title = f"what dominates our path on {result.url} (cProfile, loop plumbing left out)"
            lines += ["", f"{title}, {result.profile[0]}", *result.profile[1:]]
    if notes:
        lines += ["", "notes:", *(f"  {note}" for note in notes)]
    return "\n".join(lines)


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda line: None) -> str:
    """Measure every bus of ``settings`` (or our own, started here) and return the report."""
    named = [(check_bus_url(url), url) for url in settings.buses]
    notes: list[str] = []
    results = []
    with contextlib.ExitStack() as stack:
        buses = named or stack.enter_context(own_buses(notes))
        for label, url in buses:
            progress(f"measuring {url} ({label}) ...")
            results.append(_bench_one(url, label, settings, notes))
    progress("measuring signing and verifying ...")
    return _report(settings, results, _crypto_costs(settings.size), notes)
