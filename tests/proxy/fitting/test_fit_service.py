"""Fits through a whole proxy (real sandboxed one-shot workers, SQLite, the memory bus).

Covers proxy/fitting/jobs.py, proxy/fitting/runner.py, proxy/fitting/worker.py,
proxy/fitting/protocol.py,
proxy/service/operations/fit.py, proxy/service/wiring.py, container_manager/jobs.py,
proxy/registry/fit_jobs.py and
bus/fittable.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import PayloadObject
from bus.errors import Conflict, InvalidRequest, PermissionMissing
from bus.grants import encode_chain
from bus.po import PO_METADATA
from container_manager import ServiceClient
from tests.proxy import fit_models
from tests.proxy.conftest import ProxyHarness, wait_until

TIMEOUT_S = 120


async def publish_points(client: ServiceClient, stream: str, values: list[float]) -> int:
    """Persisted points ``{val, ts}`` on ``stream/p<i>``; returns the first point's ts."""
    base = time.time_ns() - 10**9 * len(values)
    for index, value in enumerate(values):
        po = PayloadObject.msgpack({"val": value, "ts": base + index * 10**9}, PO_METADATA)
        await client.bus.publish(f"{stream}/p{index}", po, persist=True)
    return base


async def deploy_mean(client: ServiceClient, fit: Any = fit_models.fit_mean) -> None:
    await client.deploy_function(
        "thermal",
        "1",
        fit_models.mean_model(fit),
        "doubles",
        metadata={"fit_auto_switch": True},
    )
    await client.wait_ready("thermal", "1")


async def test_fit_under_traffic_switches_with_no_failed_request(
    memory_harness: ProxyHarness,
) -> None:
    h = memory_harness
    stream = f"{h.service_uri}/data/temp"
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await deploy_mean(operator)
            await publish_points(operator, stream, [1.0, 2.0, 3.0, 6.0])
            answers: list[tuple[str, float]] = []
            failures: list[BaseException] = []
            done = anyio.Event()

            async def traffic() -> None:
                while not done.is_set():
                    try:
                        reply = await operator.predict(model="thermal", input=[1.0])
                        answers.append((reply["version"], reply["output"]))
                    except Exception as exc:  # counted: the test wants none
                        failures.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(traffic)
                job = await operator.fit("thermal", streams=[f"{stream}/*"], proofs=proofs)
                assert job["state"] in ("queued", "running")
                finished = await operator.wait_fit(job["job_id"])
                assert finished["state"] == "succeeded", finished
                new = finished["new_version"]

                async def switched() -> bool:
                    return bool(answers) and answers[-1][0] == new

                await wait_until(switched, what="the new version answers")
                done.set()
            assert failures == []
            versions = [v for v, _ in answers]
            assert versions[0] == "1" and versions[-1] == new
            assert versions == sorted(versions, key=lambda v: v != "1")  # old, then new only
            assert answers[0][1] == 0.0 and answers[-1][1] == 3.0
            info = await operator.get_model_info("thermal", new)
            assert info["is_current_version"] is True
            meta = (await operator.call("admin", "model.info", name="thermal", version=new))[
                "metadata"
            ]
            assert meta["parent_version"] == "1" and meta["fit_job"] == job["job_id"]
            assert meta["training_streams"] == [f"{stream}/*"]
            assert meta["training_points"] == 4
            assert meta["training_range"]["start_ns"] < meta["training_range"]["end_ns"]
            # Chained: the fitted version is fittable again, and "deployed, not current" works.
            again = await operator.fit(
                "thermal", streams=[f"{stream}/*"], proofs=proofs, make_current=False
            )
            second = await operator.wait_fit(again["job_id"])
            assert second["state"] == "succeeded", second
            assert await operator.get_current_model_version("thermal") == new
            assert "deployed, not current" in second["progress"]
            listed = await operator.fit_list("thermal")
            assert [j["job_id"] for j in listed] == [again["job_id"], job["job_id"]]


@pytest.mark.parametrize("fit", ["raises", "hangs", "killed", "greedy"])
async def test_a_failed_fit_is_recorded_and_serving_is_unchanged(
    memory_harness: ProxyHarness, fit: str
) -> None:
    h = memory_harness
    stream = f"{h.service_uri}/data/temp"
    proofs = [encode_chain([h.operator_grant()])]
    func = {
        "raises": fit_models.fit_raises,
        "hangs": fit_models.fit_hangs,
        "greedy": fit_models.fit_greedy,
    }.get(fit, fit_models.fit_slow)
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await deploy_mean(operator, func)
            await publish_points(operator, stream, [1.0])
            limit_s = 3.0 if fit == "hangs" else 60.0  # the killed one must die of the kill
            job = await operator.fit(
                "thermal", streams=[f"{stream}/*"], proofs=proofs, timeout_s=limit_s, memory_mb=1024
            )
            if fit == "killed":

                async def started() -> bool:
                    status = await operator.fit_status(job["job_id"])
                    return status["pid"] is not None and status["progress"] == "slow fit started"

                await wait_until(started, what="the fit worker runs")
                pid = (await operator.fit_status(job["job_id"]))["pid"]
                os.killpg(pid, signal.SIGKILL)
            finished = await operator.wait_fit(job["job_id"])
            assert finished["state"] == "failed"
            expected = {
                "raises": "fit_error",
                "hangs": "fit_timeout",
                "killed": "fit_killed",
                "greedy": "fit_error",  # past its address-space limit: MemoryError
            }
            assert finished["error"]["code"] == expected[fit], finished
            if fit == "greedy":
                assert "MemoryError" in finished["error"]["message"]
            if fit == "raises":
                assert "ValueError: the data is all wrong" in finished["error"]["message"]
                assert "the data is all wrong" in finished["log"]
            assert await operator.get_all_models() == ["thermal:1"]
            reply = await operator.predict(model="thermal", input=[1.0])
            assert (reply["version"], reply["output"]) == ("1", 0.0)


async def test_bad_data_and_a_stream_the_requester_may_not_consume(
    memory_harness: ProxyHarness,
) -> None:
    h = memory_harness
    deployer = h.operator.__class__.generate(comment="deployer")
    allowed = f"{h.service_uri}/data/allowed"
    grants = [
        [h.grant(deployer, h.slot("deploy"), "P")],
        [h.grant(deployer, f"{h.service_uri}/signal/*", "C*")],
        [h.grant(deployer, f"{allowed}/*", "C*")],
    ]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            await deploy_mean(service.operator)
            async with h.client(deployer, grants) as client:
                proofs = [encode_chain(chain) for chain in grants]
                with pytest.raises(PermissionMissing) as refused:
                    await client.fit(
                        "thermal",
                        streams=[f"{allowed}/*", f"{h.service_uri}/data/secret/*"],
                        proofs=proofs,
                    )
                assert "data/secret" in refused.value.message
                assert await service.operator.fit_list() == []  # nothing was started
                job = await client.fit("thermal", streams=[f"{allowed}/*"], proofs=proofs)
                failed = await client.wait_fit(job["job_id"])
                assert failed["state"] == "failed" and failed["error"]["code"] == "bad_data"


async def test_a_restart_during_a_fit_marks_it_interrupted_and_it_resumes(
    memory_harness: ProxyHarness,
) -> None:
    h = memory_harness
    stream = f"{h.service_uri}/data/temp"
    proofs = [encode_chain([h.operator_grant()])]
    with anyio.fail_after(TIMEOUT_S):
        async with h.serving() as service:
            operator = service.operator
            await deploy_mean(operator, fit_models.fit_pause)
            await publish_points(operator, stream, [4.0])
            job = await operator.fit("thermal", streams=[f"{stream}/*"], proofs=proofs)

            async def running() -> bool:
                return (await operator.fit_status(job["job_id"]))["state"] == "running"

            await wait_until(running, what="the fit runs")
        async with h.serving() as restarted:
            operator = restarted.operator
            status = await operator.fit_status(job["job_id"])
            assert status["state"] == "interrupted", status
            await operator.wait_ready("thermal", "1")
            assert (await operator.predict(model="thermal", input=[0.0]))["version"] == "1"
            resumed = await operator.fit_resume(job["job_id"])
            assert resumed["state"] == "queued"
            done = await operator.wait_fit(job["job_id"])
            assert done["state"] == "succeeded" and done["attempts"] == 2, done
            await operator.wait_ready("thermal", done["new_version"])
            reply = await operator.predict(model="thermal", input=[0.0])
            assert (reply["version"], reply["output"]) == (done["new_version"], 4.0)


async def test_a_fit_on_an_uploaded_file_and_its_refusals(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    good, bad = tmp_path / "train.json", tmp_path / "train.txt"
    good.write_text(json.dumps([1.0, 2.0, 6.0]))
    bad.write_text("not json at all")
    with anyio.fail_after(TIMEOUT_S):
        async with memory_harness.serving() as service:
            operator = service.operator
            await deploy_mean(operator)
            job = await operator.fit("thermal", data_file=good, new_version="2")
            done = await operator.wait_fit(job["job_id"])
            assert done["state"] == "succeeded", done
            meta = (await operator.call("admin", "model.info", name="thermal", version="2"))[
                "metadata"
            ]
            assert meta["training_upload"] and meta["training_streams"] == []
            await operator.wait_ready("thermal", "2")
            reply = await operator.predict(model="thermal", input=[0.0])
            assert (reply["version"], reply["output"]) == ("2", 3.0)
            with pytest.raises(Conflict):  # versions are immutable
                await operator.fit("thermal", data_file=good, new_version="2")
            failed = await operator.wait_fit(
                (await operator.fit("thermal", data_file=bad))["job_id"]
            )
            assert failed["state"] == "failed" and failed["error"]["code"] == "bad_data"
            assert "not JSON" in failed["error"]["message"]
            with pytest.raises(InvalidRequest):
                await operator.fit("thermal")  # neither streams nor a file
