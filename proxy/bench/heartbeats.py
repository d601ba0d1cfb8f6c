"""``modelbus bench heartbeats``: N simulated services heart-beating into one dashboard monitor.

The services are simulated by one publisher process that beats for each of N service URIs at the
aggregate rate of N services with a 10 s period (N/10 beats a second, each beat the three signed,
persisted liveness messages with the payloads :class:`bus.Heartbeat` publishes). It seals every
beat before the run, stamped with the instant it is due, and sends them over several connections,
many in flight: signing 3,000 frames a second would otherwise hold back the load it offers on a
busy 2-core machine. ``beats/s`` says what it achieved.

This process runs the dashboard's monitor (:class:`proxy.dashboard.FleetMonitor` with its
:class:`Fleet`, judged every 0.25 s as the dashboard does) on the real transport. A third process
is the baseline: the bare library (pyzmq SUB from the forwarder, or paho at our QoS 1) receiving
the same frames at the same time and doing nothing else. Over the measured window (after a
warm-up of a third of the run, at most one period: 30 s or more lets every service beat once)
each side's CPU is its process CPU time (every thread: paho's, ZeroMQ's I/O thread), reported as
a share of one core, and the ratio ours / raw. ``floor`` is raw plus one Ed25519 check a beat
(timed in this process right after the window): what any monitor that verifies each beat's time
must spend. Also reported: µs of CPU per beat, resident memory, the delay from a beat's time
(``ts``: when it was due) to its record in the fleet — the publisher's own lateness included —,
signature checks and skipped frames a second, frames a second received by ours and by raw.
The bus is a ZeroMQ forwarder in a fourth process (``modelbus bus``), or ``--bus URL``.

Run the publisher alone: ``python -m proxy.bench.heartbeats publish URL KEYFILE CHAIN N SECONDS``;
the baseline: ``python -m proxy.bench.heartbeats raw URL PREFIX QOS WARMUP_S WINDOW_S``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import CapacityLimiter

from bus import (
    PO_METADATA,
    PO_STATE,
    PO_STATUS,
    BusClient,
    Entity,
    Grant,
    PayloadObject,
    decode_chain,
    encode_chain,
)
from bus.envelope import parse, seal
from bus.errors import TransportError
from bus.liveness import LASTALIVE, STATE, STATUS
from proxy.bench.buses import free_port_block
from proxy.bench.raw import raw_receive
from proxy.dashboard import Fleet, FleetMonitor
from transports import open_transport

__all__ = ["run_bench"]

PERIOD_S = 10.0
_IN_FLIGHT = 16  # beats in flight on one publisher connection
_SPARE_S = 15.0  # beats sealed beyond the run, in case sealing takes longer than foreseen
JUDGE_S = 0.25
_HOUR_NS = 3600 * 10**9


class _TimedFleet(Fleet):
    """A fleet that remembers each beat's delay from its publication."""

    def __init__(self) -> None:
        super().__init__()
        self.delays_ns: list[int] = []

    def status(
        self, service: str, value: Any, *, arrived_ns: int, instance: str | None = None
    ) -> None:
        super().status(service, value, arrived_ns=arrived_ns, instance=instance)
        ts = value.get("ts") if isinstance(value, dict) else None
        if isinstance(ts, int):  # the beat's time: the monitor counts the status as the beat
            self.delays_ns.append(arrived_ns - ts)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _publish(url: str, key: str, chain: str, count: int, seconds: float) -> None:
    """Beat for ``count`` services at ``count / PERIOD_S`` beats a second for ``seconds``.

    The frames are sealed before the run (:func:`_sealed_beats`, each stamped with the instant
    it is due), so the publisher's signing does not hold back the rate it can offer on a busy
    machine; they go out over ``_lanes(count)`` connections with up to ``_IN_FLIGHT`` beats of
    different services in flight on each (a persisted publish is a round trip)."""
    entity = Entity.load(key)
    proof = tuple(grant.encode() for grant in decode_chain(Path(chain).read_bytes()))
    namespace = decode_chain(Path(chain).read_bytes())[0].pattern.split("/", 1)[0]
    services = [f"{namespace}/bench/s{i:05d}" for i in range(count)]
    rate = count / PERIOD_S
    total = int((seconds + _SPARE_S) * rate) + 1
    start_ns = time.time_ns() + int(_seal_time_s(entity, proof, total) * 1e9)
    beats = _sealed_beats(entity, proof, services, start_ns, rate, total)
    lanes = _lanes(count)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(BusClient(open_transport(url), entity))
            for _ in range(lanes)
        ]
        await anyio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
        # sealing took longer than foreseen: the beats already overdue are left out
        overdue = max(0, int((time.time_ns() - start_ns) / 1e9 * rate))
        print("ready", flush=True)

        async def beat(index: int, client: BusClient) -> None:
            try:
                for topic, frame in beats[index]:  # lastalive, state, status: Heartbeat's order
                    await client.transport.publish(topic, frame, persist=True)
            finally:
                limiter.release_on_behalf_of(index)

        async def lane(client: BusClient, first: int) -> None:
            async with anyio.create_task_group() as beating:
                for index in range(overdue + first, total, lanes):
                    await anyio.sleep(
                        max(0.0, (start_ns + index / rate * 1e9 - time.time_ns()) / 1e9)
                    )
                    await limiter.acquire_on_behalf_of(index)  # a place in flight
                    beating.start_soon(beat, index, client)

        limiter = CapacityLimiter(_IN_FLIGHT * lanes)
        async with anyio.create_task_group() as task_group:
            for number, client in enumerate(clients):
                task_group.start_soon(lane, client, number)


def _seal_time_s(entity: Entity, proof: tuple[bytes, ...], total: int) -> float:
    """How long sealing ``total`` beats will take here, with a margin (measured on 200)."""
    started = time.monotonic()
    _sealed_beats(entity, proof, ["ns/bench/probe"], time.time_ns(), 1.0, 200)
    return (time.monotonic() - started) / 200 * total * 2 + 2.0


def _sealed_beats(
    entity: Entity,
    proof: tuple[bytes, ...],
    services: list[str],
    start_ns: int,
    rate: float,
    total: int,
) -> list[list[tuple[str, bytes]]]:
    """Beat ``k`` of the run (service ``k mod N``, due ``k / rate`` s after ``start_ns``): its
    lastalive, state and status, with the payloads :meth:`bus.Heartbeat.beat` publishes."""
    seqs = [start_ns - 1 - i for i in range(len(services))]  # each service's run: started
    beats = []
    for k in range(total):
        service, seq = services[k % len(services)], seqs[k % len(services)]
        ts = start_ns + int(k / rate * 1e9)
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1e9))
        messages = (
            (LASTALIVE, PO_METADATA, {"val": f"{iso}.{ts % 10**9 // 1000:06d}Z", "ts": ts}),
            (STATE, PO_STATE, {"online": True, "seq": seq, "ts": seq}),
            (
                STATUS,
                PO_STATUS,
                {
                    "seq": seq,
                    "ts": ts,
                    "uptime_s": round((ts - seq) / 1e9, 3),
                    "interval_s": PERIOD_S,
                },
            ),
        )
        frames = []
        for suffix, number, value in messages:
            uri = f"{service}/{suffix}"
            po = PayloadObject.msgpack(value, number)
            frames.append((uri, seal(entity, uri, [po], persist=True, proof=proof, ts_ns=ts)))
        beats.append(frames)
    return beats


def _lanes(count: int) -> int:
    """Connections the publisher beats over: one per 1,000 services, at most 16."""
    return max(1, min(16, count // 1000))


@dataclass(frozen=True)
class _Measured:
    """The monitor over one window: CPU seconds, wall seconds, and what it received."""

    cpu_s: float
    wall_s: float
    delays_ns: list[int]
    services: int
    verified: int
    skipped: int
    check_s: float  # one signature check of a status frame, timed here right after the window


async def _measure(
    url: str, pattern: str, owner: Entity, warmup_s: float, window_s: float
) -> _Measured:
    fleet = _TimedFleet()
    monitor = FleetMonitor(
        lambda: BusClient(open_transport(url), owner), pattern, fleet, probe_s=1.0
    )
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(monitor.run)

        async def judge() -> None:
            while True:
                await anyio.sleep(JUDGE_S)
                fleet.judge(monitor.confirmed_ns)

        task_group.start_soon(judge)
        with anyio.fail_after(30):
            while not monitor.is_link_up:  # noqa: ASYNC110 (the monitor offers no event)
                await anyio.sleep(0.05)
        await anyio.sleep(warmup_s)
        fleet.delays_ns.clear()
        counted0 = (monitor.messages + monitor.rejected, monitor.skipped)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await anyio.sleep(window_s)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        verified = monitor.messages + monitor.rejected - counted0[0]
        skipped = monitor.skipped - counted0[1]
        task_group.cancel_scope.cancel()
    check_s = _signature_check_s(owner, pattern)
    delays = sorted(fleet.delays_ns)
    return _Measured(cpu, wall, delays, len(fleet.records), verified, skipped, check_s)


def _signature_check_s(owner: Entity, pattern: str) -> float:
    """CPU seconds of one Ed25519 check of a status frame's signature (the median of 5 x 200)."""
    uri = pattern.replace("*", "s/!meta/status")
    status = {"seq": 1, "ts": time.time_ns(), "uptime_s": 1.0, "interval_s": PERIOD_S}
    envelope = parse(seal(owner, uri, [PayloadObject.msgpack(status, PO_STATUS)], persist=True))
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(200):
            envelope.check_signature()
        rounds.append((time.process_time() - started) / 200)
    return statistics.median(rounds)


HEADER = (
    "  N       beats/s  CPU       raw CPU   ratio   floor     µs/beat  RSS      delay p50  "
    "p99        mean       services  verified/s skipped/s frames/s raw/s"
)


def _row(count: int, ours: _Measured, raw_frames: int, raw_cpu_s: float, raw_wall_s: float) -> str:
    """One N: the monitor's CPU share next to the bare library's, receiving the same frames."""
    delays, wall = ours.delays_ns, ours.wall_s
    if not delays:
        return f"{count:>7}  no heartbeat arrived"
    p50, p99 = delays[len(delays) // 2] / 1e6, delays[int(len(delays) * 0.99)] / 1e6
    share, raw_share = ours.cpu_s / wall, raw_cpu_s / raw_wall_s
    ratio = f"{share / raw_share:>5.1f}x" if raw_share > 0 else "    —"
    floor = raw_share + len(delays) / wall * ours.check_s  # raw + one signature check a beat
    return (
        f"{count:>7}  {len(delays) / wall:>8.0f}  "
        f"{100 * share:>6.1f} %  {100 * raw_share:>6.1f} %  "
        f"{ratio}  {100 * floor:>6.1f} %  {1e6 * ours.cpu_s / len(delays):>7.0f}  "
        f"{_rss_mib():>4.0f} MiB  "
        f"{p50:>7.1f} ms  {p99:>7.1f} ms  {statistics.fmean(delays) / 1e6:>7.1f} ms  "
        f"{ours.services:>8}  {ours.verified / wall:>8.0f}  {ours.skipped / wall:>8.0f}  "
        f"{(ours.verified + ours.skipped) / wall:>7.0f} {raw_frames / raw_wall_s:>6.0f}"
    )


def _grant(owner: Entity, member: Entity, pattern: str) -> Grant:
    now = time.time_ns()
    return Grant.create(
        owner,
        member.public_key,
        pattern,
        "P",
        ttl=0,
        expires_ns=now + _HOUR_NS,
        created_ns=now - 1,
    )


def run_bench(
    counts: tuple[int, ...],
    seconds: float,
    bus_url: str | None,
    progress: Callable[[str], None],
) -> str:
    """Measure each N in ``counts``; return the table."""
    owner, member = Entity.generate(), Entity.generate()
    pattern = f"{owner.key_text}/bench/*"
    lines = [
        f"monitor of N services beating every {PERIOD_S:g} s (aggregate rate; target N/10 beats/s)"
        " — CPU: share of one core; raw: the bare library receiving the same frames",
        HEADER,
    ]
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-hb-") as tmp:
        key, chain = Path(tmp, "member.key"), Path(tmp, "member.chain")
        member.save(key)
        chain.write_bytes(encode_chain([_grant(owner, member, pattern)]))
        bus, url = _bus(bus_url, Path(tmp))
        try:
            for count in counts:
                progress(f"N = {count}: {seconds:g} s")
                lines.append(_run_one(url, key, chain, pattern, owner, count, seconds))
        finally:
            if bus is not None:
                bus.terminate()
                bus.wait()
    return "\n".join(lines)


def _run_one(
    url: str, key: Path, chain: Path, pattern: str, owner: Entity, count: int, seconds: float
) -> str:
    """The publisher and the raw receiver in their own processes, the monitor in this one."""
    warmup_s = min(PERIOD_S, seconds / 3)
    window_s = seconds - warmup_s - 1
    prefix = pattern.removesuffix("*")
    qos = "0" if url.startswith("zmq://") else "1"  # our MQTT transport's default QoS
    publisher = _start("publish", url, str(key), str(chain), str(count), str(seconds + 5))
    raw = None
    try:
        raw = _start("raw", url, prefix, qos, str(warmup_s + 0.5), str(window_s))
        measured = anyio.run(_measure, url, pattern, owner, warmup_s, window_s)
        assert raw.stdout is not None
        raw_frames, raw_cpu_s = raw.stdout.read().split()
    finally:
        for process in (publisher, raw):
            if process is not None:
                process.kill()
                process.wait()
                if process.stdout is not None:
                    process.stdout.close()
    return _row(count, measured, int(raw_frames), float(raw_cpu_s), window_s)


def _start(*args: str) -> subprocess.Popen[bytes]:
    """``python -m proxy.bench.heartbeats ARGS...``, once it has said it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.bench.heartbeats", *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"the benchmark's {args[0]} process died before it was ready")
    return process


def _bus(bus_url: str | None, tmp: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """``bus_url``, or a ZeroMQ forwarder (``modelbus bus``) started on free loopback ports."""
    if bus_url is not None:
        return None, bus_url
    for _ in range(20):
        port = free_port_block(3)
        url = f"zmq://127.0.0.1:{port}"
        with (tmp / "bus.log").open("ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "bus", "--listen", url],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port + 2), timeout=0.2).close()
                return process, url
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise TransportError("could not start a ZeroMQ forwarder for the benchmark")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "publish":
        _, _, url, key, chain, count, seconds = sys.argv
        anyio.run(_publish, url, key, chain, int(count), float(seconds))
    elif len(sys.argv) == 7 and sys.argv[1] == "raw":
        _, _, url, prefix, qos, warmup, window = sys.argv
        frames, cpu_s = raw_receive(url, prefix, int(qos), float(warmup), float(window))
        print(frames, cpu_s, flush=True)
    else:
        sys.exit(__doc__)
