"""Routing and selection policies over the real service (memory bus, real workers, real SQLite):
a canary's share with a shadow release copied, compared and logged but never returned; gates
fed over the bus; expiry and restore; a bandit learning from feedback, its state surviving a
restart and no concurrent feedback lost; combined answers with each model's part.

Covers proxy/service/operations/routed.py, proxy/service/policies.py, proxy/routing/keeper.py,
proxy/routing/background.py, proxy/routing/pending.py, proxy/routing/selection.py and
container_manager/routes.py.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.errors import Conflict, InvalidRequest, NotFound
from container_manager import ServiceClient
from proxy.backend.sandbox import SandboxLimits
from tests.proxy.conftest import ProxyHarness, wait_until


def scaled(factor: float, delay_s: float = 0.0) -> Callable[[list[list[float]]], list[float]]:
    def predict(inputs: list[list[float]]) -> list[float]:
        if delay_s:
            time.sleep(delay_s)
        return [factor * sum(x) for x in inputs]

    return predict


def held_until(path: str) -> Callable[[list[list[float]]], list[float]]:
    """A model that answers ``20·sum(x)`` only once ``path`` exists (the test holds it)."""

    def predict(inputs: list[list[float]]) -> list[float]:
        while not os.path.exists(path):
            time.sleep(0.01)
        return [20.0 * sum(x) for x in inputs]

    return predict


def broken(inputs: list[Any]) -> list[Any]:
    raise RuntimeError("this release always fails")


async def _deploy(operator: ServiceClient, name: str, version: str, func: Any) -> None:
    await operator.deploy_function(name, version, func, "doubles")
    await operator.wait_ready(name, version)


async def _release(operator: ServiceClient, version: str) -> dict[str, Any]:
    shown = await operator.show_route("zone-a")
    return next(row for row in shown["releases"] if row["version"] == version)


CANARY = {
    "releases": [
        {"version": "1"},
        {"version": "2", "share_pct": 30},
        {"version": "3", "validity": {"gate": "never"}},
    ],
    "shadow_sample": 1.0,
    "log": {"level": "full", "key_fields": ["zone", "day"]},
}


async def test_canary_shadow_log_gates_expiry(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(120):
        async with memory_harness.serving() as service:
            operator, viewer = service.operator, service.viewer
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            for version, factor in (("1", 10), ("2", 20), ("3", 30)):
                await _deploy(operator, "thermal", version, scaled(factor))
            await operator.link_model_to_app("zone-a", "thermal")
            shown = await operator.set_route("zone-a", CANARY)
            assert [r["status"] for r in shown["releases"]] == ["serving", "serving", "shadow"]
            assert shown["releases"][2]["reason"] == "never valid: shadow only"

            served = Counter()
            last: dict[str, Any] = {}
            for _ in range(200):
                fields = {"zone": "A", "day": "d1"}
                last = await viewer.predict_routed(app="zone-a", input=[1.0], fields=fields)
                factor = {"1": 10, "2": 20}[last["version"]]  # never 3, the shadow
                assert last["output"] == factor and not last["default"]
                served[last["version"]] += 1
            assert 0.18 < served["2"] / 200 < 0.42, served

            await wait_until(
                lambda: _has_shadow_metrics(operator), what="the shadow answers compared"
            )
            shadow = await _release(operator, "3")
            assert shadow["served"] >= 1 and shadow["status"] == "shadow"
            # 30 vs 10 or 20: the recorded difference is 20 or 10, never 0
            assert shadow["metrics"]["shadow_difference"]["value"] in (10.0, 20.0)
            assert shadow["metrics"]["shadow_error"]["value"] == 0.0

            await wait_until(lambda: _logged(operator, 400), what="served and shadow logged")
            records = await operator.prediction_log("zone-a", key="A.d1", limit=1000)
            kinds = Counter(r["kind"] for r in records)
            assert kinds["served"] == 200 and kinds["shadow"] == 200
            mine = [r for r in records if r["query_id"] == str(last["query_id"])]
            assert {r["kind"] for r in mine} == {"served", "shadow"}
            shadow_row = next(r for r in mine if r["kind"] == "shadow")
            assert (shadow_row["output"], shadow_row["served_version"]) == (30.0, last["version"])
            on_bus = await operator.bus.query(f"{memory_harness.service_uri}/predlog/zone-a/*")
            assert [m.uri.rsplit("/", 1)[1] for m in on_bus] == ["A.d1"]

            # feedback from actuals feeds the serving release's error metric
            got = await viewer.feedback("zone-a", last["query_id"], truth=last["output"] + 2)
            assert got == {"query_id": last["query_id"], "version": last["version"],
                           "feedback_error": 2.0}  # fmt: skip
            with pytest.raises(NotFound):  # once per query, and only by its requester
                await viewer.feedback("zone-a", last["query_id"], reward=1.0)

            # a metric gate opened over the bus (release 3 was never valid: its state is
            # kept, not latched); keep latest 1 expires the rest once the gate opens
            gated = {
                "releases": [
                    {"version": "1"},
                    {"version": "3", "validity": {"gate": "metric", "metric": "mae",
                                                  "op": "<=", "threshold": 0.5}},
                ],
                "expiry": {"keep": "latest", "n": 1},
            }  # fmt: skip
            shown = await operator.set_route("zone-a", gated)
            assert [r["status"] for r in shown["releases"]] == ["serving", "waiting"]
            assert "0 of 1 values of mae fed" in shown["releases"][1]["reason"]
            await operator.feed_metric("zone-a", "3", "mae", 0.9)
            assert (await _release(operator, "3"))["reason"] == (
                "not yet valid: mae = 0.9, needs <= 0.5"
            )
            shown = await operator.feed_metric("zone-a", "3", "mae", 0.25)
            assert [r["status"] for r in shown["releases"]] == ["expired", "serving"]
            assert (await viewer.predict_routed(app="zone-a", input=[1.0]))["version"] == "3"
            shown = await operator.restore_release("zone-a", "1")
            assert [r["status"] for r in shown["releases"]] == ["serving", "serving"]
            await operator.expire_release("zone-a", "3")
            assert (await viewer.predict_routed(app="zone-a", input=[1.0]))["version"] == "1"

            with pytest.raises(InvalidRequest):
                await operator.set_route("zone-a", {"releases": []})
            with pytest.raises(NotFound):  # no such version of the linked model
                await operator.set_route("zone-a", {"releases": [{"version": "9"}]})
            await operator.register_application("unlinked", "doubles", "-1.0", 10_000_000)
            with pytest.raises(Conflict):
                await operator.set_route("unlinked", {"releases": [{"version": "1"}]})
            with pytest.raises(Conflict):
                await operator.set_selection("zone-a", {"candidates": ["thermal"]})
            await operator.delete_route("zone-a")
            with pytest.raises(NotFound):
                await operator.show_route("zone-a")


async def _has_shadow_metrics(operator: ServiceClient) -> bool:
    return "shadow_difference" in (await _release(operator, "3"))["metrics"]


async def _logged(operator: ServiceClient, count: int) -> bool:
    return len(await operator.prediction_log("zone-a", limit=1000)) >= count


async def test_shadow_failure_and_slowness_leave_the_served_answer_alone(
    memory_harness: ProxyHarness, gates: Path
) -> None:
    release = gates / "release-the-shadow"
    with anyio.fail_after(120):
        limits = SandboxLimits(shared_dirs=(gates,))
        async with memory_harness.serving(sandbox_limits=limits) as service:
            operator, viewer = service.operator, service.viewer
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            await _deploy(operator, "thermal", "1", scaled(10))
            await _deploy(operator, "thermal", "2", held_until(str(release)))
            await _deploy(operator, "thermal", "3", broken)
            await operator.link_model_to_app("zone-a", "thermal")
            await operator.set_route(
                "zone-a",
                {
                    "releases": [
                        {"version": "1"},
                        {"version": "2", "validity": {"gate": "never"}},
                        {"version": "3", "validity": {"gate": "never"}},
                    ]
                },
            )
            answers = [await viewer.predict_routed(app="zone-a", input=[1.0]) for _ in range(4)]
            assert [(a["version"], a["output"], a["default"]) for a in answers] == [
                ("1", 10.0, False)
            ] * 4
            # all four answered while the shadow release 2 was held: no copy had come back
            shown = await operator.show_route("zone-a")
            assert shown["counters"]["shadows_run"] == 0
            release.touch()
            await wait_until(
                lambda: _shadow_error_fed(operator), what="the failing shadow recorded"
            )
            failed = await _release(operator, "3")
            assert failed["metrics"]["shadow_error"]["value"] == 1.0 and failed["served"] == 0
            held = await _release(operator, "2")
            assert held["served"] == 4 and held["metrics"]["shadow_difference"]["value"] == 10.0


async def _shadow_error_fed(operator: ServiceClient) -> bool:
    return "shadow_error" in (await _release(operator, "3"))["metrics"]


async def test_a_bandit_learns_from_feedback_and_survives_a_restart(
    memory_harness: ProxyHarness,
) -> None:
    with anyio.fail_after(120):
        async with memory_harness.serving(max_in_flight_per_sender=64) as service:  # 40 at once
            operator, viewer = service.operator, service.viewer
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            await _deploy(operator, "good", "1", scaled(1))
            await _deploy(operator, "poor", "1", scaled(5))
            selection = {"candidates": ["good", "poor"], "policy": {"policy": "ucb1"}}
            shown = await operator.set_selection("zone-a", selection)
            assert shown["state"] is None and shown["users"] == 0

            async def one_round() -> None:  # the truth is sum(x): "good" is exact
                answer = await viewer.predict_routed(app="zone-a", input=[2.0], user_id="u1")
                await viewer.feedback("zone-a", answer["query_id"], truth=2.0)

            for _ in range(30):  # one at a time: ucb1 learns that "good" is better
                await one_round()
            arms = (await operator.show_policy("zone-a", user_id="u1"))["state"]["good|poor"]
            assert arms == {"good": {"n": 26.0, "sum": 26.0}, "poor": {"n": 4.0, "sum": 4 / 9}}
            async with anyio.create_task_group() as group:  # concurrent feedback
                for _ in range(40):
                    group.start_soon(one_round)
            shown = await operator.show_policy("zone-a", user_id="u1")
            arms = shown["state"]["good|poor"]
            assert arms["good"]["n"] + arms["poor"]["n"] == 70  # no update lost
            with pytest.raises(NotFound):
                await operator.feedback("zone-a", 10**9, reward=0.5)
        async with memory_harness.serving() as service:
            again = await service.operator.show_policy("zone-a", user_id="u1")
            assert again["state"] == shown["state"]
            answer = await service.viewer.predict_routed(app="zone-a", input=[2.0], user_id="u1")
            await service.viewer.feedback("zone-a", answer["query_id"], truth=2.0)
            after = await service.operator.show_policy("zone-a", user_id="u1")
            total = sum(arm["n"] for arm in after["state"]["good|poor"].values())
            assert total == 71  # learning goes on from the stored state


async def test_combined_answers_show_each_part(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(120):
        async with memory_harness.serving() as service:
            operator, viewer = service.operator, service.viewer
            await operator.register_application("ensemble", "doubles", "-1.0", 10_000_000)
            await _deploy(operator, "a", "1", scaled(1))
            await _deploy(operator, "b", "1", scaled(3))
            await operator.set_selection(
                "ensemble",
                {"candidates": ["a", "b", "missing"], "combine": "weighted",
                 "weights": {"a": 1, "b": 3, "missing": 1}},
            )  # fmt: skip
            got = await viewer.predict_routed(app="ensemble", inputs=[[1.0], [2.0]])
            first, second = got["batch_predictions"]
            assert (first["output"], second["output"]) == (2.5, 5.0)  # (1·1 + 3·3) / 4
            parts = {p["model"]: p for p in first["parts"]}
            assert parts["a"]["used"] and parts["b"]["used"] and not parts["missing"]["used"]
            assert parts["missing"]["error"].startswith("not_found")
            await operator.set_selection(
                "ensemble", {"candidates": ["a", "b"], "combine": "median"}
            )
            assert (await viewer.predict_routed(app="ensemble", input=[2.0]))["output"] == 4.0
            await _deploy(operator, "slow", "1", scaled(7, delay_s=3.0))
            await operator.set_selection(
                "ensemble", {"candidates": ["slow", "a"], "combine": "first"}
            )
            got = await viewer.predict_routed(app="ensemble", input=[2.0])
            assert got["output"] == 2.0  # a's; slow's answer is not waited for
            assert [(p["model"], p["used"], p["error"]) for p in got["parts"]] == [
                ("slow", False, "no answer in time"),
                ("a", True, None),
            ]
            with pytest.raises(NotFound):  # combined answers take no feedback
                await viewer.feedback("ensemble", got["query_id"], reward=1.0)


def test_documented_policy_constants_match_the_code() -> None:
    """PROTOCOL.md §17.9 states these bounds; they are the code's."""
    import inspect

    import bus
    from chooser.policies import DEFAULT_USER_LIMIT, state
    from proxy.registry.routes import DEFAULT_LOG_RETENTION
    from proxy.routing import Background
    from proxy.routing.background import SHADOW_BATCH_INPUTS
    from proxy.routing.pending import DEFAULT_PENDING

    text = (Path(bus.__file__).parent / "PROTOCOL.md").read_text()
    section = " ".join(text[text.index("### 17.7") : text.index("## 18.")].split())
    defaults = inspect.signature(Background).parameters
    assert f"bounded queue ({defaults['shadow_queue'].default} requests" in section
    assert f"bounded queue ({defaults['log_queue'].default:,} records" in section
    assert f"at most {DEFAULT_LOG_RETENTION:,} records per application" in section
    assert f"more than {DEFAULT_PENDING:,} since forgotten" in section
    assert f'"user_limit": int = {DEFAULT_USER_LIMIT}' in section
    assert f"more than {state.MAX_METRICS} metrics" in section
    linger_ms = round(defaults["shadow_linger_s"].default * 1000)
    assert f"gather for {linger_ms} ms" in section
    assert f"one call of at most {SHADOW_BATCH_INPUTS:,} inputs" in section


async def test_a_contract_state_survives_a_restart(memory_harness: ProxyHarness) -> None:
    counted = {
        "releases": [
            {"version": "1"},
            {"version": "2", "shadow": True, "validity": {"gate": "after_requests", "count": 3}},
        ]
    }
    with anyio.fail_after(120):
        async with memory_harness.serving() as service:
            operator, viewer = service.operator, service.viewer
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            await _deploy(operator, "thermal", "1", scaled(10))
            await _deploy(operator, "thermal", "2", scaled(20))
            await operator.link_model_to_app("zone-a", "thermal")
            await operator.set_route("zone-a", counted)
            for _ in range(2):
                await viewer.predict_routed(app="zone-a", input=[1.0])
            await wait_until(lambda: _served(operator, "2", 2), what="two shadow answers")
            before = await operator.show_route("zone-a")
        async with memory_harness.serving() as service:
            after = await service.operator.show_route("zone-a")
            assert [r["served"] for r in after["releases"]] == [2, 2]
            assert after["releases"][1]["reason"] == "not yet valid: 2 of 3 answers"
            assert after["releases"][1]["added_ns"] == before["releases"][1]["added_ns"]
            await service.operator.wait_ready("thermal", "2")
            await service.viewer.predict_routed(app="zone-a", input=[1.0])
            await wait_until(lambda: _served(service.operator, "2", 3), what="the third answer")
            shown = await service.operator.show_route("zone-a")
            assert [r["status"] for r in shown["releases"]] == ["serving", "serving"]


async def _served(operator: ServiceClient, version: str, count: int) -> bool:
    return bool((await _release(operator, version))["served"] >= count)
