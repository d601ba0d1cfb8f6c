"""Schedules through a whole proxy: the ``schedule.*`` operations, inputs read from and outputs
published to the bus, re-runs replacing their output.

Covers proxy/service/operations/schedules.py, proxy/schedules/busio.py and the schedule calls of
container_manager/jobs.py; the store is proxy/registry/schedules.py (its unit tests:
tests/proxy/schedules/test_scheduler.py). The memory-bus tests use a start time in the past, so
their windows are due at once (a backfill) and nothing waits for the clock; the Mosquitto test
runs on real time with a 2 s interval.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from bus import PayloadObject
from bus.errors import Conflict, InvalidRequest, NotFound, PermissionMissing
from bus.grants import encode_chain
from bus.po import PO_METADATA
from container_manager import ServiceClient
from proxy.schedules.plan import NS, window_key
from tests.proxy.conftest import ProxyHarness, wait_until

TIMEOUT_S = 90
HOUR = 3600 * NS


def total(inputs: list[list[float]]) -> list[float]:
    return [float(sum(values)) for values in inputs]


async def outputs(client: ServiceClient, output: str) -> dict[str, Any]:
    return {m.uri.rsplit("/", 1)[1]: m.value() for m in await client.bus.query(f"{output}/*")}


async def point(client: ServiceClient, uri: str, value: float, ts: int) -> None:
    po = PayloadObject.msgpack({"val": value, "ts": ts}, PO_METADATA)
    await client.bus.publish(uri, po, persist=True)


async def test_backfill_outputs_on_the_bus_rerun_replaces_pause_remove(
    memory_harness: ProxyHarness,
) -> None:
    h = memory_harness
    data, out = f"{h.service_uri}/data/load", f"{h.service_uri}/forecast/load"
    start = (time.time_ns() // HOUR - 3) * HOUR  # windows 0..3 are due now
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await operator.deploy_function("total", "1", total, "doubles")
            await operator.wait_ready("total", "1")
            for i in range(4):  # one point per window, in [end - 1 h, end)
                await point(operator, f"{data}/p{i}", float(i + 1), start + i * HOUR - HOUR // 2)
            added = await operator.schedule_add(
                "load",
                model="total",
                every="1h",
                window="1h",
                start=str(start),
                inputs=[f"{data}/*"],
                output=out,
                proofs=proofs,
                max_catchup=2,
            )
            assert added["cursor"] == 0 and added["paused"] is False
            keys = [window_key(start + i * HOUR) for i in range(4)]

            async def three_done() -> bool:
                runs = await operator.schedule_runs("load", state="done")
                return len(runs) == 3

            await wait_until(three_done, what="the backfill of windows 1..3")
            runs = {r["window_key"]: r for r in await operator.schedule_runs("load")}
            assert runs[keys[0]]["state"] == "skipped"  # past max_catchup = 2 missed windows
            assert [runs[k]["output"] for k in keys[1:]] == [2.0, 3.0, 4.0]
            published = await outputs(operator, out)
            assert sorted(published) == keys[1:]
            assert published[keys[2]]["output"] == 3.0 and published[keys[2]]["version"] == "1"

            # Late data for window 2, and a re-run: the output is replaced, not added.
            await point(operator, f"{data}/late", 10.0, start + 2 * HOUR - 1)
            await operator.schedule_rerun("load", keys[2])

            async def replaced() -> bool:
                return (await outputs(operator, out))[keys[2]]["output"] == 13.0

            await wait_until(replaced, what="the re-run's output")
            assert sorted(await outputs(operator, out)) == keys[1:]
            assert len(await operator.schedule_runs("load")) == 4
            await operator.schedule_rerun("load", keys[0])  # a skipped window on demand
            await wait_until(
                lambda: _state(operator, "load", keys[0], "done"), what="window 0 re-run"
            )

            assert (await operator.schedule_pause("load"))["paused"] is True
            assert (await operator.schedule_resume("load"))["paused"] is False
            with pytest.raises(Conflict):
                await operator.schedule_add(
                    "load",
                    model="total",
                    every="1h",
                    window="1h",
                    start=str(start),
                    inputs=[f"{data}/*"],
                    output=out,
                    proofs=proofs,
                )
            assert [s["name"] for s in await operator.schedule_list()] == ["load"]
            await operator.schedule_remove("load")
            assert await operator.schedule_list() == []
            with pytest.raises(NotFound):
                await operator.schedule_runs("load")


async def _state(client: ServiceClient, name: str, key: str, state: str) -> bool:
    return any(
        r["window_key"] == key and r["state"] == state for r in await client.schedule_runs(name)
    )


def picky(inputs: list[list[float]]) -> list[float]:
    """Fails a whole batch when one of its inputs holds a negative value."""
    if any(value < 0 for values in inputs for value in values):
        raise ValueError("a negative reading")
    return [float(sum(values)) for values in inputs]


async def test_windows_due_together_are_one_batch_and_a_bad_one_fails_alone(
    memory_harness: ProxyHarness,
) -> None:
    h = memory_harness
    data, out = f"{h.service_uri}/data", f"{h.service_uri}/forecast"
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await operator.deploy_function("picky", "1", picky, "doubles")
            await operator.wait_ready("picky", "1")
            now = time.time_ns()
            start = (now // NS + 2) * NS  # both windows fall due in the same pass, 1-2 s on
            await point(operator, f"{data}/good/a", 2.0, now)
            await point(operator, f"{data}/bad/a", -1.0, now)
            for name in ("good", "bad"):
                await operator.schedule_add(
                    name,
                    model="picky",
                    every="1h",
                    window="1h",
                    start=str(start),
                    inputs=[f"{data}/{name}/*"],
                    output=f"{out}/{name}",
                    proofs=proofs,
                    max_attempts=1,
                )
            key = window_key(start)
            await wait_until(lambda: _state(operator, "good", key, "done"), what="good's window")
            await wait_until(lambda: _state(operator, "bad", key, "failed"), what="bad's window")
            assert (await outputs(operator, f"{out}/good"))[key]["output"] == 2.0
            assert await outputs(operator, f"{out}/bad") == {}
            (failed,) = await operator.schedule_runs("bad")
            assert "negative" in failed["reason"] or "ValueError" in failed["reason"]


async def test_a_schedule_needs_consume_rights_on_its_inputs(memory_harness: ProxyHarness) -> None:
    h = memory_harness
    planner = h.operator.__class__.generate(comment="planner")
    grants = [
        [h.grant(planner, h.slot("admin"), "P")],
        [h.grant(planner, f"{h.service_uri}/signal/*", "C*")],
        [h.grant(planner, f"{h.service_uri}/forecast/*", "P")],
    ]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            await service.operator.deploy_function("total", "1", total, "doubles")
            async with h.client(planner, grants) as client:
                with pytest.raises(PermissionMissing) as refused:
                    await client.schedule_add(
                        "x",
                        model="total",
                        every="1h",
                        window="1h",
                        start="2026-01-01T00:00:00Z",
                        inputs=[f"{h.service_uri}/data/secret/*"],
                        output=f"{h.service_uri}/forecast/x",
                        proofs=[encode_chain(chain) for chain in grants],
                    )
                assert "data/secret" in refused.value.message
            assert await service.operator.schedule_list() == []


@pytest.mark.mqtt
async def test_end_to_end_on_mosquitto_in_real_time(mosquitto_url: str, tmp_path: Any) -> None:
    h = ProxyHarness(mosquitto_url, tmp_path / "proxy")
    data, out = f"{h.service_uri}/data/t", f"{h.service_uri}/forecast/t"
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await operator.deploy_function("total", "1", total, "doubles")
            await operator.wait_ready("total", "1")
            now = time.time_ns()
            start = (now // (2 * NS) + 1) * 2 * NS  # the next even second: on the grid
            await point(operator, f"{data}/a", 1.5, now)
            await operator.schedule_add(
                "t",
                model="total",
                every="2s",
                window="10s",
                delay="500ms",
                start=str(start),
                inputs=[f"{data}/*"],
                output=out,
                proofs=proofs,
            )

            async def two_windows() -> bool:
                return len(await outputs(operator, out)) >= 2

            await wait_until(two_windows, timeout_s=30, what="two windows on Mosquitto")
            published = await outputs(operator, out)
            first, second = sorted(published)[:2]
            assert first == window_key(start) and second == window_key(start + 2 * NS)
            assert published[first]["output"] == 1.5  # the point is in [start - 10 s, start)
            for doc in published.values():
                assert doc["produced_ns"] >= doc["end_ns"] + NS // 2  # never before due


def always(value: float) -> Any:
    """A range model (the prediction API's call, §17.8) answering ``value`` at every step."""

    def predict(inputs: list[Any]) -> list[Any]:
        return [[value] * x["points"] for x in inputs]

    return predict


ALWAYS = {
    "type": "thermal",
    "context": {"zone": "A"},
    "resolution_s": 900,
    "coverage": {"timezone": "UTC", "rules": [{"days": list(range(7)), "hours": list(range(24))}]},
}


async def test_a_schedule_of_a_forecast_query_publishes_each_windows_answer(
    memory_harness: ProxyHarness,
) -> None:
    """A schedule may name a prediction-API query (type, context, granularity) instead of a
    model: each window's output is the forecast over the window, with provenance."""
    h = memory_harness
    out = f"{h.service_uri}/forecast/zone-a"
    start = (time.time_ns() // HOUR - 3) * HOUR
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await operator.deploy_function("zone-a", "1", always(21.5), "strings", metadata=ALWAYS)
            await operator.wait_ready("zone-a", "1")
            await operator.schedule_add(
                "zone-a-hourly",
                query={"type": "thermal", "context": "zone=A", "granularity": "30min"},
                every="1h",
                window="1h",
                start=str(start),
                output=out,
                proofs=proofs,
                max_catchup=2,
            )

            async def done() -> bool:
                return len(await operator.schedule_runs("zone-a-hourly", state="done")) == 3

            await wait_until(done, what="three forecast windows")
            published = await outputs(operator, out)
            assert sorted(published) == [window_key(start + i * HOUR) for i in (1, 2, 3)]
            answer = published[window_key(start + 2 * HOUR)]["output"]
            assert [p[1] for p in answer["points"]] == [21.5, 21.5]  # two 30-min points
            assert answer["points"][0][2] == [["zone-a", "1"]] and answer["gaps"] == []
            assert published[window_key(start + 2 * HOUR)]["version"] == "forecast"
            with pytest.raises(InvalidRequest, match="exactly one of 'model' or 'query'"):
                await operator.call(  # as a raw client may send it: both
                    "admin", "schedule.add", name="both", model="zone-a",
                    query={"type": "thermal", "context": "zone=A", "granularity": "30min"},
                    every="1h", window="1h", start=str(start), output=out,
                )  # fmt: skip
