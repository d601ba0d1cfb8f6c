"""The embedded backend with real worker processes: predictions, batching, crashes, scaling.

Covers proxy/backend/embedded.py with proxy/backend/replica_link.py (the replica protocol),
proxy/backend/supervisor.py, proxy/backend/runtime.py (the process runtime) and
proxy/backend/containers.py (the engine seam, with tests/proxy/backend/test_docker.py, which also
covers proxy/backend/docker_engine.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.artifact import build_closure_archive
from bus.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    Overloaded,
    RequestTimeout,
)
from proxy.backend.embedded import BackendSettings, EmbeddedBackend, ReplicaState
from proxy.backend.runtime import ProcessRuntime
from proxy.backend.sandbox import SandboxLimits
from tests.bus.test_artifact import members_of, with_manifest, zip_of
from tests.proxy import models

FAST = BackendSettings(
    heartbeat_s=0.2,
    silence_limit_s=1.5,
    stop_grace_s=3.0,
    kill_grace_s=1.0,
    restart_min_s=0.1,
    restart_max_s=1.0,
)
READY_S = 30.0


def running(
    tmp_path: Path, settings: BackendSettings = FAST, *, shared: tuple[Path, ...] = ()
) -> EmbeddedBackend:
    """A backend for one test (entered in the test: its task group must stay in one task);
    ``shared``: directories its sandboxed models see (their gate files)."""
    limits = SandboxLimits(shared_dirs=shared)
    runtime = ProcessRuntime(tmp_path / "backend", sandbox_limits=limits)
    return EmbeddedBackend(tmp_path / "backend", settings=settings, runtime=runtime)


def archive(tmp_path: Path, func: Callable[..., Any], name: str) -> Path:
    path = tmp_path / f"{name}.zip"
    path.write_bytes(build_closure_archive(func))
    return path


async def deploy(
    backend: EmbeddedBackend,
    tmp_path: Path,
    func: Callable[..., Any],
    version: str = "1",
    *,
    replicas: int = 1,
    batch_size: int = 64,
    all_ready: bool = True,
) -> None:
    path = archive(tmp_path, func, f"thermal-{version}")
    await backend.start_version("thermal", version, path, replicas=replicas, batch_size=batch_size)
    await backend.wait_ready("thermal", version, timeout_s=READY_S)
    if all_ready:
        await wait_until(
            lambda: all(r.state == "ready" for r in backend.replicas("thermal", version))
        )


async def wait_until(condition: Callable[[], bool], timeout_s: float = READY_S) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 — polls state the backend exposes no event for
            await anyio.sleep(0.02)


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_predicts_single_and_batched_inputs(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.double)
        assert backend.is_ready("thermal", "1")
        assert await backend.predict("thermal", "1", [21], timeout_s=10) == [42]
        assert await backend.predict("thermal", "1", [1, 2.5, -3], timeout_s=10) == [2, 5.0, -6]
        assert await backend.predict("thermal", "1", [], timeout_s=10) == []
        stats = backend.stats("thermal", "1")
        assert (stats.predictions, stats.errors, stats.batch_sizes) == (4, 0, {1: 1, 3: 1})


async def test_closures_and_lambdas_serve(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        offset = 100
        await deploy(backend, tmp_path, models.scaler(3), "scaled")
        await deploy(backend, tmp_path, lambda xs: [x + offset for x in xs], "shifted")
        assert await backend.predict("thermal", "scaled", [1, 2], timeout_s=10) == [3, 6]
        assert await backend.predict("thermal", "shifted", [1, 2], timeout_s=10) == [101, 102]


async def test_two_versions_serve_side_by_side(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.scaler(1), "1")
        await deploy(backend, tmp_path, models.scaler(10), "2")
        assert backend.versions() == [("thermal", "1"), ("thermal", "2")]
        async with anyio.create_task_group() as tg:
            results: dict[str, list[Any]] = {}

            async def ask(version: str) -> None:
                results[version] = await backend.predict("thermal", version, [1, 2], timeout_s=10)

            tg.start_soon(ask, "1")
            tg.start_soon(ask, "2")
        assert results == {"1": [1, 2], "2": [10, 20]}
        pids = {r.pid for v in ("1", "2") for r in backend.replicas("thermal", v)}
        assert len(pids) == 2


async def test_two_replicas_both_serve(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.with_pid, replicas=2)
        replicas = backend.replicas("thermal", "1")
        assert [r.index for r in replicas] == [0, 1]
        seen: set[str] = set()

        async def ask(value: int) -> None:
            [[echo, process]] = await backend.predict("thermal", "1", [value], timeout_s=10)
            assert echo == value
            seen.add(process)

        async with anyio.create_task_group() as tg:
            for value in range(20):
                tg.start_soon(ask, value)
        assert len(seen) == 2
        assert all(r.batches > 0 for r in backend.replicas("thermal", "1"))


async def test_concurrent_load_is_batched(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.slow_square, batch_size=8)
        results: dict[int, list[Any]] = {}

        async def ask(value: int) -> None:
            results[value] = await backend.predict("thermal", "1", [value], timeout_s=20)

        async with anyio.create_task_group() as tg:
            for value in range(12):
                tg.start_soon(ask, value)
        assert results == {value: [value * value] for value in range(12)}
        sizes = backend.stats("thermal", "1").batch_sizes
        assert max(sizes) > 1
        assert max(sizes) <= 8
        assert sum(size * count for size, count in sizes.items()) == 12
        assert sum(sizes.values()) < 12


async def test_killed_worker_is_restarted_and_its_batch_retried(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.sleepy)
        [before] = backend.replicas("thermal", "1")
        assert before.pid is not None
        outputs: list[Any] = []

        async def ask() -> None:
            outputs.extend(await backend.predict("thermal", "1", ["x", "y"], timeout_s=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_until(lambda: backend.replicas("thermal", "1")[0].in_flight == 2)
            os.kill(before.pid, signal.SIGKILL)
        [after] = backend.replicas("thermal", "1")
        assert after.restarts == 1
        assert after.state == "ready"
        assert after.pid not in (None, before.pid)
        [[x, process], [y, same]] = outputs
        assert (x, y) == ("x", "y") and process == same
        assert backend.stats("thermal", "1").retries == 1
        assert is_gone(before.pid)


async def test_batch_of_a_killed_worker_moves_to_another_replica(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.sleepy, replicas=2)
        outputs: list[Any] = []

        async def ask() -> None:
            outputs.extend(await backend.predict("thermal", "1", ["x"], timeout_s=30))

        def busy() -> list[ReplicaState]:
            return [r for r in backend.replicas("thermal", "1") if r.in_flight and r.pid]

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_until(lambda: bool(busy()))
            [victim] = busy()
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
        [[echo, _]] = outputs
        assert echo == "x"
        [other] = [r for r in backend.replicas("thermal", "1") if r.index != victim.index]
        assert (other.restarts, other.batches) == (0, 1)  # the other replica answered
        assert sum(r.restarts for r in backend.replicas("thermal", "1")) == 1


async def test_a_batch_that_kills_two_workers_fails_clearly(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.suicidal)
        with pytest.raises(InternalError) as caught:
            await backend.predict("thermal", "1", [1], timeout_s=30)
        assert caught.value.message == "replica 0 of thermal:1 crashed twice while predicting"
        assert backend.stats("thermal", "1").errors == 1
        await wait_until(lambda: backend.replicas("thermal", "1")[0].state == "ready")
        assert backend.replicas("thermal", "1")[0].restarts == 2


async def test_a_raising_model_fails_its_batch_and_keeps_serving(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.fragile)
        [before] = backend.replicas("thermal", "1")
        with pytest.raises(InternalError) as caught:
            await backend.predict("thermal", "1", ["ok", "boom"], timeout_s=10)
        assert "ValueError: cannot predict boom" in caught.value.message
        assert caught.value.details["cause"] == "model_error"
        assert caught.value.details["exception"] == "ValueError"
        assert await backend.predict("thermal", "1", ["ok"], timeout_s=10) == ["ok"]
        [after] = backend.replicas("thermal", "1")
        assert (after.pid, after.restarts) == (before.pid, 0)


async def test_a_poison_input_fails_only_its_own_request(tmp_path: Path, gates: Path) -> None:
    """Issue 12 item 7: three requesters share a batch and one input makes the model raise with
    a message quoting the whole batch. The batch is retried input by input: the poison fails only
    its own request, whose error quotes only its own input; the others get their outputs."""
    gate = str(gates / "gate")

    def poisoned(inputs: list[str]) -> list[str]:
        import os as system
        import time as clock

        while "wait" in inputs and not system.path.exists(gate):
            clock.sleep(0.02)
        if any("boom" in x for x in inputs):
            raise ValueError(f"cannot predict {inputs!r}")
        return [f"out-{x}" for x in inputs]

    async with running(tmp_path, shared=(gates,)) as backend:
        await deploy(backend, tmp_path, poisoned)
        outcomes: dict[str, Any] = {}

        async def ask(value: str) -> None:
            try:
                outcomes[value] = await backend.predict("thermal", "1", [value], timeout_s=30)
            except InternalError as error:
                outcomes[value] = error

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "wait")
            await wait_until(lambda: bool(backend.replicas("thermal", "1")[0].in_flight))
            for value in ("alice-secret", "boom", "carol-secret"):
                tg.start_soon(ask, value)
            await wait_until(lambda: backend.stats("thermal", "1").queued == 3)
            Path(gate).touch()
        stats = backend.stats("thermal", "1")
    assert outcomes["wait"] == ["out-wait"]
    assert outcomes["alice-secret"] == ["out-alice-secret"]
    assert outcomes["carol-secret"] == ["out-carol-secret"]
    poison = outcomes["boom"]
    assert isinstance(poison, InternalError)
    assert poison.details["cause"] == "model_error"
    assert "cannot predict ['boom']" in poison.message
    assert "secret" not in poison.message and "secret" not in str(poison.details)
    assert stats.batch_sizes[3] == 1  # the three did share a batch, which failed and was split


async def test_a_model_returning_too_few_outputs_fails_clearly(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.short)
        with pytest.raises(InternalError, match="returned 1 outputs for 2 inputs"):
            await backend.predict("thermal", "1", [1, 2], timeout_s=10)


async def test_incompatible_archive_is_refused_at_start(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        path = tmp_path / "old.zip"
        path.write_bytes(
            with_manifest(build_closure_archive(models.double), python="3.7", python_full="3.7.9")
        )
        with pytest.raises(InvalidRequest) as caught:
            await backend.start_version("thermal", "old", path)
        assert "Python 3.7 (3.7.9)" in caught.value.message
        assert f"{sys.version_info.major}.{sys.version_info.minor}" in caught.value.message
        assert backend.versions() == []
        with pytest.raises(NotFound):
            backend.replicas("thermal", "old")


async def test_a_model_the_worker_cannot_load_fails_without_restarts(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        ghost = b"cmodelbus_ghost_module\npredict\n."
        members = members_of(
            with_manifest(
                build_closure_archive(models.double),
                closure_sha256=hashlib.sha256(ghost).hexdigest(),
            )
        )
        members["closure.pkl"] = ghost
        path = tmp_path / "ghost.zip"
        path.write_bytes(zip_of(members))
        await backend.start_version("thermal", "1", path)
        with pytest.raises(InvalidRequest, match="No module named 'modelbus_ghost_module'"):
            await backend.wait_ready("thermal", "1", timeout_s=READY_S)
        [replica] = backend.replicas("thermal", "1")
        assert (replica.state, replica.restarts, replica.pid) == ("failed", 0, None)
        assert replica.error is not None and "modelbus_ghost_module" in replica.error
        with pytest.raises(InvalidRequest, match="modelbus_ghost_module"):
            await backend.predict("thermal", "1", [1], timeout_s=5)


async def test_stop_version_lets_the_batch_in_hand_finish_then_stops_workers(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.sleepy, replicas=2)
        pids = [r.pid for r in backend.replicas("thermal", "1")]
        assert all(pid is not None and not is_gone(pid) for pid in pids)
        outputs: list[Any] = []

        async def ask() -> None:
            outputs.extend(await backend.predict("thermal", "1", ["x"], timeout_s=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_until(lambda: backend.stats("thermal", "1").in_flight == 1)
            await backend.stop_version("thermal", "1")
        [[echo, _]] = outputs
        assert echo == "x"
        assert all(pid is not None and is_gone(pid) for pid in pids)
        assert backend.versions() == []
        with pytest.raises(NotFound):
            await backend.predict("thermal", "1", [1], timeout_s=1)
        with pytest.raises(NotFound):
            await backend.stop_version("thermal", "1")
    [log] = (tmp_path / "backend" / "logs").glob("*-r0.log")
    assert "shutting down at the backend's request" in log.read_text()


async def test_leaving_the_backend_stops_every_worker(tmp_path: Path) -> None:
    async with EmbeddedBackend(tmp_path / "backend", settings=FAST) as backend:
        await deploy(backend, tmp_path, models.double, "1", replicas=2)
        await deploy(backend, tmp_path, models.double, "2")
        pids = [r.pid for v in ("1", "2") for r in backend.replicas("thermal", v)]
    assert len(pids) == 3
    assert all(pid is not None and is_gone(pid) for pid in pids)


async def test_scaling_replicas_down_and_up(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.double, replicas=2)
        [first, second] = backend.replicas("thermal", "1")
        await backend.set_replicas("thermal", "1", 1)
        assert [r.index for r in backend.replicas("thermal", "1")] == [0]
        assert second.pid is not None and is_gone(second.pid)
        await backend.set_replicas("thermal", "1", 0)
        assert backend.replicas("thermal", "1") == []
        assert not backend.is_ready("thermal", "1")
        with pytest.raises(RequestTimeout, match="no replica is ready"):
            await backend.predict("thermal", "1", [1], timeout_s=0.3)
        assert backend.stats("thermal", "1").queued == 0  # the timed-out input left the queue
        await backend.set_replicas("thermal", "1", 3)
        await backend.wait_ready("thermal", "1", timeout_s=READY_S)
        assert [r.index for r in backend.replicas("thermal", "1")] == [0, 1, 2]
        assert await backend.predict("thermal", "1", [4], timeout_s=10) == [8]
        assert first.pid is not None and is_gone(first.pid)


async def test_predict_waits_for_a_replica_to_become_ready(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        path = archive(tmp_path, models.double, "thermal-1")
        await backend.start_version("thermal", "1", path)
        assert not backend.is_ready("thermal", "1")
        assert await backend.predict("thermal", "1", [5], timeout_s=READY_S) == [10]


async def test_full_queue_is_overloaded(tmp_path: Path) -> None:
    async with running(tmp_path, replace(FAST, queue_limit=3)) as backend:
        await deploy(backend, tmp_path, models.sleepy)
        results: list[list[Any]] = []

        async def ask(inputs: list[int]) -> None:
            results.append(await backend.predict("thermal", "1", inputs, timeout_s=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, [1])
            await wait_until(lambda: backend.stats("thermal", "1").in_flight == 1)
            tg.start_soon(ask, [2, 3, 4])
            await wait_until(lambda: backend.stats("thermal", "1").queued == 3)
            with pytest.raises(Overloaded, match="3 inputs queued"):
                await backend.predict("thermal", "1", [5], timeout_s=30)
        assert sorted(len(outputs) for outputs in results) == [1, 3]


async def test_bad_requests_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        with pytest.raises(NotFound, match="thermal:9 is not started"):
            await backend.predict("thermal", "9", [1], timeout_s=1)
        with pytest.raises(NotFound):
            await backend.wait_ready("thermal", "9", timeout_s=1)
        await deploy(backend, tmp_path, models.double)
        with pytest.raises(Conflict):
            await backend.start_version("thermal", "1", tmp_path / "thermal-1.zip")
        with pytest.raises(InvalidRequest, match="input 1 cannot be sent"):
            await backend.predict("thermal", "1", [1, object()], timeout_s=1)
        with pytest.raises(LimitExceeded, match="input 0 is"):
            await backend.predict("thermal", "1", [b"x" * (17 * 1024 * 1024)], timeout_s=1)
        with pytest.raises(InvalidRequest, match="replicas must be"):
            await backend.set_replicas("thermal", "1", -1)
        with pytest.raises(NotFound, match="no replica 5"):
            await backend.logs("thermal", "1", 5)
        assert "model loaded" in await backend.logs("thermal", "1", 0)


async def test_a_silent_worker_is_restarted(tmp_path: Path) -> None:
    async with running(tmp_path) as backend:
        await deploy(backend, tmp_path, models.double)
        [before] = backend.replicas("thermal", "1")
        assert before.pid is not None
        os.killpg(before.pid, signal.SIGSTOP)  # the sandbox and its worker: alive, but silent
        await wait_until(lambda: backend.replicas("thermal", "1")[0].restarts == 1)
        await backend.wait_ready("thermal", "1", timeout_s=READY_S)
        assert await backend.predict("thermal", "1", [1], timeout_s=10) == [2]
        assert is_gone(before.pid)
