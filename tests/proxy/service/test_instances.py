"""Three proxies serving ONE service URI on one Mosquitto (``serve --instance``), with a shared
PostgreSQL registry and artifact directory, each a real process (tests/proxy/proxy_process.py).

Under a continuous prediction load every request is answered exactly once — counted on the
requester's reply signal by a second connection, not only by the client that asked; SIGKILL of
one instance mid-load loses nothing: its requests in flight are re-sent by the client under the
same id (bus.rpc retries after a third of the timeout) and answered by another instance, once.
The first instance started leads the ``admin`` and ``deploy`` slots (the registry's lead): a
deploy through it is served by all three (each model call names its worker process, one
replica per instance); once it is killed the lead moves, and a deploy through the new leader is
served by both survivors. SIGTERM of a survivor under load: it withdraws from the share group
and finishes what it had, so no request is refused or lost.

The closure archive is put in the shared artifact store beforehand, so the deploy is one
``model.deploy`` request, which any instance may take: a chunked upload spread over instances
is another test's subject (proxy/uploads).

Covers the share group wiring in proxy/service/startup.py and bus/responder.py
(service_share_group), and ZeroMQ's refusal of ``--instance``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from bus import PO_REPLY, BusClient, reply_uri
from bus.artifact import build_closure_archive
from bus.errors import BusError, Unsupported
from container_manager import ServiceClient
from proxy.service.settings import ProxySettings
from proxy.service.startup import running_proxy
from proxy.uploads.artifacts import FileStore, artifact_root
from tests.bus.helpers import RecordingTransport
from tests.proxy.conftest import ProxyHarness, wait_until
from transports import open_transport

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTANCES = 3
WORKERS = 8  # requests in flight at once
PER_PHASE = 60  # answers before the kill, and again after it
TIMEOUT_S = 12.0  # a request's whole timeout: retried after 4 s without a reply
START_S = 45.0

_TAG: list[str] = []  # pickled empty with the model; filled in each worker process


def tagged(inputs: list[Any]) -> list[list[Any]]:
    """20 ms per call (so each instance has requests in flight), 1.5 s for a call with the
    input ``[-1.0]``; each output names the worker."""
    if not _TAG:
        _TAG.append(os.urandom(6).hex())
    time.sleep(1.5 if [-1.0] in inputs else 0.02)
    return [[x, _TAG[0]] for x in inputs]


class Instances:
    """Proxy processes of ``harness``'s service (its key copied into each data directory),
    each stopped with SIGTERM when the block ends unless the test killed it."""

    def __init__(self, harness: ProxyHarness, shared: list[str], log_dir: Path) -> None:
        harness.owner  # noqa: B018 (makes the service key)
        self.harness = harness
        self.shared = shared
        self.log_dir = log_dir
        self.processes: list[Process] = []

    async def start(self, count: int) -> None:
        """Start ``count`` more, at once, and wait until each serves."""
        key = self.harness.settings().entity_file
        starting = []
        for index in range(len(self.processes), len(self.processes) + count):
            data_dir = self.harness.data_dir.parent / f"instance-{index}"
            data_dir.mkdir(mode=0o700)
            shutil.copy(key, data_dir / key.name)
            command = [
                sys.executable, "-m", "tests.proxy.proxy_process",
                "--bus-url", self.harness.bus_url, "--data-dir", str(data_dir),
                "--instance", f"i{index}", *self.shared,
            ]  # fmt: skip
            with (self.log_dir / f"instance-{index}.log").open("ab") as log:
                process = await anyio.open_process(
                    command, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT
                )
            self.processes.append(process)
            starting.append((index, process))
        with anyio.fail_after(START_S):
            for index, process in starting:
                assert process.stdout is not None
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
                log = (self.log_dir / f"instance-{index}.log").read_text()
                assert line.decode() == f"ready {self.harness.service_uri}", log

    async def __aenter__(self) -> Instances:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            for process in self.processes:
                if process.returncode is None:
                    process.terminate()
            for process in self.processes:
                with anyio.move_on_after(20):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.aclose()


async def put_shared_artifact(artifacts: Path, data: bytes, tmp_path: Path) -> str:
    """What an operator copying an archive into the shared store does; returns its digest."""
    digest = hashlib.sha256(data).hexdigest()
    spool = tmp_path / "spool.closure"
    spool.write_bytes(data)
    await FileStore(artifact_root(f"file://{artifacts}")).put(spool, digest)
    return digest


class ReplyTap:
    """Counts, by request id, the replies published on one requester's reply signal."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def run(self, bus: BusClient, uri: str, *, task_status: Any) -> None:
        async with bus.subscribe(uri) as stream:
            task_status.started()
            async for message in stream:
                self.counts[message.value(PO_REPLY)["id"]] += 1


async def predict(bus: BusClient, slot: str, rid: str, value: float) -> Any:
    body = {"op": "predict", "model": "tagged", "input": [value]}
    return await bus.request(slot, body, timeout_s=TIMEOUT_S, request_id=rid)


@pytest.mark.mqtt
@pytest.mark.postgres
@pytest.mark.slow
async def test_three_instances_answer_each_request_once_through_a_kill(
    mosquitto_url: str, postgres_url: str, tmp_path: Path
) -> None:
    harness = ProxyHarness(mosquitto_url, tmp_path / "service")  # its key, for every instance
    artifacts = tmp_path / "artifacts"
    shared = ["--registry", postgres_url, "--artifacts", f"file://{artifacts}"]
    grant = [[harness.operator_grant()]]
    slot = harness.slot("predict")
    recording = RecordingTransport(open_transport(mosquitto_url))
    tap = ReplyTap()
    with anyio.fail_after(120):
        async with AsyncExitStack() as stack:
            fleet = await stack.enter_async_context(Instances(harness, shared, tmp_path))
            await fleet.start(1)
            bus = await stack.enter_async_context(
                BusClient(recording, harness.operator, proofs=grant)
            )
            tap_bus = await stack.enter_async_context(
                BusClient(open_transport(mosquitto_url), harness.operator, proofs=grant)
            )
            group = await stack.enter_async_context(anyio.create_task_group())
            await group.start(tap.run, tap_bus, reply_uri(slot, harness.operator.key_text))
            operator = ServiceClient(bus, harness.service_uri, timeout_s=TIMEOUT_S)
            admin = ServiceClient(bus, harness.service_uri, timeout_s=3 * TIMEOUT_S)
            await admin.call("admin", "status")  # answered: the first instance leads admin
            await fleet.start(INSTANCES - 1)
            leader = fleet.processes[0]

            # A deploy through the leader; all three serve it.
            digest = await put_shared_artifact(artifacts, build_closure_archive(tagged), tmp_path)
            await admin.deploy_artifact("tagged", "1", "doubles", digest)
            await serving_everywhere(operator, "1", INSTANCES)

            # The load: WORKERS callers, each request id once; SIGKILL the leader midway, while
            # it surely runs a request: the callers hold back their next requests for as long
            # as it takes to publish three slow ones, which the broker's round robin hands to
            # the three instances, one each (requests already out stay in flight).
            answered: dict[str, Any] = {}
            resumed, enough = anyio.Event(), anyio.Event()
            resumed.set()
            at_kill: list[int] = []

            async def caller(index: int) -> None:
                count = 0
                while not enough.is_set():
                    await resumed.wait()
                    rid = f"load-{index}-{count}"
                    reply = await predict(bus, slot, rid, float(count))
                    assert reply["output"][0] == [float(count)], (rid, reply)  # its own answer
                    assert rid not in answered
                    answered[rid] = reply
                    count += 1
                    if at_kill and len(answered) >= at_kill[0] + PER_PHASE:
                        enough.set()

            async def slow(index: int) -> None:
                rid = f"kill-{index}"
                reply = await predict(bus, slot, rid, -1.0)
                assert reply["output"][0] == [-1.0]
                answered[rid] = reply

            published_before = len(recording.published)
            async with anyio.create_task_group() as load:
                for index in range(WORKERS):
                    load.start_soon(caller, index)
                await wait_until(lambda: _at_least(answered, PER_PHASE), what="the first phase")
                resumed = anyio.Event()  # callers finish what they sent and wait
                published = len(recording.published)
                for index in range(INSTANCES):
                    load.start_soon(slow, index)
                await wait_until(lambda: _sent(recording, published, INSTANCES), what="3 sent")
                resumed.set()
                await anyio.sleep(0.5)  # until they run there: another process cannot tell us
                leader.send_signal(signal.SIGKILL)
                at_kill.append(len(answered))
            assert await leader.wait() == -signal.SIGKILL
            sent = recording.published[published_before:].count(slot)
            assert sent > len(answered), "no request was in flight on the killed instance"

            # The lead moved: a deploy through the new leader is served by both survivors.
            await admin.deploy_artifact("tagged", "2", "doubles", digest)
            await serving_everywhere(operator, "2", INSTANCES - 1)

            # SIGTERM one survivor under load, slow requests in flight on both: it withdraws
            # while it finishes its own, so nothing is refused (a single service would answer
            # `overloaded` meanwhile) or lost.
            await admin.deploy_artifact("sleepy", "1", "doubles", digest)  # its own workers
            await serving_everywhere(operator, "1", INSTANCES - 1, model="sleepy")
            stopping = fleet.processes[1]
            stopped = anyio.Event()

            async def slow(index: int) -> None:
                body = {"op": "predict", "model": "sleepy", "input": [-1.0]}
                reply = await bus.request(slot, body, timeout_s=TIMEOUT_S, request_id=f"s{index}")
                assert reply["output"][0] == [-1.0]

            async def burst(index: int) -> None:
                for count in range(PER_PHASE // 2):
                    rid = f"term-{index}-{count}"
                    reply = await predict(bus, slot, rid, float(count))  # an error fails here
                    assert reply["output"][0] == [float(count)]
                    answered[rid] = reply

            async with anyio.create_task_group() as load:
                for index in range(4):  # two on each instance, 1.5 s each
                    load.start_soon(slow, index)
                await anyio.sleep(0.5)  # until they run there: another process cannot tell us
                stopping.terminate()
                stopped.set()
                for index in range(WORKERS):
                    load.start_soon(burst, index)
            assert stopped.is_set() and await stopping.wait() == 0

            # Each request id was answered once on the wire, not only once to the caller.
            for index in range(2 * INSTANCES):  # a last round through the survivors
                await predict(bus, slot, f"last-{index}", 1.0)
            last = f"last-{2 * INSTANCES - 1}"
            await wait_until(lambda: _has(tap, last), timeout_s=10, what="the last round")
            assert all(rid in tap.counts for rid in answered)
            twice = {rid: n for rid, n in tap.counts.items() if n != 1}
            assert not twice, f"answered more than once: {twice}"
            group.cancel_scope.cancel()


async def serving_everywhere(
    operator: ServiceClient, version: str, count: int, model: str = "tagged"
) -> None:
    """Until ``count`` workers (one per instance) have answered with ``version``."""
    workers: set[str] = set()

    async def all_serve() -> bool:
        try:
            reply = await operator.predict(model=model, input=[0.0])
        except BusError:
            return False
        if reply["version"] == version:
            workers.add(reply["output"][1])
        return len(workers) == count

    await wait_until(all_serve, timeout_s=30, what=f"{count} instances serve version {version}")


async def _has(tap: ReplyTap, rid: str) -> bool:
    return rid in tap.counts


async def _at_least(answered: dict[str, Any], count: int) -> bool:
    return len(answered) >= count


async def _sent(recording: RecordingTransport, before: int, count: int) -> bool:
    return len(recording.published) - before >= count


async def test_zeromq_refuses_an_instance(zmq_bus_url: str, tmp_path: Path) -> None:
    settings = ProxySettings(
        bus_url=zmq_bus_url, embed_bus=False, data_dir=tmp_path / "proxy", instance="a"
    )
    with pytest.raises(Unsupported, match="ZeroMQ is one machine's bus; several instances need"):
        async with running_proxy(settings):
            pass
    assert not (tmp_path / "proxy" / "proxy.key").exists()  # refused before anything was made
