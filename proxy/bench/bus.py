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
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio

from bus import BusClient, Entity, Grant, PayloadObject, Request, Transport, Verifier, runner
from bus import envelope as envelopes
from proxy.bench.bus_results import (
    PROFILE_BUILTINS,
    PROFILE_PLUMBING,
    PROFILE_TOP,
    PUBLISH_WINDOW,
    REPLY_TIMEOUT_S,
    WARMUP,
    BenchSettings,
    BusResult,
    Costs,
    Side,
    report,
)
from proxy.bench.buses import check_bus_url, free_port_block, own_buses
from proxy.bench.environment import environment_line
from proxy.bench.raw import raw_mqtt_rtt, raw_mqtt_stream, raw_zmq_rtt, raw_zmq_stream
from transports import open_transport

__all__ = [
    "BenchSettings",
    "check_bus_url",
    "crypto_costs",
    "free_port_block",
    "own_buses",
    "run_bench",
    "signed_echo_rtt",
    "transport_rtt",
]

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


async def signed_echo_rtt(url: str, settings: BenchSettings) -> list[int]:
    """Round trips (ns) of ``client.request`` to a ``client.serve`` echo on ``url``, signed and
    verified as every message is: what a request costs on that bus before any service work."""
    return await _ours_rtt(url, _Keys(), settings)


async def transport_rtt(url: str, settings: BenchSettings) -> list[int]:
    """Round trips (ns) of unsigned frames through our transport alone on ``url``."""
    return await _transport_rtt(url, _Keys(), settings)


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
        for _ in range(WARMUP):
            await requester.request(keys.slot, body, timeout_s=REPLY_TIMEOUT_S)
        rtts = []
        with _profiling(profiler):
            for _ in range(settings.requests):
                started = time.perf_counter_ns()
                await requester.request(keys.slot, body, timeout_s=REPLY_TIMEOUT_S)
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
                window = min(PUBLISH_WINDOW, settings.count)
                for k in range(window):
                    task_group.start_soon(publish, len(range(k, settings.count, window)))
            await until_done_or_idle(done, lambda: side.received, settings.idle_s)
        side.elapsed_s = last[0] - started
        after = (verifier.verdicts.hits, verifier.verdicts.misses, verifier.rejected.total())
        return side, after[0] - before[0], after[1] - before[1], after[2] - before[2]


async def until_done_or_idle(done: anyio.Event, progress: Callable[[], int], idle_s: float) -> None:
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
            for index in range(WARMUP + settings.requests):
                started = time.perf_counter_ns()
                await requester.publish(asked, body)
                with anyio.fail_after(REPLY_TIMEOUT_S):
                    await replies.__anext__()
                if index >= WARMUP:
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
                window = min(PUBLISH_WINDOW, settings.count)
                for k in range(window):
                    publishers.start_soon(publish, len(range(k, settings.count, window)))
            await until_done_or_idle(done, lambda: side.received, settings.idle_s)
            task_group.cancel_scope.cancel()
        side.elapsed_s = last[0] - started
        return side
    finally:
        await publisher.close()
        await subscriber.close()


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
        (raw_mqtt_rtt, raw_mqtt_stream) if is_mqtt else (raw_zmq_rtt, raw_zmq_stream)
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
        if any(part in filename for part in PROFILE_PLUMBING) or any(
            part in name for part in PROFILE_BUILTINS
        ):
            continue
        where = name if filename == "~" else f"{name} ({_short_path(filename)}:{line})"
        rows.append((cumulative_s, own_s, calls, where))
    rows.sort(reverse=True)
    header = f"   {'cumulative':>10}  {'own':>9}  {'calls':>7}  function"
    lines = [
        f"   {cumulative_s * 1e3:8.1f}ms  {own_s * 1e3:7.1f}ms  {calls:7d}  {where}"
        for cumulative_s, own_s, calls, where in rows[:PROFILE_TOP]
    ]
    return [f"{short.requests} round trips + {short.count} messages:", header, *lines]


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return Path(filename).name


def crypto_costs(size: int, count: int = 1000) -> Costs:
    """Sign, verify, seal and receive check of one message of ``size`` bytes, in µs, here."""
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
    return Costs(
        sign_us=per_message(lambda: party.entity.sign(envelope.body)),
        verify_us=per_message(envelope.check_signature),
        seal_us=per_message(lambda: envelopes.seal(party.entity, keys.stream, pos, proof=proof)),
        check_us=per_message(lambda: verifier.check_frame(next(pending))),
    )


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda line: None) -> str:
    """Measure every bus of ``settings`` (or our own, started here) and return the report."""
    environment = environment_line()  # the load before we add ours
    named = [(check_bus_url(url), url) for url in settings.buses]
    notes: list[str] = []
    results = []
    with contextlib.ExitStack() as stack:
        buses = named or stack.enter_context(own_buses(notes))
        for label, url in buses:
            progress(f"measuring {url} ({label}) ...")
            results.append(_bench_one(url, label, settings, notes))
    progress("measuring signing and verifying ...")
    return report(settings, results, crypto_costs(settings.size), notes, environment)
