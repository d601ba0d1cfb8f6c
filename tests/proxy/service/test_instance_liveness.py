"""Two ``modelbus serve --instance`` proxies of one service on a real Mosquitto: each heart-beats
as itself (proxy/service/startup.py's wiring of bus.liveness), the service client sees both and
the service alive while one is, and the plain JSON lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import Heartbeat
from bus.liveness.plain_status import PLAIN_STATUS
from container_manager import ServiceClient
from proxy.service.startup import run_proxy
from tests.bus.helpers import Namespace, connect, memory_url
from tests.bus.liveness.test_plain_status import read_retained
from tests.proxy.conftest import ProxyHarness, wait_until


async def instances_listed(url: str, topic: str) -> dict[str, bool]:
    document: dict[str, Any] = await anyio.to_thread.run_sync(read_retained, url, topic)
    return {entry["instance"]: entry["online"] for entry in document.get("instances", [])}


@pytest.mark.mqtt
@pytest.mark.slow
async def test_two_named_proxies_beat_as_themselves_and_keep_the_service_alive(
    mosquitto_url: str, tmp_path: Path
) -> None:
    harness = ProxyHarness(mosquitto_url, tmp_path / "a")
    topic = f"{harness.service_uri}/{PLAIN_STATUS}"
    shared = f"file://{tmp_path / 'artifacts'}"  # instances share an artifact store
    second = harness.settings(  # the same service key, its own data directory
        instance="b",
        artifacts=shared,
        data_dir=tmp_path / "b",
        entity_path=harness.settings().entity_file,
        heartbeat_interval_s=0.3,
    )
    async with harness.serving(instance="a", artifacts=shared, heartbeat_interval_s=0.3) as service:
        operator = service.operator

        async def both_alive() -> bool:
            return (await operator.liveness()).reason == "alive (2 of 2 instances)"

        async def both_listed() -> bool:
            return await instances_listed(mosquitto_url, topic) == {"a": True, "b": True}

        async with anyio.create_task_group() as task_group:
            await task_group.start(run_proxy, second)
            await wait_until(both_alive, timeout_s=15, what="both instances alive")
            await wait_until(both_listed, timeout_s=15, what="the plain JSON lists both")
            both = await operator.liveness()
            task_group.cancel_scope.cancel()  # b stops cleanly
        one_left = await operator.check_alive()
    assert [(i.service, i.is_alive) for i in both.instances] == [("a", True), ("b", True)]
    assert [i.status["instance"] for i in both.instances] == ["a", "b"]  # each its own facts
    assert all("models" in i.status for i in both.instances)
    assert one_left.reason == "alive (1 of 2 instances)"
    assert [(i.service, i.is_alive, i.reason) for i in one_left.instances] == [
        ("a", True, "alive"),
        ("b", False, "died"),
    ]


async def test_a_client_learns_the_key_of_a_service_served_by_named_instances() -> None:
    """No ``S/!meta/state`` to learn it from (container_manager/service.py): the instances'
    ``S/!meta/lastalive`` tells it, so replies are pinned to the service key, not the
    namespace's."""
    namespace = Namespace()
    url = memory_url()
    service_uri = namespace.uri("s.modelbus", "_")
    server = namespace.member("s.modelbus/_/*", "P")
    async with (
        connect(url, server) as serving,
        connect(url, namespace.member("s.modelbus/_/*", "C*P")) as user,
    ):
        await Heartbeat(service_uri, instance="eu-1").beat(serving)
        client = ServiceClient(user, service_uri)
        learnt = await client.service_key()
        state = await client.check_alive()
    assert learnt == server.entity.public_key != namespace.owner.public_key
    assert state.reason == "alive (1 of 1 instances)"
