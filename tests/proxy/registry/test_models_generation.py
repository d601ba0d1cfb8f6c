"""``Registry.models_generation`` counts every committed change to models — what the chooser's
catalog (proxy/service/forecast/catalog.py) rebuilds on — and nothing else: not reads, not a
refused write, not applications."""

from __future__ import annotations

import pytest

from bus.errors import Conflict
from proxy.registry.registry import Registry
from tests.proxy.registry.test_registry import add_model, clock, db_path, registry, store

__all__ = ["clock", "db_path", "registry", "store"]  # the fixtures, shared with test_registry


async def test_each_committed_model_change_counts_once(registry: Registry) -> None:
    seen = [registry.models_generation]

    def moved() -> bool:
        seen.append(registry.models_generation)
        return seen[-1] == seen[-2] + 1

    await add_model(registry, version="1")
    assert moved()
    await add_model(registry, version="2")
    assert moved()
    await registry.list_models(None)
    await registry.get_model("thermal", "1")
    await registry.register_application("app", "doubles", "0", 1000)
    assert not moved()
    with pytest.raises(Conflict):
        await add_model(registry, version="2")
    assert not moved()
    await registry.rollback("thermal")
    assert moved()
    await registry.set_current("thermal", "2")
    assert moved()
    await registry.stop_versions({"thermal": ["1"]})
    assert moved()
    await registry.set_desired_replicas("thermal", "1", 2)
    assert moved()
