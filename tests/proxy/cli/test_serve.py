"""``modelbus serve`` as a user runs it: a real process, stopped with Ctrl-C (SIGINT).

It must announce where it serves, answer over the bus, drain a request in flight when
interrupted, publish its death and exit 0.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bus import BusClient, Entity, service_states
from container_manager import ServiceClient
from proxy.cli.serve import _announce
from proxy.service.settings import ProxySettings
from proxy.service.startup import ServiceInfo
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
        "--namespace-key",
        str(data_dir.parent / "namespace.key"),
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
        owner = Entity.load(tmp_path / "namespace.key")
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
    # The namespace key lives outside the data directory; the service ran with its own key.
    data = tmp_path / "data"
    assert [path.name for path in data.glob("*.key")] == ["service.key"]
    assert Entity.load(data / "service.key").key_text != owner.key_text
    assert stat.S_IMODE((data).stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "registry.sqlite3").stat().st_mode) == 0o600
    assert "keep it OFFLINE" in (tmp_path / "serve.log").read_text()


@pytest.mark.mqtt
def test_serve_never_prints_the_bus_password(mosquitto_url: str, tmp_path: Path) -> None:
    host = mosquitto_url.removeprefix("mqtt://")
    url = f"mqtt://alice:s3cret-pw@{host}"  # the test broker takes anonymous and named clients
    argv = [sys.executable, "-m", "proxy.cli", "--bus", url, "serve", "--data-dir"]
    argv += [str(tmp_path / "data"), "--namespace-key", str(tmp_path / "namespace.key")]
    log = tmp_path / "serve.log"
    with log.open("w") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.strip().startswith("modelbus grant"):
                break
        process.send_signal(signal.SIGINT)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
    banner = "".join(lines)
    assert f"modelbus serving on mqtt://alice:***@{host}" in banner, banner + log.read_text()
    assert "s3cret-pw" not in banner + log.read_text()


def test_a_second_serve_on_one_data_directory_is_refused(zmq_bus_url: str, tmp_path: Path) -> None:
    """Two ``modelbus serve`` on one data directory: the second exits 1 naming the first; once
    the first is SIGKILLed (no clean-up at all), a new one starts."""
    data = tmp_path / "data"
    first, _ = _start(zmq_bus_url, data, tmp_path / "first.log")
    try:
        second = subprocess.run(
            [
                *(sys.executable, "-m", "proxy.cli", "--bus", zmq_bus_url, "serve"),
                *("--data-dir", str(data), "--no-embedded-bus"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.splitlines()[-1] == (
            f"error: the data directory {data} is in use by another modelbus service "
            f"(pid {first.pid}); stop it, or give this one its own --data-dir"
        )
        assert "modelbus serving" not in second.stdout
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        third, _ = _start(zmq_bus_url, data, tmp_path / "third.log")
        third.send_signal(signal.SIGINT)
        assert third.wait(timeout=60) == 0
    finally:
        for process in (first, locals().get("third")):
            if isinstance(process, subprocess.Popen):
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()


@pytest.mark.parametrize("named", [False, True])
def test_the_banner_says_which_identity_serves_and_where_its_key_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], named: bool
) -> None:
    key = tmp_path / "operator.key"
    settings = ProxySettings(data_dir=tmp_path / "data", entity_path=key if named else None)
    info = ServiceInfo(
        bus_url="zmq://127.0.0.1:7700",
        namespace="NS",
        service_uri="NS/s.modelbus/_",
        interface_uri="NS/s.modelbus/_/i.modelbus",
        entity_key="KEY",
        data_dir=str(tmp_path / "data"),
        embedded_bus=False,
    )
    _announce(info, settings, None)
    lines = capsys.readouterr().out.splitlines()
    expected = (
        f"{key}: --entity/MODELBUS_ENTITY"
        if named
        else f"{tmp_path / 'data' / 'proxy.key'}: the data directory's key"
    )
    assert f"  entity     KEY ({expected})" in lines


def test_an_instance_on_zeromq_is_refused_with_why(tmp_path: Path) -> None:
    """``serve --instance`` on a zmq:// bus exits 1 at once, saying ZeroMQ cannot spread a
    service's requests over instances (no forwarder is embedded, nothing serves)."""
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "proxy.cli", "--bus", "zmq://127.0.0.1:7799", "serve"),
            *("--data-dir", str(tmp_path / "data"), "--instance", "a"),
            *("--namespace-key", str(tmp_path / "namespace.key")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    last = refused.stderr.splitlines()[-1]
    assert last.startswith("error: instance 'a': ZeroMQ is one machine's bus; several instances ")
    assert "need MQTT" in last
    assert "modelbus serving" not in refused.stdout


def test_an_instance_without_a_shared_artifact_store_is_refused(tmp_path: Path) -> None:
    """``serve --instance`` on MQTT with no ``--artifacts`` exits 1 before it connects: the
    other instances could neither start its versions nor continue its uploads."""
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "proxy.cli", "--bus", "mqtt://127.0.0.1:9", "serve"),
            *("--data-dir", str(tmp_path / "data"), "--instance", "a"),
            *("--namespace-key", str(tmp_path / "namespace.key")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    last = refused.stderr.splitlines()[-1]
    assert last.startswith("error: instance 'a': several instances need one shared artifact store")
    assert "modelbus serving" not in refused.stdout
