"""A whole proxy with its registry on PostgreSQL (``ProxySettings.registry``, ``serve
--registry``): deploy, predict and restart keep working, and what it registers is in the database.

Covers the registry wiring of proxy/service/settings.py and proxy/service/startup.py on
PostgreSQL (the session's server, tests/fixtures/postgres.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from proxy.registry import Registry
from proxy.service.settings import ProxySettings
from proxy.service.startup import run_proxy
from tests.proxy.conftest import ProxyHarness, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def tripled() -> Callable[[list[list[float]]], list[float]]:
    def predict(inputs: list[list[float]]) -> list[float]:
        return [3.0 * sum(x) for x in inputs]

    return predict


def test_the_registry_setting_is_a_postgres_url_or_a_path(tmp_path: object) -> None:
    assert ProxySettings(registry="postgresql://u@h/db").registry_target == "postgresql://u@h/db"
    settings = ProxySettings(data_dir="/d")
    assert str(settings.registry_target) == "/d/registry.sqlite3"
    assert str(ProxySettings(registry="/shared/r.db").registry_target) == "/shared/r.db"
    with pytest.raises(ValidationError):
        ProxySettings(registry=7)


async def test_a_proxy_on_a_postgres_registry(
    memory_harness: ProxyHarness, postgres_url: str
) -> None:
    async with memory_harness.serving(registry=postgres_url) as service:
        operator = service.operator
        await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
        await operator.deploy_function("thermal", "1", tripled(), "doubles")
        await operator.wait_ready("thermal", "1")
        await operator.link_model_to_app("zone-a", "thermal")
        reply = await operator.predict(app="zone-a", input=[1.0, 2.0])
        assert (reply["output"], reply["version"]) == (9.0, "1")
    assert not (memory_harness.data_dir / "registry.sqlite3").exists()

    async with Registry.open(postgres_url) as registry:
        assert (await registry.current_version("thermal")).version == "1"
        assert (await registry.get_application("zone-a")).linked_model == "thermal"

    async with memory_harness.serving(registry=postgres_url) as service:  # a restart
        reply = await service.operator.predict(app="zone-a", input=[2.0])
        assert reply["output"] == 6.0


async def test_only_the_leader_marks_fits_left_running_as_interrupted(
    memory_harness: ProxyHarness, postgres_url: str, tmp_path: Path
) -> None:
    """Fits run on the instance holding the lead: the next leader marks the jobs a dead one
    left ``running`` as interrupted, and an instance starting beside a live leader leaves the
    leader's running fits alone (it used to relabel them, then a resume ran them twice)."""
    harness = memory_harness
    shared = {"registry": postgres_url, "artifacts": f"file://{tmp_path / 'artifacts'}"}
    fit = {"model_name": "m", "parent_version": "1", "requester": "k", "request": {}}
    async with Registry.open(postgres_url) as registry:
        await registry.create_fit_job("left", new_version="2", **fit)
        await registry.update_fit_job("left", state="running")  # its leader died mid-fit
        async with harness.serving(instance="a", **shared):

            async def interrupted() -> bool:
                return (await registry.get_fit_job("left")).state == "interrupted"

            await wait_until(interrupted, what="the new leader marks the dead one's fit")
            await registry.create_fit_job("live", new_version="3", **fit)
            await registry.update_fit_job("live", state="running")  # the leader runs it
            second = harness.settings(
                instance="b",
                data_dir=tmp_path / "b",
                entity_path=harness.settings().entity_file,
                **shared,
            )
            async with anyio.create_task_group() as task_group:
                await task_group.start(run_proxy, second)  # started: past its start-up
                task_group.cancel_scope.cancel()
        assert (await registry.get_fit_job("live")).state == "running"
