"""Quotas and caps (issue 12 item 9), each reached on a running service and answered with its
typed error: applications, the sizes of stored texts and metadata, finished uploads deleted,
replicas in all, inputs queued per sender, ``model.wait_ready`` waiters. Requests in flight per
sender are ``tests/bus/test_rpc.py``'s (the responder's). Covers proxy/service/quotas.py, the
checks in proxy/service/operations/{admin,deploy,predict}.py and the backend's replica budget.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.errors import InvalidRequest, LimitExceeded, Overloaded
from proxy.backend.sandbox import SandboxLimits
from proxy.service.quotas import MAX_METADATA_BYTES, SenderQuota, check_metadata
from tests.proxy.conftest import ProxyHarness, wait_until

pytestmark = pytest.mark.slow


def test_a_sender_quota_holds_and_releases() -> None:
    quota = SenderQuota(3, "inputs")
    with quota.hold("a", 2), quota.hold("b", 3):
        with pytest.raises(Overloaded) as busy, quota.hold("a", 2):
            pass
        assert busy.value.details == {"queued": 2, "limit": 3}
        with quota.hold("a", 1):
            assert quota.held("a") == 3
    assert (quota.held("a"), quota.held("b")) == (0, 0)
    with pytest.raises(LimitExceeded) as never, quota.hold("a", 4):  # alone too many: split
        pass
    assert never.value.details == {"size": 4, "limit": 3}


def test_metadata_is_bounded_packed() -> None:
    check_metadata({"k": "x" * (MAX_METADATA_BYTES - 100)})
    with pytest.raises(LimitExceeded) as caught:
        check_metadata({"k": "x" * MAX_METADATA_BYTES})
    assert caught.value.details["limit"] == MAX_METADATA_BYTES


def begin(metadata: dict[str, Any], sha: str = "1" * 64) -> dict[str, Any]:
    return {
        "name": "x",
        "kind": "closure",
        "size": 10,
        "sha256": sha,
        "chunk_size": 4,
        "metadata": metadata,
    }


def upload_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "registry.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM uploads").fetchone()[0])


async def test_applications_texts_and_metadata_are_capped(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(60):
        async with memory_harness.serving(max_applications=2) as service:
            operator = service.operator
            await operator.register_application("a1", "doubles", "0", 1000)
            await operator.register_application("a2", "doubles", "0", 1000)
            with pytest.raises(LimitExceeded) as full:
                await operator.register_application("a3", "doubles", "0", 1000)
            assert full.value.details == {"limit": 2}
            await operator.delete_application("a2")
            for default, description in (("x" * 4097, ""), ("0", "d" * 4097)):
                with pytest.raises(InvalidRequest, match="at most 4096 characters"):
                    await operator.register_application("a3", "doubles", default, 1000, description)
            await operator.register_application("a3", "doubles", "x" * 4096, 1000, "d" * 4096)

            big = {"blob": "x" * (MAX_METADATA_BYTES + 1)}
            with pytest.raises(LimitExceeded) as upload_meta:
                await operator.call("deploy", "upload.begin", **begin(big))
            assert upload_meta.value.details["limit"] == MAX_METADATA_BYTES
            with pytest.raises(LimitExceeded) as version_meta:
                await operator.call(
                    "deploy",
                    "model.deploy",
                    name="m",
                    version="1",
                    input_type="doubles",
                    artifact="2" * 64,
                    metadata=big,
                )
            assert version_meta.value.details["limit"] == MAX_METADATA_BYTES
            assert upload_rows(service.data_dir) == 0  # nothing was stored for either

            opened = await operator.call("deploy", "upload.begin", **begin({"k": "v"}))
            assert upload_rows(service.data_dir) == 1
            await operator.call("deploy", "upload.abort", upload_id=opened["upload_id"])
            assert upload_rows(service.data_dir) == 0  # aborted uploads leave no row behind
            await operator.deploy_function("m", "1", lambda xs: list(xs), "doubles", replicas=0)
            assert upload_rows(service.data_dir) == 0  # nor do committed ones


async def test_replicas_are_capped_in_all(memory_harness: ProxyHarness) -> None:
    def echo(inputs: list[Any]) -> list[Any]:
        return list(inputs)

    with anyio.fail_after(90):
        async with memory_harness.serving(max_replicas_total=2) as service:
            operator = service.operator
            await operator.deploy_function("m", "1", echo, "doubles", replicas=2)
            with pytest.raises(LimitExceeded) as refused:
                await operator.deploy_function("n", "1", echo, "doubles", replicas=1)
            assert refused.value.details == {"limit": 2, "running": 2}
            assert await operator.get_all_models() == ["m:1"]  # refused before registering
            await operator.deploy_function("n", "1", echo, "doubles", replicas=0)
            with pytest.raises(LimitExceeded):
                await operator.set_num_replicas("n", 1, version="1")
            await operator.set_num_replicas("m", 1, version="1")
            await operator.set_num_replicas("n", 1, version="1")  # now it fits
            assert len(await operator.get_replicas("n", "1")) == 1


async def test_inputs_waiting_per_sender_are_capped(
    memory_harness: ProxyHarness, gates: Path
) -> None:
    gate = str(gates / "gate")

    def gated(inputs: list[list[float]]) -> list[float]:
        import os
        import time

        while not os.path.exists(gate):
            time.sleep(0.02)
        return [x[0] for x in inputs]

    with anyio.fail_after(90):
        async with memory_harness.serving(
            max_inputs_per_sender=3, sandbox_limits=SandboxLimits(shared_dirs=(gates,))
        ) as service:
            operator, viewer = service.operator, service.viewer
            Path(gate).touch()
            await operator.deploy_function("m", "1", gated, "doubles")
            await operator.wait_ready("m", "1")
            Path(gate).unlink()
            with pytest.raises(LimitExceeded) as alone:  # never fits: split it
                await operator.predict(model="m", inputs=[[1.0]] * 4)
            assert alone.value.details == {"size": 4, "limit": 3}
            outputs: list[Any] = []

            async def hold() -> None:
                outputs.append(await operator.predict(model="m", inputs=[[1.0], [2.0]]))

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)

                async def held() -> bool:
                    return sum(r["in_flight"] for r in await operator.get_replicas("m")) == 2

                await wait_until(held, what="the two inputs in the worker")
                with pytest.raises(Overloaded) as busy:
                    await operator.predict(model="m", inputs=[[3.0], [4.0]])
                assert busy.value.details == {"queued": 2, "limit": 3}

                # Another sender is not held back by this one's inputs.
                async def other() -> None:
                    outputs.append(await viewer.predict(model="m", inputs=[[5.0], [6.0]]))

                tg.start_soon(other)
                Path(gate).touch()
            assert sorted(len(o["batch_predictions"]) for o in outputs) == [2, 2]


async def test_wait_ready_waiters_are_capped(memory_harness: ProxyHarness, gates: Path) -> None:
    gate = str(gates / "gate")

    def make(path: str) -> Any:
        import os
        import time

        while not os.path.exists(path):  # the worker cannot load the model until the gate
            time.sleep(0.02)
        return lambda inputs: list(inputs)

    class SlowToLoad:
        def __call__(self, inputs: list[Any]) -> list[Any]:
            return list(inputs)

        def __reduce__(self) -> Any:
            return (make, (gate,))

    with anyio.fail_after(90):
        async with memory_harness.serving(
            max_waiting_ready=1, sandbox_limits=SandboxLimits(shared_dirs=(gates,))
        ) as service:
            operator = service.operator
            await operator.deploy_function("m", "1", SlowToLoad(), "doubles", packages={})
            results: list[Any] = []

            async def wait() -> None:
                try:
                    results.append(await operator.wait_ready("m", "1", timeout_s=60))
                except Overloaded as busy:
                    results.append(busy)
                    Path(gate).touch()  # the other one waits: let the model load

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                tg.start_soon(wait)
            refused = [r for r in results if isinstance(r, Overloaded)]
            assert len(refused) == 1 and refused[0].details == {"queued": 1, "limit": 1}
            assert [r["ready"] for r in results if isinstance(r, dict)] == [True]
            with pytest.raises(InvalidRequest, match="less than or equal to 300"):
                await operator.wait_ready("m", "1", timeout_s=301)


async def test_an_upload_wider_than_its_senders_share_resumes(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    """With at most 4 requests of one sender at once, a window of 16 chunk requests meets
    ``overloaded``; the reference sender pauses and resumes from the acknowledged prefix."""
    source = tmp_path / "artifact.bin"
    source.write_bytes(bytes(range(256)) * 160)  # 40 chunks of 1 KiB
    with anyio.fail_after(60):
        async with memory_harness.serving(max_in_flight_per_sender=4) as service:
            digest = await service.operator.upload_artifact(
                source, name="wide", kind="closure", chunk_size=1024, window=16
            )
            stored = (service.data_dir / "artifacts" / digest).read_bytes()
    assert stored == source.read_bytes()
