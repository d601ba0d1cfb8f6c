"""``modelbus serve --metrics-port 0 --dashboard-port 0``: a real service process prints both
addresses, its dashboard shows it alive, its /metrics parse, and Ctrl-C still stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def start(argv: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as errors:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)


async def test_serve_hosts_metrics_and_the_dashboard(zmq_bus_url: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "proxy.cli", "--bus", zmq_bus_url, "serve"]
    argv += ["--data-dir", str(tmp_path / "data"), "--no-embedded-bus"]
    argv += ["--namespace-key", str(tmp_path / "namespace.key")]
    argv += ["--heartbeat-interval", "0.5", "--metrics-port", "0", "--dashboard-port", "0"]
    log = tmp_path / "serve.log"
    process = start(argv, log)
    try:
        assert process.stdout is not None
        addresses = {}
        for line in process.stdout:
            words = line.split()
            if words and words[0] in ("service", "metrics", "dashboard"):
                addresses[words[0]] = words[1]
            if words and words[0] == "dashboard":
                break
        assert set(addresses) == {"service", "metrics", "dashboard"}, log.read_text()
        with anyio.fail_after(20):
            while True:
                api = json.loads(
                    await anyio.to_thread.run_sync(fetch, addresses["dashboard"] + "api/services")
                )
                states = {row["service"]: row["state"] for row in api["rows"]}
                if states == {addresses["service"]: "alive"}:
                    break
                await anyio.sleep(0.1)
        text = await anyio.to_thread.run_sync(fetch, addresses["metrics"])
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"modelbus_heartbeats_sent", "modelbus_rejections", "modelbus_replicas"} <= names
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await anyio.to_thread.run_sync(process.wait) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
