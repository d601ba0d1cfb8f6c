"""The ``container.*`` operations (proxy/service/operations/containers.py), through their slot,
over a stand-in engine: what reaches the
engine, what callers may not set, and the typed error of a service without an engine. (That a
predict-only grant never reaches them is tested end to end in tests/container_manager.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from bus import InvalidRequest, LimitExceeded, NotFound
from bus.rpc import Request
from proxy.backend import ContainerInfo
from proxy.service.operations.containers import (
    MAX_RUN_PER_SENDER,
    MAX_RUN_TOTAL,
    REQUESTER_LABEL,
    ContainerOps,
)
from proxy.service.slots import Slot

SENDER = "A" * 43  # the key text of 32 zero bytes


async def call(ops: ContainerOps, body: dict[str, Any], origin: bytes = bytes(32)) -> Any:
    """As the deploy slot calls an operation: the body validated at the door."""
    request = Request("ns/s.modelbus/_/i.modelbus/slot/deploy", origin, "r1", body)
    return await Slot("deploy", ops.table()).handle(request)


class RecordingEngine:
    def __init__(self) -> None:
        self.runs: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.listed: list[dict[str, str]] = []

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        self.listed.append(dict(labels))
        return [ContainerInfo("c1", "one", "example/model:1", "running", {"team": "hvac"})]

    async def run_container(
        self, image: str, name: str, env: Mapping[str, str], labels: Mapping[str, str]
    ) -> ContainerInfo:
        self.runs.append((image, name, dict(env), dict(labels)))
        return ContainerInfo("c2", name, image, "running", dict(labels))


async def test_list_passes_the_label_filter_and_answers_plain_dicts() -> None:
    engine = RecordingEngine()
    found = await call(ContainerOps(engine), {"op": "container.list", "labels": {"team": "hvac"}})
    assert engine.listed == [{"team": "hvac"}]
    assert found == [
        {
            "id": "c1",
            "name": "one",
            "image": "example/model:1",
            "state": "running",
            "labels": {"team": "hvac"},
        }
    ]


async def test_run_records_the_requester() -> None:
    engine = RecordingEngine()
    body = {
        "op": "container.run",
        "image": "example/model:1",
        "name": "forecast",
        "env": {"ZONE": "A"},
        "labels": {"team": "hvac"},
    }
    started = await call(ContainerOps(engine), body)
    assert engine.runs == [
        ("example/model:1", "forecast", {"ZONE": "A"}, {"team": "hvac", REQUESTER_LABEL: SENDER})
    ]
    assert started["labels"][REQUESTER_LABEL] == SENDER


@pytest.mark.parametrize(
    "change",
    [
        {"labels": {"modelbus.owner": "someone else"}},
        {"labels": {REQUESTER_LABEL: "me"}},
        {"name": "../escape"},
        {"image": "Example/UPPER:1"},
        {"env": {"1BAD": "x"}},
        {"privileged": True},
    ],
)
async def test_run_refuses_what_callers_may_not_ask(change: dict[str, Any]) -> None:
    engine = RecordingEngine()
    body = {"op": "container.run", "image": "example/model:1", "name": "forecast"} | change
    with pytest.raises(InvalidRequest):
        await call(ContainerOps(engine), body)
    assert engine.runs == []


async def test_without_an_engine_both_answer_not_found() -> None:
    ops = ContainerOps(None)
    assert sorted(ops.table()) == ["container.list", "container.run"]
    with pytest.raises(NotFound, match="no container engine"):
        await call(ops, {"op": "container.list"})
    with pytest.raises(NotFound, match="no container engine"):
        await call(ops, {"op": "container.run", "image": "a:1", "name": "x"})


class CountingEngine(RecordingEngine):
    """Lists what it ran, live, plus one exited container of the sender's."""

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        done = ContainerInfo("c0", "old", "example/model:1", "exited", {REQUESTER_LABEL: SENDER})
        ran = [ContainerInfo(n, n, i, "running", dict(lab)) for i, n, _, lab in self.runs]
        return [done, *ran]


async def test_live_runs_are_capped_per_sender_and_in_all() -> None:
    """Issue 12 item 9: container.run's containers still live are capped; exited ones free room."""
    engine = CountingEngine()
    ops = ContainerOps(engine)
    body = {"op": "container.run", "image": "example/model:1"}
    for index in range(MAX_RUN_PER_SENDER):
        await call(ops, body | {"name": f"mine-{index}"})
    with pytest.raises(LimitExceeded) as mine:
        await call(ops, body | {"name": "one-too-many"})
    assert mine.value.details == {"limit": MAX_RUN_PER_SENDER, "running": MAX_RUN_PER_SENDER}
    others = MAX_RUN_TOTAL - MAX_RUN_PER_SENDER - 1
    await call(ops, body | {"name": "theirs"}, origin=bytes([1]) * 32)  # another sender may
    engine.runs += [
        ("example/model:1", f"other-{n}", {}, {REQUESTER_LABEL: f"other-{n}"})
        for n in range(others)
    ]
    with pytest.raises(LimitExceeded) as everyone:
        await call(ops, body | {"name": "still-too-many"}, origin=bytes([2]) * 32)
    assert everyone.value.details == {"limit": MAX_RUN_TOTAL, "running": MAX_RUN_TOTAL}
