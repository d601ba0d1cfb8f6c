"""Who sees which model: a model with training streams is used only for a requester that proves,
with grant chains sent in the request, that it may consume every stream; otherwise it is neither
used nor revealed — not in answers, listings, gap reasons or problems. Real grants, real workers.

Covers proxy/service/forecast/access.py.
"""

from __future__ import annotations

import json

import pytest

from bus import Entity
from bus.errors import InvalidRequest
from tests.proxy.conftest import ProxyHarness
from tests.proxy.service.forecast.helpers import DAY, failing, flat, meta, runs
from tests.proxy.service.forecast.test_ops import deploy

pytestmark = pytest.mark.slow


async def test_training_streams_need_consume_grants(memory_harness: ProxyHarness) -> None:
    sensors = Entity.generate(comment="the sensors' namespace")
    streams = [f"{sensors.key_text}/soda/zoneA/temp", f"{sensors.key_text}/soda/zoneA/hvac"]
    may_consume = memory_harness.grant(
        memory_harness.viewer, f"{sensors.key_text}/soda/*", "C", giver=sensors
    )
    may_only_publish = memory_harness.grant(
        memory_harness.viewer, f"{sensors.key_text}/soda/*", "P", giver=sensors
    )
    for_someone_else = memory_harness.grant(
        memory_harness.operator, f"{sensors.key_text}/soda/*", "C", giver=sensors
    )
    async with memory_harness.serving() as service:
        operator, viewer = service.operator, service.viewer
        await deploy(operator, "public", flat(20.0), meta(0, 24))
        await deploy(operator, "private", flat(30.0), meta(0, 12, training_streams=streams))
        secret = meta(12, 24, training_streams=streams[:1])
        await deploy(operator, "secret-broken", failing(), secret)

        allowed = await viewer.forecast("thermal", "zone=A", *DAY, "30min", proofs=[[may_consume]])
        assert runs(allowed) == [(0, 24, "private:1"), (24, 48, "public:1")]
        assert [p["model"] for p in allowed["problems"]] == ["secret-broken"]
        listed = await viewer.forecast_models("thermal", "zone=A", proofs=[[may_consume]])
        assert {m["name"] for m in listed} == {"public", "private", "secret-broken"}

        for proofs in ([], [[may_only_publish]], [[for_someone_else]]):
            answer = await viewer.forecast("thermal", "zone=A", *DAY, "30min", proofs=proofs)
            assert runs(answer) == [(0, 48, "public:1")]
            assert answer["problems"] == [] and answer["gaps"] == []
            assert "private" not in json.dumps(answer) and "secret" not in json.dumps(answer)
            listed = await viewer.forecast_models("thermal", "zone=A", proofs=proofs)
            assert [m["name"] for m in listed] == ["public"]

        # Where only a hidden model could answer, the gap's reason is the one of an empty place.
        await operator.stop_models(["public"])
        hidden = await viewer.forecast("thermal", "zone=A", *DAY, "30min")
        assert hidden["gaps"] == [
            [hidden["points"][0][0], 1517385600 * 10**9, "no usable thermal model for this place"]
        ]


async def test_a_proof_that_is_no_chain_is_refused(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving() as service:
        with pytest.raises(InvalidRequest) as caught:
            await service.viewer.call(
                "predict",
                "forecast",
                type="thermal",
                context="zone=A",
                start=DAY[0],
                end=DAY[1],
                granularity="1h",
                proofs=[b"\x92\x01\x02"],
            )
        assert caught.value.details == {"proof": 0}
