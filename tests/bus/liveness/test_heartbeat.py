"""Liveness: what a Heartbeat publishes, how the monitor reads it, and deaths — clean, by the
MQTT Will of a killed process, and by staleness when beats stop."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from bus import (
    PO_METADATA,
    PO_STATE,
    PO_STATUS,
    BusClient,
    Heartbeat,
    ServiceState,
    encode_chain,
    service_states,
)
from bus.liveness.heartbeat import LASTALIVE, STATE, STATUS
from bus.liveness.monitor import evaluate
from tests.bus.helpers import Member, Namespace, bus_url_for, connect, memory_url, next_message
from tests.fixtures.mosquitto import MosquittoBroker

SCRIPT = Path(__file__).with_name("liveness_process.py")
S = 10**9  # ns per second


@pytest.fixture(params=["memory", "zmq", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def bus_url(request: pytest.FixtureRequest) -> str:
    return bus_url_for(request, request.param)


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


def service_member(namespace: Namespace) -> Member:
    return namespace.member("svc/*", "P")


async def states(monitor: BusClient, namespace: Namespace, **options: float) -> list[ServiceState]:
    return await service_states(monitor, namespace.uri("svc", "*"), **options)


async def wait_for_state(
    monitor: BusClient,
    namespace: Namespace,
    condition: Callable[[list[ServiceState]], bool],
    *,
    timeout_s: float,
    **options: float,
) -> list[ServiceState]:
    """Poll the monitor (bounded) until ``condition`` holds; fail with the last answer."""
    found: list[ServiceState] = []
    try:
        with anyio.fail_after(timeout_s):
            while True:
                found = await states(monitor, namespace, **options)
                if condition(found):
                    return found
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"liveness condition not reached in {timeout_s} s: {found}") from None


# -- what a heartbeat publishes --------------------------------------------------------------------


async def test_heartbeat_publishes_lastalive_state_and_status(
    bus_url: str, namespace: Namespace
) -> None:
    service = namespace.uri("svc", "thermal")
    heartbeat = Heartbeat(service, status=lambda: {"models": 3, "queue": 0})
    before = time.time_ns()
    async with (
        connect(bus_url, service_member(namespace), will=heartbeat.will()) as client,
        connect(bus_url, namespace.as_member) as monitor,
    ):
        await client.require_task_group().start(heartbeat.run, client)
        after = time.time_ns()
        [lastalive] = await monitor.query(f"{service}/{LASTALIVE}")
        [state] = await monitor.query(f"{service}/{STATE}")
        [status] = await monitor.query(f"{service}/{STATUS}")
        found = await states(monitor, namespace)

    assert lastalive.persist and lastalive.payload().number == PO_METADATA
    value = lastalive.value(PO_METADATA)
    assert set(value) == {"val", "ts"}
    assert before <= value["ts"] <= after  # nanoseconds
    parsed = datetime.fromisoformat(value["val"].replace("Z", "+00:00"))
    assert abs(parsed.timestamp() * S - value["ts"]) < 10**6  # the same instant, µs precision

    assert state.persist and state.payload().number == PO_STATE
    assert state.value(PO_STATE) == {"online": True, "seq": heartbeat.seq, "ts": heartbeat.seq}

    assert status.persist and status.payload().number == PO_STATUS
    facts = status.value(PO_STATUS)
    assert facts["seq"] == heartbeat.seq and before <= facts["ts"] <= after
    assert facts["uptime_s"] >= 0 and (facts["models"], facts["queue"]) == (3, 0)

    [one] = found
    assert (one.service, one.is_alive, one.reason) == (service, True, "alive")
    assert one.seq == heartbeat.seq and one.last_alive_ns == value["ts"]
    assert one.status["models"] == 3


async def test_beats_repeat_every_interval(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "fast")
    heartbeat = Heartbeat(service, interval_s=0.02)
    async with (
        connect(url, service_member(namespace)) as client,
        connect(url, namespace.as_member) as monitor,
        monitor.subscribe(f"{service}/{LASTALIVE}") as beats,
    ):
        await client.require_task_group().start(heartbeat.run, client)
        stamps = [(await next_message(beats)).value()["ts"] for _ in range(3)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


@pytest.mark.mqtt
async def test_the_birth_is_announced_again_as_soon_as_the_broker_is_back(
    mosquitto: MosquittoBroker, mosquitto_url: str, namespace: Namespace
) -> None:
    """The session broker keeps nothing across a restart: without the re-announcement on
    reconnect the service would be unknown ("never announced") for a whole interval (60 s)."""
    service = namespace.uri("svc", "restarted")
    heartbeat = Heartbeat(service, interval_s=60)
    try:
        async with (
            connect(mosquitto_url, service_member(namespace), will=heartbeat.will()) as client,
        ):
            await client.require_task_group().start(heartbeat.run, client)
            restarted_ns = time.time_ns()
            await anyio.to_thread.run_sync(mosquitto.restart)
            async with connect(mosquitto_url, namespace.as_member) as monitor:
                # lastalive and state are two publications: wait for the pair, not the first
                [state] = await wait_for_state(
                    monitor,
                    namespace,
                    lambda found: _reannounced(found, restarted_ns),
                    timeout_s=15,
                )
    finally:
        mosquitto.start()
    assert (state.is_alive, state.seq) == (True, heartbeat.seq)
    assert state.last_alive_ns is not None and state.last_alive_ns > restarted_ns


def _reannounced(found: list[ServiceState], since_ns: int) -> bool:
    return bool(found) and found[0].is_alive and (found[0].last_alive_ns or 0) > since_ns


async def test_a_clean_close_reports_died(bus_url: str, namespace: Namespace) -> None:
    service = namespace.uri("svc", "thermal")
    heartbeat = Heartbeat(service)
    async with connect(bus_url, namespace.as_member) as monitor:
        client = connect(bus_url, service_member(namespace), will=heartbeat.will())
        async with client:
            await client.require_task_group().start(heartbeat.run, client)
            [alive] = await states(monitor, namespace)
            assert alive.is_alive
        [dead] = await states(monitor, namespace)
        [state] = await monitor.query(f"{service}/{STATE}")
    assert (dead.is_alive, dead.reason, dead.seq) == (False, "died", heartbeat.seq)
    death = state.value(PO_STATE)
    assert (death["online"], death["seq"]) == (False, heartbeat.seq)
    assert death["ts"] > heartbeat.seq  # the moment of the shutdown, not the run's start


async def test_a_service_whose_beats_stop_becomes_stale(namespace: Namespace) -> None:
    url = memory_url()
    heartbeat = Heartbeat(namespace.uri("svc", "hung"))
    async with (
        connect(url, service_member(namespace)) as client,
        connect(url, namespace.as_member) as monitor,
    ):
        await heartbeat.beat(client)  # one beat, then silence (a hung process)
        [alive] = await states(monitor, namespace, stale_after_s=1)
        assert alive.is_alive
        [dead] = await wait_for_state(
            monitor, namespace, lambda s: not s[0].is_alive, timeout_s=10, stale_after_s=1
        )
    assert dead.reason.startswith("stale")
    assert dead.seq == heartbeat.seq


async def test_a_late_death_of_an_earlier_run_is_ignored(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "thermal")
    earlier = Heartbeat(service)
    current = Heartbeat(service)
    assert current.seq > earlier.seq
    member = service_member(namespace)
    async with (
        connect(url, member) as client,
        connect(url, namespace.as_member) as monitor,
    ):
        await current.beat(client)
        will_uri, will_pos = earlier.will()  # the broker publishes the old run's Will late
        await client.publish(will_uri, will_pos, persist=True)
        [state] = await states(monitor, namespace)
        assert (state.is_alive, state.seq) == (True, current.seq)
        await current.beat(client)  # and the next beat restores the birth state
        [message] = await monitor.query(f"{service}/{STATE}")
        assert message.value(PO_STATE)["online"] is True


async def test_monitor_lists_each_service_under_the_pattern(namespace: Namespace) -> None:
    url = memory_url()
    member = service_member(namespace)
    async with connect(url, member) as client, connect(url, namespace.as_member) as monitor:
        for name in ("a", "b"):
            await Heartbeat(namespace.uri("svc", name)).beat(client)
        gone = Heartbeat(namespace.uri("svc", "c"))
        await client.publish(*gone.will(), persist=True)  # a death with no birth seen
        found = await states(monitor, namespace)
    assert [(s.service.rsplit("/", 1)[1], s.is_alive) for s in found] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    assert found[2].reason == "never announced lastalive"


# -- the decision rule --------------------------------------------------------------------------

NOW = 1_700_000_000 * S
SEQ, OLD_SEQ = 1_699_999_000 * S, 1_600_000_000 * S


@pytest.mark.parametrize(
    ("lastalive", "state", "status", "alive", "reason", "seq"),
    [
        ({"ts": NOW - 5 * S}, {"online": True, "seq": SEQ}, {"seq": SEQ}, True, "alive", SEQ),
        ({"ts": NOW}, None, None, True, "alive", None),
        ({"ts": NOW}, None, {"seq": SEQ}, True, "alive", SEQ),
        ({"ts": NOW - 31 * S}, {"online": True, "seq": SEQ}, None, False, "stale (31 s)", SEQ),
        ({"ts": NOW - 30 * S}, {"online": True, "seq": SEQ}, None, True, "alive", SEQ),
        (None, {"online": True, "seq": SEQ}, None, False, "never announced lastalive", SEQ),
        ({"ts": "yesterday"}, None, None, False, "never announced lastalive", None),
        # The Will (or a clean shutdown) of the current run: dead even with a fresh lastalive.
        ({"ts": NOW}, {"online": False, "seq": SEQ}, {"seq": SEQ}, False, "died", SEQ),
        # A late Will of an earlier run: ignored, the lastalive decides.
        ({"ts": NOW}, {"online": False, "seq": OLD_SEQ}, {"seq": SEQ}, True, "alive", SEQ),
        (
            {"ts": NOW - 60 * S},
            {"online": False, "seq": OLD_SEQ},
            {"seq": SEQ},
            False,
            "stale (60 s)",
            SEQ,
        ),
        # A death without any status to tell the current run: not trusted as a death.
        ({"ts": NOW}, {"online": False, "seq": SEQ}, None, True, "alive", None),
    ],
)
def test_evaluate(
    lastalive: dict[str, object] | None,
    state: dict[str, object] | None,
    status: dict[str, object] | None,
    alive: bool,
    reason: str,
    seq: int | None,
) -> None:
    result = evaluate("ns/svc/x", lastalive, state, status, now_ns=NOW)
    assert (result.is_alive, result.reason, result.seq) == (alive, reason, seq)
    assert result.status == (status or {})


def test_evaluate_uses_the_given_staleness() -> None:
    result = evaluate("s", {"ts": NOW - 2 * S}, None, None, now_ns=NOW, stale_after_s=1)
    assert not result.is_alive and result.age_s(NOW) == 2.0


# -- real processes: death by Will (MQTT) and by staleness (ZeroMQ) ------------------------------


@asynccontextmanager
async def liveness_process(
    url: str,
    member: Member,
    service: str,
    tmp_path: Path,
    *,
    interval_s: float,
    instance: str | None = None,
) -> AsyncIterator[tuple[Process, int]]:
    """Run tests/bus/liveness/liveness_process.py (as ``instance`` of the service, if named);
    yield it with its heartbeat seq once it is ready."""
    name = instance or "svc"
    entity_file, chain_file = tmp_path / f"{name}.ent", tmp_path / f"{name}.chain"
    member.entity.save(entity_file)
    chain_file.write_bytes(encode_chain(member.chain))
    log = tmp_path / f"liveness_process-{name}.log"
    command = [sys.executable, str(SCRIPT), url, str(entity_file), str(chain_file), service]
    command += [str(interval_s), *([instance] if instance else [])]
    with log.open("wb") as stderr:
        process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
    try:
        output = b""
        assert process.stdout is not None
        with anyio.fail_after(30):
            while b"\n" not in output:
                try:
                    output += await process.stdout.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"the process exited: {log.read_text()}") from None
        words = output.decode().split()
        assert words[0] == "ready", output
        yield process, int(words[1])
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        await process.aclose()


@pytest.mark.mqtt
async def test_a_killed_process_is_reported_dead_through_its_will(
    request: pytest.FixtureRequest, namespace: Namespace, tmp_path: Path
) -> None:
    url = bus_url_for(request, "mqtt")
    service = namespace.uri("svc", "doomed")
    async with (
        connect(url, namespace.as_member) as monitor,
        liveness_process(
            url, service_member(namespace), service, tmp_path, interval_s=10
        ) as running,
    ):
        process, seq = running
        [alive] = await states(monitor, namespace)
        assert (alive.is_alive, alive.seq, alive.status["role"]) == (True, seq, "test")
        process.kill()  # SIGKILL: no clean shutdown, only the broker's Will
        assert await process.wait() == -9
        # The lastalive stays fresh for 30 s: only the Will can tell so soon.
        [dead] = await wait_for_state(monitor, namespace, lambda s: not s[0].is_alive, timeout_s=10)
    assert (dead.reason, dead.seq) == ("died", seq)


async def test_a_killed_process_goes_stale_on_zeromq(
    request: pytest.FixtureRequest, namespace: Namespace, tmp_path: Path
) -> None:
    """ZeroMQ has no Will: the monitor finds the death by the lastalive going stale."""
    url = bus_url_for(request, "zmq")
    service = namespace.uri("svc", "doomed")
    stale_after_s = 2.0
    async with (
        connect(url, namespace.as_member) as monitor,
        liveness_process(
            url, service_member(namespace), service, tmp_path, interval_s=0.2
        ) as running,
    ):
        process, seq = running
        [alive] = await states(monitor, namespace, stale_after_s=stale_after_s)
        assert (alive.is_alive, alive.seq) == (True, seq)
        process.kill()
        await process.wait()
        [dead] = await wait_for_state(
            monitor,
            namespace,
            lambda s: not s[0].is_alive and s[0].reason.startswith("stale"),
            timeout_s=15,
            stale_after_s=stale_after_s,
        )
    assert dead.seq == seq
