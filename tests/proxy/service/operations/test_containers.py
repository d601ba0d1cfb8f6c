"""The ``container.*`` operations (proxy/service/operations/containers.py), through their slot,
on the real engine (Podman's Docker API, tests/fixtures/podman.py) behind
:class:`proxy.backend.docker.ServiceContainers`: what reaches the engine (read back from it), what
callers may not set (nothing is created), another service's containers unseen, an image the
engine does not hold never pulled — with a name any engine could pull, and the engine's own log
showing no pull attempt — and the typed error of a service without an engine. (That a
predict-only grant never reaches them is tested end to end in tests/container_manager.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import pytest

from bus import InvalidRequest, LimitExceeded, NotFound
from bus.rpc import Request
from proxy.backend import ContainerInfo
from proxy.backend.docker_engine import OWNER_LABEL, DockerEngine, ServiceContainers
from proxy.service.operations.containers import (
    MAX_RUN_PER_SENDER,
    MAX_RUN_TOTAL,
    REQUESTER_LABEL,
    ContainerOps,
)
from proxy.service.slots import Slot
from tests.fixtures.podman import PodmanService
from tests.proxy.backend.test_docker import base_image, engine

__all__ = ["base_image", "engine"]  # the session's engine and base image, shared

pytestmark = pytest.mark.slow

SENDER = "A" * 43  # the key text of 32 zero bytes
PULLABLE = "docker.io/library/alpine:latest"
"""A name any engine with a network could pull; this service's engine must not try."""


async def call(ops: ContainerOps, body: dict[str, Any], origin: bytes = bytes(32)) -> Any:
    """As the deploy slot calls an operation: the body validated at the door."""
    request = Request("ns/s.modelbus/_/i.modelbus/slot/deploy", origin, "r1", body)
    return await Slot("deploy", ops.table()).handle(request)


@pytest.fixture
def containers(engine: DockerEngine) -> Iterator[ServiceContainers]:
    """This test's service's view of the engine (an owner of its own); its containers are
    removed afterwards."""
    mine = ServiceContainers(engine, f"test-{uuid.uuid4().hex[:12]}")
    yield mine
    for container_id in engine.containers(label=f"{OWNER_LABEL}={mine.owner}"):
        engine.remove(container_id)


def on_engine(engine: DockerEngine, owner: str) -> list[dict[str, Any]]:
    """The containers the engine holds for ``owner``: name, image and labels, as it says."""
    found = engine.client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
    return [
        {"name": c.name, "labels": c.labels, "image": c.attrs["Config"]["Image"]} for c in found
    ]


async def test_run_reaches_the_engine_with_the_requester_and_list_filters(
    containers: ServiceContainers, engine: DockerEngine, base_image: str
) -> None:
    ops = ContainerOps(containers)
    team = f"hvac-{uuid.uuid4().hex[:6]}"
    body = {
        "op": "container.run",
        "image": base_image,
        "name": f"forecast-{team}",
        "env": {"ZONE": "A"},
        "labels": {"team": team},
    }
    started = await call(ops, body)
    assert started["labels"][REQUESTER_LABEL] == SENDER

    [held] = await anyio.to_thread.run_sync(on_engine, engine, containers.owner)
    assert held["name"] == f"forecast-{team}" and held["image"] == base_image
    asked = {"team": team, REQUESTER_LABEL: SENDER, OWNER_LABEL: containers.owner}
    assert {key: held["labels"].get(key) for key in asked} == asked  # (and the image's labels)
    attrs = await anyio.to_thread.run_sync(lambda: engine.client.containers.get(held["name"]).attrs)
    assert "ZONE=A" in attrs["Config"]["Env"]

    # Another service on the same engine, with a container labelled alike, is not seen.
    other = ServiceContainers(engine, f"other-{uuid.uuid4().hex[:12]}")
    try:
        await call(ContainerOps(other), body | {"name": f"theirs-{team}"})
        found = await call(ops, {"op": "container.list", "labels": {"team": team}})
        assert [(c["name"], c["labels"]["team"]) for c in found] == [(f"forecast-{team}", team)]
        assert await call(ops, {"op": "container.list", "labels": {"team": "nobody"}}) == []
    finally:
        for container_id in engine.containers(label=f"{OWNER_LABEL}={other.owner}"):
            engine.remove(container_id)


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
async def test_run_refuses_what_callers_may_not_ask(
    change: dict[str, Any], containers: ServiceContainers, engine: DockerEngine, base_image: str
) -> None:
    body = {"op": "container.run", "image": base_image, "name": "forecast"} | change
    with pytest.raises(InvalidRequest):
        await call(ContainerOps(containers), body)
    assert await anyio.to_thread.run_sync(on_engine, engine, containers.owner) == []


async def test_an_image_the_engine_lacks_is_never_pulled(
    containers: ServiceContainers, engine: DockerEngine, podman_service: PodmanService
) -> None:
    assert not engine.has_image(PULLABLE), f"the engine holds {PULLABLE}: the test needs it not to"
    attempts = podman_service.log_path.read_text(errors="replace").count(f"pull {PULLABLE}")
    body = {"op": "container.run", "image": PULLABLE, "name": f"pulled-{uuid.uuid4().hex[:6]}"}
    with pytest.raises(NotFound) as refused:
        await call(ContainerOps(containers), body)
    log = podman_service.log_path.read_text(errors="replace")
    assert log.count(f"pull {PULLABLE}") == attempts, "the engine tried to pull"
    assert "never pulls" in refused.value.message
    assert not engine.has_image(PULLABLE)
    assert await anyio.to_thread.run_sync(on_engine, engine, containers.owner) == []


async def test_without_an_engine_both_answer_not_found() -> None:
    ops = ContainerOps(None)
    assert sorted(ops.table()) == ["container.list", "container.run"]
    with pytest.raises(NotFound, match="no container engine"):
        await call(ops, {"op": "container.list"})
    with pytest.raises(NotFound, match="no container engine"):
        await call(ops, {"op": "container.run", "image": "a:1", "name": "x"})


class CountingEngine:
    """A stand-in for the engine seam (:class:`proxy.backend.ContainerEngine`) for the one rule
    that needs containers that stay running — which the base image's worker, run without a
    backend, does not: it lists what it ran as live, plus one exited container of the sender's.
    What reaches a real engine is tested above, on Podman."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, dict[str, str], dict[str, str]]] = []

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        done = ContainerInfo("c0", "old", "example/model:1", "exited", {REQUESTER_LABEL: SENDER})
        ran = [ContainerInfo(n, n, i, "running", dict(lab)) for i, n, _, lab in self.runs]
        return [done, *ran]

    async def run_container(
        self, image: str, name: str, env: Mapping[str, str], labels: Mapping[str, str]
    ) -> ContainerInfo:
        self.runs.append((image, name, dict(env), dict(labels)))
        return ContainerInfo(name, name, image, "running", dict(labels))


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
