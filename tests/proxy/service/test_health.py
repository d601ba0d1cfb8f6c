"""The health file and ``modelbus health``: written once started, refreshed, removed on stop;
checked for existence and age; and kept by a real ``modelbus serve --health-file``.

Covers proxy/service/health.py, and `modelbus health` and the --health-file of proxy/cli/serve.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import click.testing
import pytest

from proxy.cli import main
from proxy.service.health import check_health_file, keep_health_file
from tests.proxy.conftest import wait_until


async def test_the_file_is_kept_fresh_then_removed_when_the_service_stops(tmp_path: Path) -> None:
    path, stop = tmp_path / "health", anyio.Event()
    async with anyio.create_task_group() as group:
        await group.start(keep_health_file, path, 0.05, stop)
        first = int(path.read_text())
        assert check_health_file(path, 1.0) is None

        async def refreshed() -> bool:
            return path.exists() and int(path.read_text()) > first

        await wait_until(refreshed, timeout_s=10)
        stop.set()
    assert not path.exists()
    assert "has not finished starting" in str(check_health_file(path, 1.0))


def test_an_old_or_garbled_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "health"
    path.write_text(f"{time.time_ns() - 40 * 10**9}\n")
    assert "40." in str(check_health_file(path, 30.0))
    assert check_health_file(path, 60.0) is None
    path.write_text("yesterday")
    assert "does not hold a time" in str(check_health_file(path, 30.0))


def test_the_command_exits_0_only_when_healthy(tmp_path: Path) -> None:
    path = tmp_path / "health"
    runner = click.testing.CliRunner()
    missing = runner.invoke(main, ["health", "--file", str(path)])
    assert missing.exit_code == 1 and "unhealthy" in missing.stderr
    path.write_text(f"{time.time_ns()}\n")
    fine = runner.invoke(main, ["health", "--file", str(path), "--max-age", "5"])
    assert (fine.exit_code, fine.stdout) == (0, "healthy\n")


def _serve(zmq_bus_url: str, tmp_path: Path, path: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "proxy.cli", "--bus", zmq_bus_url, "serve"]
    argv += ["--data-dir", str(tmp_path / "data"), "--no-embedded-bus"]
    argv += ["--namespace-key", str(tmp_path / "ns.key"), "--heartbeat-interval", "0.2"]
    argv += ["--health-file", str(path)]
    with (tmp_path / "serve.log").open("w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log)


@pytest.mark.slow
async def test_serve_keeps_its_health_file(zmq_bus_url: str, tmp_path: Path) -> None:
    path = tmp_path / "health"
    process = _serve(zmq_bus_url, tmp_path, path)
    try:

        async def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            return path.exists() and check_health_file(path, 1.0) is None

        await wait_until(healthy, timeout_s=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert not path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
