"""``modelbus serve`` as a user runs it: a real process, stopped with Ctrl-C (SIGINT).

It must announce where it serves, answer over the bus, drain a request in flight when
interrupted, publish its death and exit 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bus import BusClient, Entity, service_states
from container_manager import ServiceClient
from tests.proxy.conftest import wait_until
from transports import open_transport

pytestmark = pytest.mark.slow


def slow_double(inputs: list[list[float]]) -> list[float]:
    import time as clock

    clock.sleep(1.5)
    return [2 * row[0] for row in inputs]


def _start(zmq_bus_url: str, data_dir: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [
        sys.executable,
        "-m",
        "proxy.cli",
        "--bus",
        zmq_bus_url,
        "serve",
        "--data-dir",
        str(data_dir),
        "--no-embedded-bus",
        "--heartbeat-interval",
        "0.5",
    ]
    with log.open("w") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # the announcement ends with the grant hints
        lines.append(line)
        if line.strip().startswith("modelbus grant") and "liveness" in line:
            break
    text = "".join(lines)
    assert f"modelbus serving on {zmq_bus_url}" in text, text + log.read_text()
    hints = [line.split("--uri ")[1].split()[0] for line in lines if "modelbus grant" in line]
    # The narrow grants only (issue 12 item 4): a slot each, and the liveness to read.
    assert [hint.rsplit("/", 2)[-2:] for hint in hints] == [
        ["slot", "predict'"],
        ["slot", "admin'"],
        ["slot", "deploy'"],
        ["!meta", "*'"],
    ], text
    service = next(line.split()[1] for line in lines if line.strip().startswith("service"))
    return process, service


async def test_serve_drains_in_flight_requests_and_announces_its_death(
    zmq_bus_url: str, tmp_path: Path
) -> None:
    process, service_uri = _start(zmq_bus_url, tmp_path / "data", tmp_path / "serve.log")
    try:
        owner = Entity.load(tmp_path / "data" / "proxy.key")
        async with BusClient(open_transport(zmq_bus_url), owner) as bus:
            service = ServiceClient(bus, service_uri)
            await service.check_alive()  # the first heartbeat precedes the announcement
            await service.deploy_function("slow", "1", slow_double, "doubles")
            await service.wait_ready("slow", "1")
            outputs: list[float] = []

            async def predict() -> None:
                reply = await service.predict(model="slow", input=[21.0])
                outputs.append(reply["output"])

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(predict)

                async def worker_has_it() -> bool:
                    return any(r["in_flight"] for r in await service.get_replicas("slow"))

                await wait_until(worker_has_it, what="the prediction in the worker")
                process.send_signal(signal.SIGINT)
            assert outputs == [42.0]  # answered, not cut off by the shutdown
            with anyio.fail_after(30):
                returncode = await anyio.to_thread.run_sync(process.wait)
            assert returncode == 0, (tmp_path / "serve.log").read_text()
            (state,) = [s for s in await service_states(bus, service_uri)]
            assert not state.is_alive
            assert state.reason == "died"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert "draining" in (tmp_path / "serve.log").read_text()
