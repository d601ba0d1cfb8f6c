"""``modelbus dashboard PATTERN`` run for real: as a subprocess on a ZeroMQ forwarder it prints
its address and serves the fleet; bound beyond loopback without a token it refuses to start.

Covers proxy/cli/dashboard.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import click.testing

from proxy.cli import main
from tests.bus.helpers import Namespace
from tests.proxy.dashboard.helpers import beating


def test_a_non_loopback_host_needs_a_token(tmp_path: Path) -> None:
    key = tmp_path / "viewer.key"
    Namespace().owner.save(key)
    runner = click.testing.CliRunner()
    result = runner.invoke(
        main, ["--entity", str(key), "dashboard", "ns/*", "--host", "0.0.0.0", "--port", "0"]
    )
    assert result.exit_code == 1
    assert "give a --token" in result.output


def fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def test_the_command_serves_the_fleet(
    zmq_bus_url: str, namespace: Namespace, tmp_path: Path
) -> None:
    key = tmp_path / "owner.key"
    namespace.owner.save(key)
    service = namespace.uri("svc", "a")
    command = [sys.executable, "-m", "proxy.cli", "--bus", zmq_bus_url, "--entity", str(key)]
    command += ["dashboard", namespace.uri("*"), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "dashboard.log").open("wb")
    process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = (await process.stdout.receive()).decode()
        assert line.startswith(f"modelbus dashboard: {namespace.uri('*')} at http://127.0.0.1:")
        url = line.split(" at ", 1)[1].strip()
        member = namespace.member("svc/*", "P")
        async with beating(zmq_bus_url, member, service, dict, interval_s=0.2):
            with anyio.fail_after(15):
                while True:
                    data = await anyio.to_thread.run_sync(fetch_json, url + "api/services")
                    assert isinstance(data, dict)
                    if [row["state"] for row in data["rows"]] == ["alive"]:
                        break
                    await anyio.sleep(0.1)
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
        log.close()
    assert process.returncode == 0, (tmp_path / "dashboard.log").read_text()
