"""Management operations whose effects reach past the registry: caches, limits, all-or-nothing."""

from __future__ import annotations

import pytest

from bus.errors import InvalidRequest, NotFound
from tests.proxy.conftest import ProxyHarness, wait_until
from tests.proxy.service.test_startup import summed


async def test_a_deleted_application_stops_answering(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        operator = service.operator
        await operator.register_application("zone-a", "doubles", "nan", 5_000_000)
        await operator.deploy_function("thermal", "1", summed(1), "doubles")
        await operator.link_model_to_app("zone-a", "thermal")
        await operator.wait_ready("thermal", "1")
        assert (await operator.predict(app="zone-a", input=[1.0, 2.0]))["output"] == 3.0
        await operator.delete_application("zone-a")
        with pytest.raises(NotFound):
            await operator.predict(app="zone-a", input=[1.0, 2.0])


async def test_replica_counts_past_the_limit_are_refused_and_not_stored(
    memory_harness: ProxyHarness,
) -> None:
    async with memory_harness.serving() as service:
        operator = service.operator
        await operator.deploy_function("thermal", "1", summed(1), "doubles")
        with pytest.raises(InvalidRequest):
            await operator.set_num_replicas("thermal", 100, version="1")
        with pytest.raises(InvalidRequest):
            await operator.set_model_version("thermal", "1", num_replicas=65)
        models = await operator.get_all_models(verbose=True)
        assert [m["model_version"] for m in models] == ["1"]
        assert len(await operator.get_replicas("thermal", "1")) == 1


async def test_stopping_names_an_unknown_model_stops_nothing(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        operator = service.operator
        await operator.deploy_function("thermal", "1", summed(1), "doubles")
        await operator.wait_ready("thermal", "1")
        with pytest.raises(NotFound):
            await operator.call(
                "admin", "model.stop", versions={"thermal": ["1"]}, names=["no-such-model"]
            )
        (model,) = await operator.get_all_models(verbose=True)
        assert not model["is_stopped"]
        assert (await operator.predict(model="thermal", input=[2.0, 2.0]))["output"] == 4.0


async def test_dashboards_see_a_deploy_before_the_next_heartbeat(
    memory_harness: ProxyHarness,
) -> None:
    """A change is announced at once (coalesced), not at the next 60-second beat."""
    async with memory_harness.serving(heartbeat_interval_s=60.0) as service:
        operator = service.operator
        await operator.deploy_function("thermal", "1", summed(1), "doubles")
        await operator.wait_ready("thermal", "1")

        async def announced_ready() -> bool:
            state = await operator.liveness()
            return any(m["model"] == "thermal" and m["ready"] for m in state.status["models"])

        await wait_until(announced_ready, timeout_s=10, what="the status shows thermal:1 ready")
