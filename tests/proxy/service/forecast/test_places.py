"""Places from a Brick model given to the service (``brick_path``, ``modelbus serve --brick``):
an additive type asked for a floor no model covers is the sum of its zones' answers, with
provenance per zone; an averaged type falls back to the floor's model for a zone.

Covers the Brick loading of proxy/service/forecast/build.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import InvalidRequest
from proxy.service.forecast.build import load_places
from tests.proxy.conftest import ProxyHarness
from tests.proxy.service.forecast.helpers import DAY, flat, meta, runs
from tests.proxy.service.forecast.test_ops import deploy

pytestmark = pytest.mark.slow

SODA = Path(__file__).parents[3] / "chooser" / "soda.ttl"


async def test_a_floor_composed_from_its_zones(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving(brick_path=SODA) as service:
        operator, viewer = service.operator, service.viewer
        energy = {"model_type": "consumption"}
        await deploy(operator, "kwh-a", flat(2.0), meta(0, 24, context={"zone": "A"}, **energy))
        await deploy(operator, "kwh-b", flat(3.0), meta(0, 24, context={"zone": "B"}, **energy))
        await deploy(operator, "temp-floor", flat(19.5), meta(0, 24, context={"floor": "1"}))

        answer = await viewer.forecast("consumption", "floor=1", *DAY, "1h")
        assert answer["composed"] is True and answer["gaps"] == []
        # Each 15-minute model sums into hours (4 x value), and the zones add up.
        assert {value for _, value, _ in answer["points"]} == {4 * 2.0 + 4 * 3.0}
        assert {tuple(map(tuple, refs)) for _, _, refs in answer["points"]} == {
            (("kwh-a", "1"), ("kwh-b", "1"))
        }
        listed = await viewer.forecast_models("consumption", "floor=1")
        assert [(m["name"], m["relation"]) for m in listed] == [
            ("kwh-a", "child"),
            ("kwh-b", "child"),
        ]

        thermal = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert runs(thermal) == [(0, 48, "temp-floor:1")]
        listed = await viewer.forecast_models("thermal", "zone=A")
        assert [(m["name"], m["relation"]) for m in listed] == [("temp-floor", "ancestor")]


async def test_a_bad_brick_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ttl"
    bad.write_text("this is not turtle {")
    with pytest.raises(InvalidRequest, match="not a usable Brick model"):
        await load_places(str(bad))
    with pytest.raises(InvalidRequest, match="cannot read"):
        await load_places(str(tmp_path / "missing.ttl"))
    assert len(await load_places(str(SODA))) > 0
