"""The monitor's receive path (proxy/dashboard/monitor.py): what it leaves unverified cannot make a
service look alive, and whatever changes is verified — forged frames on a real (memory) bus."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from bus import PO_METADATA, PO_STATE, PO_STATUS, BusClient, Heartbeat, PayloadObject
from bus.errors import TransportError
from proxy.dashboard import Fleet, FleetMonitor
from tests.bus.helpers import Namespace, RecordingTransport, connect, memory_url
from tests.proxy.dashboard.helpers import until
from transports import open_transport


@asynccontextmanager
async def following(url: str, namespace: Namespace) -> AsyncIterator[FleetMonitor]:
    monitor = FleetMonitor(lambda: connect(url, namespace.as_member), namespace.uri("*"), Fleet())
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(monitor.run)
        await until(lambda: monitor.is_link_up, timeout_s=10, what="the monitor's link up")
        yield monitor
        task_group.cancel_scope.cancel()


def counted(monitor: FleetMonitor) -> tuple[int, int, int]:
    return monitor.messages, monitor.skipped, monitor.rejected


async def publish(
    monitor: FleetMonitor, client: BusClient, uri: str, value: dict[str, Any], number: str
) -> None:
    """Publish ``value`` signed, and wait until the monitor has dealt with it."""
    frame = client.seal(uri, [PayloadObject.msgpack(value, number)], persist=True)
    await send(monitor, client, uri, frame)


async def forge(
    monitor: FleetMonitor, client: BusClient, uri: str, value: dict[str, Any], number: str
) -> None:
    """Publish ``value`` as the client would, but with a broken signature."""
    frame = bytearray(client.seal(uri, [PayloadObject.msgpack(value, number)], persist=True))
    frame[-1] ^= 0x55
    await send(monitor, client, uri, bytes(frame))


async def send(monitor: FleetMonitor, client: BusClient, uri: str, frame: bytes) -> None:
    before = sum(counted(monitor))
    await client.transport.publish(uri, frame, persist=True)
    await until(lambda: sum(counted(monitor)) > before, timeout_s=5, what="the frame taken")


async def test_repeats_skipped_changes_verified_forgeries_never_alive(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "a")
    member = namespace.member("svc/*", "P")
    heartbeat = Heartbeat(service)
    async with following(url, namespace) as monitor, connect(url, member) as client:
        await heartbeat.beat(client)
        await until(lambda: counted(monitor) == (3, 0, 0), timeout_s=5, what="first beat")
        record = monitor.fleet.records[service]
        assert record.online is True

        await heartbeat.beat(client)  # lastalive (the status beats) and the birth: skipped
        await until(lambda: counted(monitor) == (4, 2, 0), timeout_s=5, what="second beat")
        alive_ns = record.last_alive_ns

        # a forged repeat of the birth is skipped: it says nothing new
        birth = {"online": True, "seq": heartbeat.seq, "ts": heartbeat.seq}
        await forge(monitor, client, heartbeat.uri("!meta/state"), birth, PO_STATE)
        assert counted(monitor) == (4, 3, 0)
        assert record.online is True and record.untrusted is None

        # a forged change of state is verified, rejected, and not applied
        death = {"online": False, "seq": heartbeat.seq, "ts": time.time_ns()}
        await forge(monitor, client, heartbeat.uri("!meta/state"), death, PO_STATE)
        assert counted(monitor) == (4, 3, 1)
        assert record.online is True and record.untrusted is not None

        # the real death after a run of repeats is verified and applied
        await publish(monitor, client, heartbeat.uri("!meta/state"), death, PO_STATE)
        assert counted(monitor) == (5, 3, 1)
        assert record.online is False and record.untrusted is None
        assert record.judge(time.time_ns())[0] == "retired"

        # a forged status with a fresh time for the dead service: verified, rejected, never alive
        now_ns = time.time_ns()
        status = {"seq": heartbeat.seq, "ts": now_ns, "uptime_s": 1.0, "interval_s": 10.0}
        await forge(monitor, client, heartbeat.uri("!meta/status"), status, PO_STATUS)
        assert counted(monitor) == (5, 3, 2)
        assert record.last_alive_ns == alive_ns
        assert record.judge(time.time_ns())[0] == "untrusted"

        # a forged lastalive while the last trusted status is fresh: skipped, changes nothing
        lastalive = {"val": "now", "ts": now_ns}
        await forge(monitor, client, heartbeat.uri("!meta/lastalive"), lastalive, PO_METADATA)
        assert counted(monitor) == (5, 4, 2)
        assert record.last_alive_ns == alive_ns


async def test_a_forged_lastalive_is_checked_once_the_status_stops(namespace: Namespace) -> None:
    """A lastalive is left unverified only while the service's own status beats; a service whose
    status stopped (a SIGKILL on ZeroMQ) has every lastalive verified: a forged one is rejected."""
    url = memory_url()
    service = namespace.uri("svc", "b")
    member = namespace.member("svc/*", "P")
    heartbeat = Heartbeat(service, interval_s=0.2)  # fresh for 1.5 periods: 0.3 s
    async with following(url, namespace) as monitor, connect(url, member) as client:
        await heartbeat.beat(client)
        await until(lambda: counted(monitor) == (3, 0, 0), timeout_s=5, what="first beat")
        record = monitor.fleet.records[service]
        alive_ns = record.last_alive_ns
        await anyio.sleep(0.4)  # the status is no longer fresh
        lastalive = {"val": "now", "ts": time.time_ns()}
        await forge(monitor, client, heartbeat.uri("!meta/lastalive"), lastalive, PO_METADATA)
        assert counted(monitor) == (3, 0, 1)
        assert record.last_alive_ns == alive_ns
        assert record.judge(time.time_ns())[0] == "untrusted"


class FirstQueryFails(RecordingTransport):
    """The memory transport, whose first query on the first connection times out."""

    failed = False

    async def query(self, pattern: str, *, timeout_s: float = 5.0) -> list[Any]:
        if not FirstQueryFails.failed:
            FirstQueryFails.failed = True
            raise TransportError(f"query {pattern} did not finish within {timeout_s:g} s")
        return await super().query(pattern, timeout_s=timeout_s)


async def test_a_failed_resync_reconnects_instead_of_ending_the_monitor(
    namespace: Namespace,
) -> None:
    url = memory_url()
    viewer = namespace.as_member
    monitor = FleetMonitor(
        lambda: BusClient(FirstQueryFails(open_transport(url)), viewer.entity),
        namespace.uri("*"),
        Fleet(),
    )
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(monitor.run)
        await until(lambda: monitor.is_link_up, timeout_s=10, what="up after a reconnect")
        task_group.cancel_scope.cancel()
    assert FirstQueryFails.failed
    assert monitor.reconnects == 1
