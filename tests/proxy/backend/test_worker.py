"""The worker process against a stand-in backend: the replica protocol, message by message."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest

from bus.artifact import build_closure_archive
from proxy.backend.channel import (
    EXIT_BACKEND_LOST,
    EXIT_LOAD_FAILED,
    PROTOCOL,
    TOKEN_ENV,
    Batch,
    Bye,
    Fatal,
    Heartbeat,
    Hello,
    Result,
    RouterChannel,
    Shutdown,
    WorkerMessage,
)
from proxy.backend.worker import run_batch
from tests.bus.test_artifact import members_of, with_manifest, zip_of
from tests.proxy import models

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "0123456789abcdef"
M = TypeVar("M")


class StandIn:
    """The backend's side of the protocol, driven by the test."""

    def __init__(self, channel: RouterChannel) -> None:
        self.channel = channel
        self.pending: collections.deque[tuple[bytes, WorkerMessage]] = collections.deque()
        self.heartbeats = 0

    async def expect(self, kind: type[M], timeout_s: float = 20) -> tuple[bytes, M]:
        """The next message that is not a heartbeat, which must be a ``kind``."""
        with anyio.fail_after(timeout_s):
            while True:
                while self.pending:
                    identity, message = self.pending.popleft()
                    if isinstance(message, Heartbeat) and kind is not Heartbeat:
                        self.heartbeats += 1
                        continue
                    assert isinstance(message, kind), message
                    return identity, message
                self.pending.extend(await self.channel.receive())


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    channel = RouterChannel()
    try:
        yield StandIn(channel)
    finally:
        channel.close()


def archive(tmp_path: Path, func: Callable[..., Any], name: str = "model.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(build_closure_archive(func))
    return path


@asynccontextmanager
async def worker(
    tmp_path: Path, url: str, artifact: Path, *extra: str
) -> AsyncIterator[anyio.abc.Process]:
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    env |= {"PYTHONPATH": str(ROOT), TOKEN_ENV: TOKEN}
    command = [sys.executable, "-m", "proxy.backend.worker", "--backend", url, "--name", "thermal"]
    command += ["--version", "2", "--replica", "0", "--artifact", str(artifact), *extra]
    with (tmp_path / "worker.log").open("ab") as log:
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def exit_status(process: anyio.abc.Process, timeout_s: float = 20) -> int:
    with anyio.fail_after(timeout_s):
        return await process.wait()


async def test_hello_batches_and_clean_shutdown(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.double)
    async with worker(tmp_path, stand_in.channel.url, path) as process:
        identity, hello = await stand_in.expect(Hello)
        assert (hello.name, hello.version, hello.replica) == ("thermal", "2", 0)
        assert (hello.pid, hello.protocol, hello.token) == (process.pid, PROTOCOL, TOKEN)
        for batch_id, inputs in [(7, [1, 2.5]), (8, [10])]:
            assert stand_in.channel.send(identity, Batch(batch_id=batch_id, inputs=inputs))
            _, result = await stand_in.expect(Result)
            assert (result.batch_id, result.outputs, result.error) == (
                batch_id,
                [x * 2 for x in inputs],
                None,
            )
        stand_in.channel.send(identity, Shutdown())
        await stand_in.expect(Bye)
        assert await exit_status(process) == 0


async def test_heartbeats_continue_while_the_model_runs(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.slow_square)
    async with worker(tmp_path, stand_in.channel.url, path, "--heartbeat-s", "0.05"):
        identity, _ = await stand_in.expect(Hello)
        stand_in.heartbeats = 0
        stand_in.channel.send(identity, Batch(batch_id=1, inputs=[3]))
        _, result = await stand_in.expect(Result)
        assert result.outputs == [9]
        assert stand_in.heartbeats >= 3  # 0.3 s of model time, a heartbeat every 0.05 s


async def test_batches_are_split_to_the_batch_size(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.batch_lengths)
    async with worker(tmp_path, stand_in.channel.url, path, "--batch-size", "2"):
        identity, _ = await stand_in.expect(Hello)
        stand_in.channel.send(identity, Batch(batch_id=1, inputs=list("abcde")))
        _, result = await stand_in.expect(Result)
        assert result.outputs == [2, 2, 2, 2, 1]


async def test_a_failing_model_reports_and_keeps_serving(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.fragile)
    async with worker(tmp_path, stand_in.channel.url, path) as process:
        identity, _ = await stand_in.expect(Hello)
        stand_in.channel.send(identity, Batch(batch_id=1, inputs=["a", "boom"]))
        _, failed = await stand_in.expect(Result)
        assert failed.outputs is None and failed.error is not None
        assert failed.error.code == "model_error"
        assert failed.error.message == "ValueError: cannot predict boom"
        assert failed.error.details == {"exception": "ValueError"}
        stand_in.channel.send(identity, Batch(batch_id=2, inputs=["a"]))
        _, result = await stand_in.expect(Result)
        assert (result.batch_id, result.outputs) == (2, ["a"])
        assert process.returncode is None
    assert "cannot predict boom" in (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (models.short, "the model returned 2 outputs for 3 inputs"),
        (models.opaque, "output 0 is a object, which cannot be sent"),
        (lambda xs: {"not": "a list"}, "the model returned a dict, not a list"),
    ],
)
async def test_bad_outputs_are_reported(
    stand_in: StandIn, tmp_path: Path, func: Callable[..., Any], message: str
) -> None:
    path = archive(tmp_path, func)
    async with worker(tmp_path, stand_in.channel.url, path):
        identity, _ = await stand_in.expect(Hello)
        stand_in.channel.send(identity, Batch(batch_id=1, inputs=[1, 2, 3]))
        _, result = await stand_in.expect(Result)
        assert result.error is not None
        assert result.error.code == "bad_output"
        assert result.error.message.startswith(message)


async def test_an_incompatible_archive_is_reported_as_fatal(
    stand_in: StandIn, tmp_path: Path
) -> None:
    path = tmp_path / "old.zip"
    path.write_bytes(
        with_manifest(build_closure_archive(models.double), python="3.7", python_full="3.7.9")
    )
    async with worker(tmp_path, stand_in.channel.url, path) as process:
        _, fatal = await stand_in.expect(Fatal)
        assert (fatal.name, fatal.version, fatal.replica, fatal.token) == ("thermal", "2", 0, TOKEN)
        assert fatal.error.code == "invalid_request"
        assert "Python 3.7 (3.7.9)" in fatal.error.message
        assert await exit_status(process) == EXIT_LOAD_FAILED


async def test_a_closure_that_cannot_be_unpickled_is_fatal(
    stand_in: StandIn, tmp_path: Path
) -> None:
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
    async with worker(tmp_path, stand_in.channel.url, path) as process:
        _, fatal = await stand_in.expect(Fatal)
        assert "No module named 'modelbus_ghost_module'" in fatal.error.message
        assert await exit_status(process) == EXIT_LOAD_FAILED


async def test_a_silent_backend_makes_the_worker_exit(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.double)
    extra = ("--heartbeat-s", "0.1", "--backend-timeout-s", "0.5")
    async with worker(tmp_path, stand_in.channel.url, path, *extra) as process:
        await stand_in.expect(Hello)
        assert await exit_status(process) == EXIT_BACKEND_LOST
    assert "no word from the backend" in (tmp_path / "worker.log").read_text()


async def test_heard_backend_keeps_the_worker(stand_in: StandIn, tmp_path: Path) -> None:
    path = archive(tmp_path, models.double)
    extra = ("--heartbeat-s", "0.1", "--backend-timeout-s", "0.5")
    async with worker(tmp_path, stand_in.channel.url, path, *extra) as process:
        identity, _ = await stand_in.expect(Hello)
        # The worker's own beats (every 0.1 s) are the clock: ten of them span twice its 0.5 s
        # timeout, each answered by the backend. A worker that stopped (orphaned) beats no more.
        for _ in range(10):
            await stand_in.expect(Heartbeat)
            stand_in.channel.send(identity, Heartbeat())
        assert process.returncode is None
        stand_in.channel.send(identity, Batch(batch_id=1, inputs=[1]))
        _, result = await stand_in.expect(Result)
        assert result.outputs == [2]


class _ArrayLike:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def tolist(self) -> list[Any]:
        return list(self.values)


def test_run_batch_converts_array_like_outputs() -> None:
    result = run_batch(
        lambda xs: _ArrayLike([_ArrayLike([x]) for x in xs]), Batch(batch_id=3, inputs=[1, 2]), 64
    )
    assert (result.batch_id, result.outputs) == (3, [[1], [2]])


def test_run_batch_reports_system_exit_from_a_model() -> None:
    def leaves(inputs: list[Any]) -> list[Any]:
        raise SystemExit(4)

    result = run_batch(leaves, Batch(batch_id=1, inputs=[1]), 64)
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("model_error", "SystemExit: 4")
