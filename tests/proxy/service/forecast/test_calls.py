"""Calls to models during a forecast, through real worker processes: a failing or hanging model
falls back to the next-best one or becomes a gap with the reason; a wrong-shape answer is a typed
problem naming the model; ``can_predict`` runs in the worker (raising, hanging, non-bool: "cannot"
with the reason, never a stalled query), its verdicts cached; results cached for a declared TTL.

Covers proxy/service/forecast/calls.py and proxy/backend/verdicts.py (with the worker).
"""

from __future__ import annotations

import pytest

from tests.proxy.conftest import ProxyHarness
from tests.proxy.service.forecast.helpers import (
    DAY,
    counting,
    failing,
    flat,
    gaps,
    hanging,
    meta,
    not_bool,
    raising,
    rule_meta,
    runs,
    short,
    stuck,
    until_noon,
    with_rule,
)
from tests.proxy.service.forecast.test_ops import deploy

pytestmark = pytest.mark.slow


async def test_a_failing_model_falls_back_then_becomes_a_gap(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving(forecast_call_timeout_s=1.0) as service:
        operator, viewer = service.operator, service.viewer
        await deploy(operator, "steady", flat(20.0), meta(0, 12))
        await deploy(operator, "broken", failing(), meta(0, 24))  # newest: chosen first
        await deploy(
            operator,
            "slow",
            hanging(3.0),
            meta(12, 24),
        )
        answer = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        # 0-12 h: broken fails, steady takes over; 12-24 h: slow (newest) times out, broken
        # (the fallback) fails too: a gap naming both.
        assert runs(answer) == [(0, 24, "steady:1"), (24, 48, "")]
        [(first, end, reason)] = gaps(answer)
        assert (first, end) == (24, 48)
        assert "model slow:1" in reason and "model broken:1" in reason
        assert "RuntimeError" in reason
        codes = {(p["model"], p["code"]) for p in answer["problems"]}
        assert codes == {("broken", "internal"), ("slow", "timeout")}


async def test_a_wrong_shape_is_a_typed_problem_naming_the_model(
    memory_harness: ProxyHarness,
) -> None:
    async with memory_harness.serving() as service:
        await deploy(service.operator, "short", short(1.0), meta(0, 24))
        answer = await service.viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert [value for _, value, _ in answer["points"]] == [None] * 48
        [found] = answer["problems"]
        assert (found["model"], found["version"], found["code"]) == ("short", "1", "bad_output")
        assert "95 values for 96 points" in found["message"]
        [(_, _, reason)] = gaps(answer)
        assert reason.startswith("model short:1: wrong output shape")


async def test_can_predict_runs_in_the_worker(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving(can_predict_timeout_s=0.5) as service:
        operator, viewer = service.operator, service.viewer
        # The rule is asked about the whole day and about each run between the points where a
        # declared coverage starts or stops (noon, here): it says yes to the morning only.
        await deploy(operator, "afternoon", flat(22.0), meta(12, 24))
        await deploy(operator, "morning", with_rule(18.0, until_noon), rule_meta())
        answer = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert runs(answer) == [(0, 24, "morning:1"), (24, 48, "afternoon:1")], answer["problems"]
        assert answer["problems"] == []
        for name, rule in (("raises", raising), ("hangs", stuck), ("says-yes", not_bool)):
            await deploy(operator, name, with_rule(1.0, rule), rule_meta())
        with_failures = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert runs(with_failures) == runs(answer)
        reasons = {p["model"]: p["message"] for p in with_failures["problems"]}
        assert {p["code"] for p in with_failures["problems"]} == {"can_predict"}
        assert "raised ValueError: no idea" in reasons["raises"]
        assert "did not answer within 0.5 s" in reasons["hangs"]
        assert "returned a str" in reasons["says-yes"]
        # The hung rule left its worker able to predict, and the verdicts are cached: asking
        # again does not wait for the rule again.
        again = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert runs(again) == runs(answer)


async def test_results_are_cached_for_the_declared_ttl(memory_harness: ProxyHarness) -> None:
    mark = "weather-model-called"

    async def calls() -> int:
        return str(await service.operator.get_logs("weather", "1", tail=10_000)).count(mark)

    async with memory_harness.serving() as service:
        await deploy(service.operator, "weather", counting(7.0, mark), meta(0, 24, cache_ttl_s=600))
        first = await service.viewer.forecast("thermal", "zone=A", *DAY, "30min")
        second = await service.viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert first["cached"] == [] and second["cached"] == [
            [first["points"][0][0], 1517385600 * 10**9]
        ]
        assert first["points"] == second["points"]
        assert await calls() == 1
        other = await service.viewer.forecast(
            "thermal", "zone=A", DAY[0], "2018-01-30 12:00 PST", "30min"
        )
        assert other["cached"] == [] and await calls() == 2


async def test_fallbacks_end_by_the_forecast_deadline(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving(forecast_call_timeout_s=5.0, forecast_deadline_s=1.0) as svc:
        await deploy(svc.operator, "steady", flat(20.0), meta(0, 24))
        await deploy(svc.operator, "slow", hanging(3.0), meta(0, 24))  # newest: tried first
        answer = await svc.viewer.forecast("thermal", "zone=A", *DAY, "30min")
        [(first, end, reason)] = gaps(answer)
        assert (first, end) == (0, 48)
        assert "model slow:1: no prediction from slow:1 within" in reason
        assert "model steady:1: the forecast's 1 s were up" in reason
        assert [p["code"] for p in answer["problems"]] == ["timeout", "timeout"]
