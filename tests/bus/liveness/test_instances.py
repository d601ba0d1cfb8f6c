"""Named instances of one service (bus/liveness/instances.py, and the instance parts of
bus/liveness/heartbeat.py, monitor.py and plain_status.py): each beats under its instance
segment, the service is alive while any instance is, a killed instance's Will makes it dead and
leaves the service alive, and the plain JSON lists the instances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import PO_METADATA, PO_MSGPACK, PO_STATE, PO_STATUS, Heartbeat, PayloadObject
from bus.errors import InvalidUri
from bus.liveness import InstanceView, aggregate, plain_status
from bus.liveness.heartbeat import LASTALIVE, STATE, STATUS, record
from bus.liveness.plain_status import PLAIN_STATUS
from bus.message import Message
from tests.bus.helpers import Namespace, bus_url_for, connect, memory_url
from tests.bus.liveness.test_heartbeat import liveness_process, states, wait_for_state
from tests.bus.liveness.test_plain_status import read_retained

S = 10**9
NOW = 1_700_000_000 * S


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


def test_records_of_a_named_instance_sit_under_its_segment() -> None:
    assert record(LASTALIVE, None) == "!meta/lastalive"
    assert record(STATE, "eu-1") == "!meta/instances/eu-1/state"
    assert record(STATUS, "b.2") == "!meta/instances/b.2/status"


@pytest.mark.parametrize("name", ["a/b", "+", "*", "!x", ""])
def test_an_instance_name_must_be_one_plain_segment(namespace: Namespace, name: str) -> None:
    with pytest.raises(InvalidUri):
        Heartbeat(namespace.uri("svc", "x"), instance=name)


async def test_an_instance_beats_under_its_segment_and_refreshes_the_service_lastalive(
    namespace: Namespace,
) -> None:
    url = memory_url()
    service = namespace.uri("svc", "thermal")
    heartbeat = Heartbeat(service, instance="eu-1", status=lambda: {"role": "a"})
    assert heartbeat.will()[0] == f"{service}/!meta/instances/eu-1/state"
    async with (
        connect(url, namespace.member("svc/*", "P")) as client,
        connect(url, namespace.as_member) as monitor,
    ):
        await heartbeat.beat(client)
        published = {message.uri: message for message in await monitor.query(f"{service}/*")}
    own = f"{service}/!meta/instances/eu-1"
    assert set(published) == {
        f"{service}/{LASTALIVE}",
        f"{own}/lastalive",
        f"{own}/state",
        f"{own}/status",
    }  # no S/!meta/state nor S/!meta/status: those are an unnamed proxy's
    state = published[f"{own}/state"].value(PO_STATE)
    assert state == {"online": True, "seq": heartbeat.seq, "ts": heartbeat.seq}
    assert published[f"{service}/{LASTALIVE}"].value() == published[f"{own}/lastalive"].value()


async def test_an_unnamed_heartbeat_keeps_its_three_records(namespace: Namespace) -> None:
    """The only proxy of a service publishes what it always did, nothing under instances."""
    url = memory_url()
    service = namespace.uri("svc", "solo")
    async with (
        connect(url, namespace.member("svc/*", "P")) as client,
        connect(url, namespace.as_member) as monitor,
    ):
        await Heartbeat(service).beat(client)
        topics = {message.uri for message in await monitor.query(f"{service}/*")}
        [solo] = await states(monitor, namespace)
    assert topics == {f"{service}/{suffix}" for suffix in (LASTALIVE, STATE, STATUS)}
    assert (solo.reason, solo.instances) == ("alive", ())


@pytest.mark.parametrize("kind", ["memory", "zmq", pytest.param("mqtt", marks=pytest.mark.mqtt)])
async def test_the_monitor_lists_instances_and_a_clean_shutdown_leaves_the_service_alive(
    request: pytest.FixtureRequest, namespace: Namespace, kind: str
) -> None:
    url = bus_url_for(request, kind)
    service = namespace.uri("svc", "thermal")
    member = namespace.member("svc/*", "P")
    first, second = (Heartbeat(service, instance=name, interval_s=60) for name in ("a", "b"))
    async with (
        connect(url, member) as one,
        connect(url, member) as two,
        connect(url, namespace.as_member) as monitor,
    ):
        await one.require_task_group().start(first.run, one)
        async with anyio.create_task_group() as group:
            await group.start(second.run, two)
            [both] = await states(monitor, namespace)
            group.cancel_scope.cancel()  # b shuts down cleanly: it publishes its own death
        [one_left] = await states(monitor, namespace)
    assert (both.service, both.is_alive, both.reason) == (service, True, "alive (2 of 2 instances)")
    assert [(i.service, i.is_alive, i.seq) for i in both.instances] == [
        ("a", True, first.seq),
        ("b", True, second.seq),
    ]
    assert (one_left.is_alive, one_left.reason) == (True, "alive (1 of 2 instances)")
    assert [(i.service, i.is_alive, i.reason) for i in one_left.instances] == [
        ("a", True, "alive"),
        ("b", False, "died"),
    ]


def test_aggregate_is_alive_while_any_instance_is() -> None:
    fresh = {"lastalive": {"ts": NOW - S}, "state": {"online": True, "seq": 1}}
    died = {
        "lastalive": {"ts": NOW - S},
        "state": {"online": False, "seq": 2},
        "status": {"seq": 2},
    }
    stale = {"lastalive": {"ts": NOW - 60 * S}}
    one_alive = aggregate("ns/s", {"a": fresh, "b": died}, now_ns=NOW)
    assert (one_alive.is_alive, one_alive.reason) == (True, "alive (1 of 2 instances)")
    assert one_alive.last_alive_ns == NOW - S and one_alive.seq is None
    none_alive = aggregate("ns/s", {"b": died, "c": stale}, now_ns=NOW)
    assert not none_alive.is_alive
    assert none_alive.reason == "no instance alive (b: died, c: stale (60 s))"
    many = aggregate("ns/s", {f"i{n:02}": stale for n in range(20)}, now_ns=NOW)
    assert many.reason.endswith("i07: stale (60 s), 12 more)") and len(many.instances) == 20


async def test_a_reader_without_the_instances_grant_judges_by_the_service_lastalive(
    namespace: Namespace,
) -> None:
    url = memory_url()
    service = namespace.uri("svc", "thermal")
    reader = namespace.member("svc/*/!meta/+", "C*")  # not svc/*/!meta/instances/+/+
    async with (
        connect(url, namespace.member("svc/*", "P")) as client,
        connect(url, reader) as monitor,
    ):
        await Heartbeat(service, instance="a").beat(client)
        [seen] = await states(monitor, namespace)
    assert (seen.service, seen.is_alive, seen.reason, seen.instances) == (
        service,
        True,
        "alive",
        (),
    )


async def test_the_instance_view_follows_its_siblings(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "thermal")
    member = namespace.member("svc/*", "C*P")
    view = InstanceView(service)
    first, second = (Heartbeat(service, instance=name, interval_s=60) for name in ("a", "b"))
    async with connect(url, member) as one, connect(url, member) as two:
        await first.beat(one)  # persisted before the view starts: read by its query
        async with anyio.create_task_group() as group:
            await group.start(view.run, one)
            await group.start(second.run, two)  # live
            with anyio.fail_after(10):
                while len(view.records) < 2:  # noqa: ASYNC110 (another task's messages)
                    await anyio.sleep(0.02)
            online = view.snapshot()
            group.cancel_scope.cancel()
    assert [(entry["instance"], entry["online"]) for entry in online] == [("a", True), ("b", True)]
    assert all(isinstance(entry["ts"], int) for entry in online)


async def test_the_instance_view_without_a_grant_stays_empty(
    namespace: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    url = memory_url()
    service = namespace.uri("svc", "thermal")
    view = InstanceView(service)
    async with connect(url, namespace.member("svc/*", "P")) as client:
        await client.require_task_group().start(view.run, client)
    assert view.snapshot() == [] and "not listed in its plain status" in caplog.text


def test_the_plain_document_lists_the_instances() -> None:
    status = {"seq": 7, "ts": NOW, "uptime_s": 1.0, "interval_s": 10.0, "models": []}
    known = [
        {"instance": "b", "online": False, "ts": NOW - 40 * S},
        {"instance": "a", "online": True, "ts": 1},  # itself, as its view saw it: replaced
        {"instance": 3, "online": True},  # not a name: left out
    ]
    document = json.loads(
        plain_status.encode("ns/s", status, online=True, instance="a", instances=known)
    )
    assert document["instance"] == "a" and document["online"] is True
    assert document["instances"] == [
        {"instance": "a", "online": True, "ts": NOW, "time": "2023-11-14T22:13:20.000000Z"},
        {
            "instance": "b",
            "online": False,
            "ts": NOW - 40 * S,
            "time": "2023-11-14T22:12:40.000000Z",
        },
    ]
    alone = json.loads(plain_status.encode("ns/s", status, online=False, instance="a"))
    assert alone["online"] is False and [i["instance"] for i in alone["instances"]] == ["a"]


# -- real processes on Mosquitto: the Will of one instance, then of both ---------------------------


async def listed(url: str, topic: str, expected: dict[str, bool]) -> None:
    """Wait (bounded) until the retained plain JSON lists ``expected`` instances (name: online),
    read by a plain paho subscriber."""
    found: dict[str, bool] = {}
    with anyio.fail_after(10):
        while found != expected:
            document: dict[str, Any] = await anyio.to_thread.run_sync(read_retained, url, topic)
            found = {entry["instance"]: entry["online"] for entry in document["instances"]}
            await anyio.sleep(0.1)


@pytest.mark.mqtt
async def test_killed_instances_die_by_their_wills_and_the_service_with_the_last(
    request: pytest.FixtureRequest, namespace: Namespace, tmp_path: Path
) -> None:
    url = bus_url_for(request, "mqtt")
    service = namespace.uri("svc", "thermal")
    member = namespace.member("svc/*", "C*P")  # C: each instance lists its siblings
    async with (
        connect(url, namespace.as_member) as monitor,
        liveness_process(url, member, service, tmp_path, interval_s=0.5, instance="a") as a,
        liveness_process(url, member, service, tmp_path, interval_s=0.5, instance="b") as b,
    ):
        (process_a, seq_a), (process_b, seq_b) = a, b
        [both] = await wait_for_state(
            monitor, namespace, lambda s: s[0].reason == "alive (2 of 2 instances)", timeout_s=10
        )
        assert [(i.service, i.seq) for i in both.instances] == [("a", seq_a), ("b", seq_b)]
        topic = f"{service}/{PLAIN_STATUS}"
        await listed(url, topic, {"a": True, "b": True})

        process_a.kill()  # SIGKILL: only the broker's Will tells, long before 30 s of silence
        assert await process_a.wait() == -9
        [one_left] = await wait_for_state(
            monitor, namespace, lambda s: s[0].reason == "alive (1 of 2 instances)", timeout_s=10
        )
        assert [(i.service, i.is_alive, i.reason) for i in one_left.instances] == [
            ("a", False, "died"),
            ("b", True, "alive"),
        ]
        await listed(url, topic, {"a": False, "b": True})  # b lists a as offline

        process_b.kill()
        assert await process_b.wait() == -9
        [dead] = await wait_for_state(monitor, namespace, lambda s: not s[0].is_alive, timeout_s=10)
    assert dead.reason == "no instance alive (a: died, b: died)"
    assert [(i.service, i.seq) for i in dead.instances] == [("a", seq_a), ("b", seq_b)]


# -- hostile records: a verified signer may still send anything ---------------------------------

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
PACKABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
FIELDS = st.dictionaries(st.sampled_from(["ts", "seq", "online", "val", "interval_s"]), VALUES)
RECORDS = st.dictionaries(st.sampled_from(["lastalive", "state", "status"]), FIELDS)


@given(st.dictionaries(st.text(min_size=1, max_size=4), RECORDS, max_size=4))
def test_aggregate_judges_any_records_without_failing(instances: dict[str, Any]) -> None:
    judged = aggregate("ns/s", instances, now_ns=NOW)
    assert judged.is_alive == any(i.is_alive for i in judged.instances)
    assert [i.service for i in judged.instances] == sorted(instances)


@given(
    st.sampled_from(["lastalive", "state", "status", "status.json", "x"]),
    st.sampled_from(["a", "b.c", "+"]),
    st.sampled_from([PO_METADATA, PO_STATE, PO_STATUS, PO_MSGPACK]),
    st.binary(max_size=24) | PACKABLE.map(PayloadObject.msgpack).map(lambda po: po.data),
)
def test_the_instance_view_keeps_only_well_formed_records(
    kind: str, name: str, number: str, data: bytes
) -> None:
    view = InstanceView("ns/s")
    message = Message(
        f"ns/s/!meta/instances/{name}/{kind}", (PayloadObject(number, data),), b"k", 1, True
    )
    view.take(message)
    for records in view.records.values():
        assert set(records) <= {"lastalive", "state", "status"}
        assert all(isinstance(value, dict) for value in records.values())
    document = json.loads(
        plain_status.encode(
            "ns/s", {"ts": NOW}, online=True, instance="z", instances=view.snapshot()
        )
    )
    assert document["instances"][-1]["instance"] == "z"


@given(st.lists(st.dictionaries(st.sampled_from(["instance", "online", "ts"]), VALUES), max_size=4))
def test_the_plain_document_takes_any_instance_list(known: list[dict[str, Any]]) -> None:
    document = json.loads(
        plain_status.encode("ns/s", {"seq": 1}, online=False, instance="a", instances=known)
    )
    assert all(isinstance(entry["instance"], str) for entry in document["instances"])
    assert document["online"] == any(entry["online"] for entry in document["instances"])
