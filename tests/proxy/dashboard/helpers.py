"""Helpers for the dashboard's tests: a dashboard on a real bus, services that beat into it, and
a real headless Chromium (Debian's ``chromium``, driven by Playwright; nothing downloads a
browser) to look at its page.

The dashboard runs in the test's own task group (``async with running_dashboard(...)``), as the
proxy tests run their service. Screenshots go to the test's tmp dir (``shot()``), kept as
artifacts of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from bus import Heartbeat, encode_chain
from proxy.dashboard import Dashboard, Fleet, FleetMonitor
from tests.bus.helpers import Member, connect

CHROMIUM = "/usr/bin/chromium"
LIVENESS_SCRIPT = Path(__file__).parents[2] / "bus" / "liveness" / "liveness_process.py"


@dataclass
class RunningDashboard:
    board: Dashboard
    url: str

    @property
    def fleet(self) -> Fleet:
        return self.board.fleet


@asynccontextmanager
async def running_dashboard(
    bus_url: str, viewer: Member, pattern: str, **options: Any
) -> AsyncIterator[RunningDashboard]:
    """A dashboard on a free loopback port following ``pattern`` as ``viewer``."""
    monitor = FleetMonitor(lambda: connect(bus_url, viewer), pattern, Fleet(), **options)
    board = Dashboard(monitor)
    async with anyio.create_task_group() as task_group:
        port = await task_group.start(board.run, "127.0.0.1", 0)
        yield RunningDashboard(board, f"http://127.0.0.1:{port}/")
        task_group.cancel_scope.cancel()


@asynccontextmanager
async def beating(
    bus_url: str, member: Member, service: str, status: Callable[[], dict[str, Any]], **kw: Any
) -> AsyncIterator[Heartbeat]:
    """An in-process service that beats every ``interval_s`` with ``status``."""
    heartbeat = Heartbeat(service, status=status, **kw)
    async with connect(bus_url, member, will=heartbeat.will()) as client:
        await client.require_task_group().start(heartbeat.run, client)
        yield heartbeat


@asynccontextmanager
async def liveness_process(
    bus_url: str,
    member: Member,
    service: str,
    interval_s: float,
    tmp_path: Path,
    *,
    instance: str | None = None,
) -> AsyncIterator[Process]:
    """tests/bus/liveness/liveness_process.py as a real process (to SIGKILL), once it has beaten;
    as the named ``instance`` of the service, if given."""
    name = service.rsplit("/", 1)[1] + (f"-{instance}" if instance else "")
    entity_file = tmp_path / f"{name}.key"
    chain_file = entity_file.with_suffix(".chain")
    member.entity.save(entity_file)
    chain_file.write_bytes(encode_chain(member.chain))
    command = [sys.executable, str(LIVENESS_SCRIPT), bus_url, str(entity_file), str(chain_file)]
    command += [service, str(interval_s), *([instance] if instance else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "liveness.log").open("ab")
    process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = await process.stdout.receive()
        assert line.startswith(b"ready"), line
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(5, shield=True):
            await process.wait()
        log.close()


async def until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                if condition():
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


@asynccontextmanager
async def page_of(url: str, executable: str) -> AsyncIterator[Any]:
    """A Playwright page on ``url`` in headless Chromium, 1600x1000 (a wall screen)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            await page.goto(url)
            yield page
        finally:
            await browser.close()
