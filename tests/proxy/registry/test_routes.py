"""Policy rows and the prediction log in a real SQLite file: stored whole, state saved only
for the spec it belongs to, surviving a reopen, gone with the application; log retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import NotFound
from proxy.registry.registry import Registry

SPEC = {"releases": [{"version": "1"}]}


async def _with_app(path: Path) -> Registry:
    registry = await Registry.open(path)
    await registry.register_application("thermal", "doubles", "0", 100_000)
    return registry


async def test_a_policy_round_trips_and_survives_a_reopen(tmp_path: Path) -> None:
    registry = await _with_app(tmp_path / "r.db")
    await registry.set_policy("thermal", "contract", SPEC, {"n": 1})
    assert await registry.save_policy_state("thermal", "contract", SPEC, {"n": 2})
    await registry.close()
    async with Registry.open(tmp_path / "r.db") as again:
        assert await again.get_policy("thermal", "contract") == (SPEC, {"n": 2})
        assert await again.get_policy("thermal", "selection") is None


async def test_state_for_a_replaced_spec_is_not_saved(tmp_path: Path) -> None:
    async with await _with_app(tmp_path / "r.db") as registry:
        await registry.set_policy("thermal", "contract", SPEC, {"n": 1})
        newer = {"releases": [{"version": "2"}]}
        await registry.set_policy("thermal", "contract", newer, {"n": 0})
        assert not await registry.save_policy_state("thermal", "contract", SPEC, {"n": 9})
        assert await registry.get_policy("thermal", "contract") == (newer, {"n": 0})


async def test_policies_need_an_application_and_go_with_it(tmp_path: Path) -> None:
    async with await _with_app(tmp_path / "r.db") as registry:
        with pytest.raises(NotFound):
            await registry.set_policy("nope", "contract", SPEC, {})
        await registry.set_policy("thermal", "selection", SPEC, {})
        await registry.delete_application("thermal")
        assert await registry.get_policy("thermal", "selection") is None
        with pytest.raises(NotFound):
            await registry.delete_policy("thermal", "selection")


async def test_the_log_keeps_the_newest_records_per_app(tmp_path: Path) -> None:
    async with await _with_app(tmp_path / "r.db") as registry:
        registry.log_retention = 5
        batch = [{"key": f"k{k % 2}", "query_id": k} for k in range(8)]
        await registry.append_log("thermal", batch)
        await registry.append_log("other", [{"key": "k0", "query_id": 99}])
        assert [r["query_id"] for r in await registry.read_log("thermal")] == [3, 4, 5, 6, 7]
        assert [r["query_id"] for r in await registry.read_log("thermal", "k0")] == [4, 6]
        assert [r["query_id"] for r in await registry.read_log("thermal", limit=2)] == [6, 7]
        assert len(await registry.read_log("other")) == 1
        odd = {"key": "b", "query_id": 1, "input": b"\x00\xff", "output": float("nan")}
        await registry.append_log("thermal", [odd])
        [back] = await registry.read_log("thermal", "b")
        assert back["input"] == {"base64": "AP8="} and back["output"] != back["output"]
