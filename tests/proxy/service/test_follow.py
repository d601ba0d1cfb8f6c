"""Two proxies sharing a PostgreSQL registry and an artifact directory (each on a bus of its
own, so each request reaches exactly one): a deploy, a version switch and a rollback made through
one are served by the other, which keeps answering throughout (no blackout).

Covers VersionRouter.follow in proxy/service/versions.py, Registry.watch_current in
proxy/registry/registry.py and PostgresDatabase.watch in proxy/registry/postgres.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from container_manager import ServiceClient
from tests.proxy.conftest import ProxyHarness, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def scaled(factor: float) -> Callable[[list[list[float]]], list[float]]:
    def predict(inputs: list[list[float]]) -> list[float]:
        return [factor * sum(x) for x in inputs]

    return predict


async def _answers(client: ServiceClient, version: str) -> bool:
    try:
        reply = await client.predict(model="thermal", input=[1.0])
    except Exception:
        return False
    return bool(reply["version"] == version)


async def test_a_switch_through_one_instance_reaches_the_other(
    memory_harness: ProxyHarness, postgres_url: str, tmp_path: Path
) -> None:
    shared = {"registry": postgres_url, "artifacts": f"file://{tmp_path / 'artifacts'}"}
    memory_harness.owner  # noqa: B018 (makes the proxy key, which the second instance copies)
    other = dataclasses.replace(
        memory_harness, bus_url=f"memory://other-{uuid.uuid4().hex}", data_dir=tmp_path / "b"
    )
    other.data_dir.mkdir()
    shutil.copy(memory_harness.settings().entity_file, other.settings().entity_file)
    assert other.service_uri == memory_harness.service_uri

    async with memory_harness.serving(**shared) as a, other.serving(**shared) as b:
        await a.operator.deploy_function("thermal", "1", scaled(10), "doubles")
        await wait_until(lambda: _answers(b.operator, "1"), what="b serves version 1")

        answered: list[str] = []
        switched = anyio.Event()

        async def traffic_on_b() -> None:
            while not switched.is_set():
                reply = await b.viewer.predict(model="thermal", input=[1.0])
                answered.append(reply["version"])  # a failure here fails the test
                if answered[-3:] == ["2"] * 3:
                    switched.set()

        async with anyio.create_task_group() as group:
            group.start_soon(traffic_on_b)
            await a.operator.deploy_function("thermal", "2", scaled(20), "doubles")
        assert answered[0] == "1" and answered[-1] == "2"

        await a.operator.rollback("thermal")
        await wait_until(lambda: _answers(b.operator, "1"), what="b rolled back to 1")
        assert (await b.operator.predict(model="thermal", input=[2.0]))["output"] == 20.0


async def test_a_deploy_is_not_failed_by_its_own_notification(
    memory_harness: ProxyHarness, postgres_url: str
) -> None:
    """The commit of a deploy wakes this proxy's own follower, which starts the new current
    version too: the two starts of one version take turns, so the deploy never answers "already
    started" (it did about one deploy in four)."""
    async with memory_harness.serving(registry=postgres_url) as service:
        for version in ("1", "2", "3", "4", "5", "6"):
            await service.operator.deploy_function("thermal", version, scaled(10), "doubles")
        await service.operator.wait_ready("thermal", "6")
        assert (await service.operator.predict(model="thermal", input=[1.0]))["output"] == 10.0
