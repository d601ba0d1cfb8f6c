"""The service end to end, through real worker processes: deploy a function, predict, deploy a
second version under continuous traffic, roll back, pin, resize, stop, restart the proxy; a
latency SLO's default output; a worker killed in the middle of a batch. The version switch with
a new version held un-ready by the test (its replica loads only once a gate file exists): every
request sent while it cannot be ready is answered by the old version at once, none waits for
the new one.

Model functions are defined here; this module is not installed, so the closure archive carries
them by value and the workers never import it.

Covers proxy/service/startup.py, proxy/service/status.py, proxy/service/slots.py,
proxy/service/versions.py and
the operations proxy/service/operations/predict.py and proxy/service/operations/deploy.py.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.errors import InvalidRequest, NotFound
from container_manager import ServiceClient
from proxy.backend.sandbox import SandboxLimits
from tests.proxy.conftest import ProxyHarness, wait_until

pytestmark = pytest.mark.slow


def summed(factor: float, marker: str = "") -> Callable[[list[list[float]]], list[float]]:
    """A model answering ``factor * sum(x)`` for each input ``x``; prints ``marker`` per batch."""

    def predict(inputs: list[list[float]]) -> list[float]:
        if marker:
            print(f"{marker}: batch of {len(inputs)}", flush=True)
        return [round(sum(x) * factor, 6) for x in inputs]

    return predict


def sleepy(delay_s: float) -> Callable[[list[list[float]]], list[float]]:
    """A model that takes ``delay_s`` per batch, then answers ``sum(x)``."""

    def predict(inputs: list[list[float]]) -> list[float]:
        time.sleep(delay_s)
        return [float(sum(x)) for x in inputs]

    return predict


class GatedModel:
    """``factor * sum(x)``, whose replicas finish loading only once the file ``gate`` exists:
    unpickling it in the worker waits for the gate, so the test decides when it can be ready."""

    def __init__(self, gate: str, factor: float) -> None:
        self.gate = gate
        self.factor = factor

    def __call__(self, inputs: list[list[float]]) -> list[float]:
        return summed(self.factor)(inputs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_when_open, (self.gate, self.factor))


def _load_when_open(gate: str, factor: float) -> Callable[[list[list[float]]], list[float]]:
    while not os.path.exists(gate):  # in the worker: its model is loading
        time.sleep(0.01)
    return summed(factor)


async def _deploy_ready(
    service: ServiceClient, name: str, version: str, func: Callable[..., Any]
) -> dict[str, Any]:
    deployed = await service.deploy_function(name, version, func, "doubles")
    await service.wait_ready(name, version)
    return deployed


async def _switch_under_traffic(operator: ServiceClient, observer: ServiceClient) -> list[str]:
    """Deploy thermal:2 while ``observer`` predicts in a loop; return the versions that answered,
    in order, until version 2 has answered five times in a row."""
    versions: list[str] = []
    v2_settled = anyio.Event()

    async def traffic() -> None:
        while not v2_settled.is_set():
            reply = await observer.predict(app="zone-a", input=[1.0, 2.0])
            assert reply["default"] is False, reply
            factor = {"1": 10, "2": 20}[reply["version"]]
            assert reply["output"] == 3.0 * factor, reply
            versions.append(reply["version"])
            if versions[-5:] == ["2"] * 5:
                v2_settled.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(traffic)
        deployed = await operator.deploy_function("thermal", "2", summed(20), "doubles")
        assert (deployed["model_version"], deployed["is_current_version"]) == ("2", True)
        await v2_settled.wait()
    return versions


async def test_deploy_predict_switch_rollback_pin_resize_stop(harness: ProxyHarness) -> None:
    with anyio.fail_after(100):
        async with harness.serving() as service:
            operator = service.operator
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            deployed = await _deploy_ready(operator, "thermal", "1", summed(10, "thermal-v1"))
            assert deployed["model_name"] == "thermal"
            assert deployed["is_current_version"] is True
            await operator.link_model_to_app("zone-a", "thermal")

            single = await operator.predict(app="zone-a", input=[1.0, 2.0])
            assert (single["output"], single["version"], single["default"]) == (30.0, "1", False)
            batch = await operator.predict(app="zone-a", inputs=[[1.0], [2.0, 3.0], []])
            assert [p["output"] for p in batch["batch_predictions"]] == [10.0, 50.0, 0.0]
            assert not any(p["default"] for p in batch["batch_predictions"])
            direct = await operator.predict(model="thermal", inputs=[[0.5, 0.5]])
            assert [p["output"] for p in direct["batch_predictions"]] == [10.0]

            for bad in ("warm", [1.0, "x"], [True], {"t": 1.0}):
                with pytest.raises(InvalidRequest):
                    await operator.predict(app="zone-a", input=bad)
            with pytest.raises(InvalidRequest):
                await operator.predict(model="thermal", inputs=[[1.0], "x"])
            with pytest.raises(InvalidRequest):
                await operator.predict(app="zone-a", model="thermal", input=[1.0])
            with pytest.raises(InvalidRequest):
                await operator.predict(app="zone-a")  # neither input nor inputs

            versions = await _switch_under_traffic(operator, service.viewer)
            switch_at = versions.index("2")
            assert switch_at > 0, "the loop saw no answer from version 1"
            assert versions == ["1"] * switch_at + ["2"] * (len(versions) - switch_at)

            rolled = await operator.rollback("thermal")
            assert (rolled["model_version"], rolled["is_serving"]) == ("1", True)
            assert await operator.get_current_model_version("thermal") == "1"
            after = await operator.predict(app="zone-a", input=[1.0])
            assert (after["version"], after["output"]) == ("1", 10.0)

            pinned = await operator.predict(model="thermal", version="2", input=[1.0])
            assert (pinned["version"], pinned["output"]) == ("2", 20.0)
            await operator.set_model_version("thermal", "2")
            current = await operator.predict(app="zone-a", input=[1.0])
            assert (current["version"], current["output"]) == ("2", 20.0)
            still_one = await operator.predict(model="thermal", version="1", input=[1.0])
            assert (still_one["version"], still_one["output"]) == ("1", 10.0)

            resized = await operator.set_num_replicas("thermal", 2)
            assert (resized["version"], resized["replicas"]) == ("2", 2)

            async def both_ready() -> bool:
                replicas = await operator.get_replicas("thermal", "2")
                return [r["state"] for r in replicas] == ["ready", "ready"]

            await wait_until(both_ready, what="two ready replicas of thermal:2")
            pids = {r["pid"] for r in await operator.get_replicas("thermal", "2")}
            assert len(pids) == 2 and None not in pids

            logs = await operator.get_logs("thermal", "1", tail=10_000)
            assert "thermal-v1: batch of" in logs
            assert "starting replica 0 of thermal:1" in logs

            stopped = await operator.stop_models(["thermal"])
            assert sorted(stopped) == ["thermal:1", "thermal:2"]
            with pytest.raises(NotFound):
                await operator.predict(model="thermal", input=[1.0])
            with pytest.raises(NotFound):
                await operator.predict(model="thermal", version="1", input=[1.0])
            fallback = await operator.predict(app="zone-a", input=[1.0])
            assert (fallback["default"], fallback["output"]) == (True, "-1.0")
            assert fallback["default_explanation"].startswith("not_found:")
            with pytest.raises(NotFound):
                await operator.get_logs("thermal", "1")


async def test_a_switch_serves_the_old_version_until_the_new_one_is_ready(
    memory_harness: ProxyHarness, gates: Path
) -> None:
    """Which version answers across a switch, by when each request was sent: before the new
    version's gate opens it cannot be ready, so each of those requests is answered by the old
    version, not held for the new one (which would answer it, or give the default past the
    SLO). The worst latency is logged, not asserted."""
    gate = gates / "gate"
    answers: list[tuple[bool, str, bool, float]] = []  # (gate open when sent, version, default, s)
    gate_open = False
    old_answered_after_deploy = anyio.Event()
    new_settled = anyio.Event()
    deployed = anyio.Event()
    with anyio.fail_after(90):
        limits = SandboxLimits(shared_dirs=(gates,))
        async with memory_harness.serving(sandbox_limits=limits) as service:
            operator, observer = service.operator, service.viewer
            await operator.register_application("zone-a", "doubles", "-1.0", 5_000_000)
            await _deploy_ready(operator, "thermal", "1", summed(10))
            await operator.link_model_to_app("zone-a", "thermal")

            async def traffic() -> None:
                after_deploy = 0
                while not new_settled.is_set():
                    sent_open, sent_after_deploy = gate_open, deployed.is_set()
                    started = anyio.current_time()
                    reply = await observer.predict(app="zone-a", input=[1.0, 2.0])
                    took = anyio.current_time() - started
                    answers.append((sent_open, reply["version"], reply["default"], took))
                    assert sent_open or (reply["version"], reply["default"]) == ("1", False), (
                        f"sent before thermal:2 could be ready, answered {reply}"
                    )
                    after_deploy += sent_after_deploy
                    if after_deploy >= 20:
                        old_answered_after_deploy.set()
                    if [a[1] for a in answers[-5:]] == ["2"] * 5:
                        new_settled.set()

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(traffic)
                reply = await operator.deploy_function(
                    "thermal", "2", GatedModel(str(gate), 20), "doubles"
                )
                assert reply["is_current_version"] is True
                deployed.set()
                await old_answered_after_deploy.wait()
                [replica] = await operator.get_replicas("thermal", "2")
                assert replica["state"] != "ready", replica  # the gate holds it
                gate_open = True
                gate.touch()
                await new_settled.wait()

    versions = [version for _, version, _, _ in answers]
    switch_at = versions.index("2")
    assert versions == ["1"] * switch_at + ["2"] * (len(versions) - switch_at)
    assert not any(default for _, _, default, _ in answers)
    worst = max(answers, key=lambda answer: answer[3])
    logging.getLogger(__name__).info(
        "switch: %d requests, %d while gated, worst latency %.1f ms (version %s)",
        len(answers),
        sum(not open_ for open_, *_ in answers),
        worst[3] * 1000,
        worst[1],
    )


async def test_restarted_proxy_serves_the_current_version(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(90):
        async with memory_harness.serving() as service:
            operator = service.operator
            await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
            await _deploy_ready(operator, "thermal", "1", summed(10))
            await operator.link_model_to_app("zone-a", "thermal")
            await _deploy_ready(operator, "thermal", "2", summed(20))
            await operator.rollback("thermal")  # current: 1, though 2 is newer
            served = await operator.predict(app="zone-a", input=[1.0])
            assert served["version"] == "1"

        async with memory_harness.serving() as restarted:
            operator = restarted.operator
            await operator.wait_ready("thermal", "1")
            reply = await operator.predict(app="zone-a", input=[2.0])
            assert (reply["version"], reply["output"], reply["default"]) == ("1", 20.0, False)
            assert await operator.get_current_model_version("thermal") == "1"
            models = await operator.get_all_models()
            assert sorted(models) == ["thermal:1", "thermal:2"]
            pinned = await operator.predict(model="thermal", version="2", input=[2.0])
            assert pinned["output"] == 40.0


async def test_past_the_slo_the_default_output_is_served(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(60):
        async with memory_harness.serving() as service:
            operator = service.operator
            await operator.register_application("slow-app", "doubles", "nan", 200_000)
            await _deploy_ready(operator, "slow", "1", sleepy(1.0))
            await operator.link_model_to_app("slow-app", "slow")

            late = await operator.predict(app="slow-app", input=[1.0, 2.0])
            assert (late["default"], late["output"], late["version"]) == (True, "nan", "1")
            assert late["default_explanation"].startswith("timeout:")
            assert (await operator.status())["served_default"] == 1

            # Asked directly the model has no SLO: the real answer comes, late.
            direct = await operator.predict(model="slow", input=[1.0, 2.0])
            assert (direct["default"], direct["output"]) == (False, 3.0)


async def test_a_worker_killed_mid_batch_is_retried_and_restarted(
    memory_harness: ProxyHarness,
) -> None:
    with anyio.fail_after(60):
        async with memory_harness.serving() as service:
            operator = service.operator
            await _deploy_ready(operator, "slow", "1", sleepy(1.5))
            [before] = await operator.get_replicas("slow", "1")
            assert before["state"] == "ready" and before["restarts"] == 0
            replies: list[dict[str, Any]] = []

            async def predict() -> None:
                replies.append(await operator.predict(model="slow", inputs=[[1.0], [2.0, 3.0]]))

            async def holding_batch() -> bool:
                [replica] = await operator.get_replicas("slow", "1")
                return bool(replica["in_flight"] == 2)

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(predict)
                await wait_until(holding_batch, what="the worker holds the batch")
                os.kill(before["pid"], signal.SIGKILL)

            [reply] = replies
            assert [p["output"] for p in reply["batch_predictions"]] == [1.0, 5.0]
            assert not any(p["default"] for p in reply["batch_predictions"])
            [after] = await operator.get_replicas("slow", "1")
            assert after["restarts"] == 1
            assert after["state"] == "ready"
            assert after["pid"] not in (None, before["pid"])
