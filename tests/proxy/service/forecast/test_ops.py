"""The forecast operations end to end, through real worker processes: three thermal models with
adjacent and overlapping ranges and a gap, stitched with provenance (on every transport); the
listing; deploy-time metadata checks; the index following set_version, rollback and stop.

Covers proxy/service/forecast/ops.py, proxy/service/forecast/catalog.py,
proxy/service/forecast/build.py and the metadata check of proxy/service/operations/deploy.py.

Covers container_manager/forecasts.py (the client calls) too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import bus
from bus.errors import InvalidRequest
from container_manager import ServiceClient
from tests.proxy.conftest import ProxyHarness
from tests.proxy.service.forecast.helpers import DAY, flat, gaps, meta, runs

pytestmark = pytest.mark.slow

DOC = Path(bus.__file__).with_name("PROTOCOL.md")


async def deploy(
    service: ServiceClient, name: str, func: object, metadata: dict[str, object], version: str = "1"
) -> None:
    await service.deploy_function(name, version, func, "strings", metadata=metadata)  # type: ignore[arg-type]
    await service.wait_ready(name, version)


async def test_three_models_stitched_with_provenance_and_the_gap(harness: ProxyHarness) -> None:
    async with harness.serving() as service:
        operator = service.operator
        await deploy(operator, "early", flat(20.0), meta(0, 10))
        await deploy(operator, "day", flat(21.0), meta(8, 18))
        await deploy(operator, "night", flat(19.0), meta(20, 24))
        answer = await service.viewer.forecast("thermal", {"zone": "A"}, *DAY, "30min")
        # The newest model wins the 8-10 h overlap; 18-20 h is no one's.
        assert runs(answer) == [
            (0, 16, "early:1"),
            (16, 36, "day:1"),
            (36, 40, ""),
            (40, 48, "night:1"),
        ]
        assert gaps(answer) == [(36, 40, "no usable model can predict this time")]
        values = [value for _, value, _ in answer["points"]]
        assert values[:16] == [20.0] * 16 and values[16:36] == [21.0] * 20
        assert values[36:40] == [None] * 4 and values[40:] == [19.0] * 8
        assert answer["problems"] == [] and answer["composed"] is False
        assert (answer["type"], answer["context"], answer["step"]) == (
            "thermal",
            {"zone": "A"},
            "30min",
        )

        await _check_the_worked_example(service.viewer)

        listed = await service.viewer.forecast_models("thermal", "zone=A", start=DAY[0], end=DAY[1])
        assert [(m["name"], m["relation"], m["is_current"]) for m in listed] == [
            ("day", "place", True),
            ("early", "place", True),
            ("night", "place", True),
        ]
        hour = 3600 * 10**9
        assert listed[0]["covered"] == [
            [1517299200 * 10**9 + 8 * hour, 1517299200 * 10**9 + 18 * hour]
        ]


async def test_metadata_is_checked_at_deploy(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        bad = {"type": "thermal", "context": {"zone": "A", "floor": "1"}, "resolution_s": 0}
        with pytest.raises(InvalidRequest) as caught:
            await service.operator.deploy_function("bad", "1", flat(1.0), "strings", metadata=bad)
        fields = {item["field"] for item in caught.value.details["fields"]}
        assert {"context", "resolution_s"} <= fields, caught.value.details
        assert await service.operator.get_all_models() == []
        # Free metadata (no "type") is stored as it is; the model is no forecast candidate.
        await service.operator.deploy_function(
            "free", "1", flat(1.0), "strings", metadata={"owner": "ops"}, replicas=0
        )
        assert await service.viewer.forecast_models("thermal", "zone=A") == []


async def test_bad_queries_name_the_field(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        with pytest.raises(InvalidRequest) as caught:
            await service.viewer.forecast("thermal", "zone=A", DAY[0], DAY[1], "7min")
        assert caught.value.details == {"field": "end"}
        with pytest.raises(InvalidRequest) as caught:
            await service.viewer.forecast("thermal", "zone=A", "2018-01-30 00:00", DAY[1], "1h")
        assert caught.value.details == {"field": "start"}
        with pytest.raises(InvalidRequest) as caught:
            await service.viewer.forecast("Thermal!", "zone=A", *DAY, "1h")
        assert caught.value.details == {"field": "type"}


async def test_the_index_follows_versions_rollback_and_stop(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        operator, viewer = service.operator, service.viewer
        await deploy(operator, "zone-a", flat(1.0), meta(0, 24))
        await deploy(operator, "zone-a", flat(2.0), meta(0, 24), version="2")

        async def used() -> set[str]:
            answer = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
            return {made for _, _, made in runs(answer)}

        assert await used() == {"zone-a:2"}
        await operator.rollback("zone-a")
        assert await used() == {"zone-a:1"}
        await operator.set_model_version("zone-a", "2")
        assert await used() == {"zone-a:2"}
        await operator.stop_models(["zone-a"])
        answer = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert runs(answer) == [(0, 48, "")]
        assert gaps(answer) == [(0, 48, "no usable thermal model for this place")]


async def _check_the_worked_example(viewer: ServiceClient) -> None:
    """PROTOCOL §17.8's worked example is what the service replies (its points shortened to the
    first of each run)."""
    examples = {
        name: json.loads(text)
        for name, text in re.findall(
            r"^```json (forecast-[a-z]+)\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL
        )
    }
    body = dict(examples["forecast-request"]["body"])
    del body["op"]
    reply = await viewer.call("predict", "forecast", **body)
    firsts, last = [], None
    for point in reply["points"]:
        if point[2] != last:
            firsts.append(point)
            last = point[2]
    assert reply | {"points": firsts} == examples["forecast-reply"]["result"]


async def test_a_long_grid_is_planned_off_the_event_loop(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        await deploy(service.operator, "one-day", flat(5.0), meta(0, 24))
        month = ("2018-01-01 00:00 PST", "2018-01-31 00:00 PST")  # the model's day is the last
        answer = await service.viewer.forecast("thermal", "zone=A", *month, "15min")
        assert len(answer["points"]) == 30 * 96 > 2000  # over OFFLOAD_POINTS
        answered = [ts for ts, value, _ in answer["points"] if value is not None]
        assert answered == [1517299200 * 10**9 + k * 900 * 10**9 for k in range(96)]
        assert answer["gaps"] == [
            [answer["points"][0][0], 1517299200 * 10**9, "no usable model can predict this time"]
        ]


async def test_dst_days_have_46_and_50_half_hours(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        await deploy(
            service.operator,
            "all-year",
            flat(1.0),
            meta(0, 24) | {"coverage": {"timezone": "America/Los_Angeles", "rules": [{}]}},
        )
        zone = "America/Los_Angeles"
        for day, after, points in (
            ("2018-03-11", "2018-03-12", 46),
            ("2018-11-04", "2018-11-05", 50),
        ):
            answer = await service.viewer.forecast(
                "thermal", "zone=A", f"{day} 00:00 {zone}", f"{after} 00:00 {zone}", "30min"
            )
            assert len(answer["points"]) == points and answer["gaps"] == []
            daily = await service.viewer.forecast(
                "thermal", "zone=A", f"{day} 00:00 {zone}", f"{after} 00:00 {zone}", "1d"
            )
            assert [value for _, value, _ in daily["points"]] == [1.0]  # a mean of its steps
