"""``modelbus bench remote``: what the remote V2 backend adds to a direct call to MLServer.

One MLServer (``MODELBUS_MLSERVER``; one process, ``parallel_workers: 0``) serves a trivial
model (double the first feature); in the same run, one request at a time, it measures p50/p99 of:

1. a direct V2 REST call (aiohttp, keep-alive: the client the backend uses too);
2. :class:`proxy.backend.remote_v2.RemoteV2Versions` ``predict`` — the backend alone, in this
   process: shape checks, tensor building, the HTTP call, the answer split back;
3. a ``predict`` through a whole ``modelbus serve`` on its own ZeroMQ bus, with the version
   deployed as ``kind: v2`` — signature, grant check, routing, the backend, and the reply.

"Added by the backend" is (2) - (1); the target is under 0.5 ms p50. (3) - (1) is everything
the bus, the service and the backend add on top of the server.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bus import BusClient, runner
from container_manager import ServiceClient
from proxy.backend.remote_v2 import RemoteV2Versions, V2Endpoint
from proxy.bench import http as bench_http
from proxy.bench.bus import free_port_block
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["RemoteRow", "print_remote_table", "run_remote_bench"]

ROW = [1.5, 2.0, 3.0]
WARM_UP = 50


@dataclass(frozen=True, slots=True)
class RemoteRow:
    label: str
    p50_ms: float
    p99_ms: float


async def _timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    for _ in range(WARM_UP):
        await call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies


def _row(label: str, latencies: list[float]) -> RemoteRow:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return RemoteRow(label, statistics.median(ordered) * 1e3, p99 * 1e3)


async def _backend(base_url: str, count: int) -> list[float]:
    async with RemoteV2Versions() as remote:
        remote.start("bench", "1", V2Endpoint(base_url, "m"))
        await remote.wait_ready("bench", "1", timeout_s=30)
        outputs = await remote.predict("bench", "1", [ROW], 10)
        if outputs not in ([2 * ROW[0]], [[2 * ROW[0]]]):  # MLServer may add a dimension
            raise click.ClickException(f"MLServer answered {outputs}, not {2 * ROW[0]}")

        async def call() -> None:
            await remote.predict("bench", "1", [ROW], 10)

        return await _timed(call, count)


async def _service(base_url: str, workdir: Path, count: int) -> list[float]:
    bus_url = f"zmq://127.0.0.1:{free_port_block(3)}"
    data_dir = Path(tempfile.mkdtemp(dir=workdir)) / "data"
    with service_process(bus_url, data_dir, embedded_bus=True) as service:
        user, grant = service.user_with_grant()
        async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
            client = ServiceClient(bus, service.service_uri)
            await client.deploy_v2("bench", "1", "doubles", url=base_url, model="m")
            await client.wait_ready("bench", "1")

            async def call() -> None:
                await client.predict(model="bench", input=ROW)

            return await _timed(call, count)


def run_remote_bench(count: int) -> list[RemoteRow]:
    """The four rows; a ClickException without MLServer (it is what is measured)."""
    executable = os.environ.get("MODELBUS_MLSERVER")
    if not executable:
        raise click.ClickException(
            "set MODELBUS_MLSERVER to an `mlserver` executable (mlserver==1.7.1 in its own "
            "virtualenv; tests/run.sh makes .venv-mlserver)"
        )
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        base = free_port_block(3)
        infer_url = stack.enter_context(
            bench_http.mlserver(executable, (base, base + 1, base + 2), workdir)
        )
        base_url = f"http://127.0.0.1:{base}"
        body = bench_http.v2_body(ROW)
        direct = runner.run(bench_http.http_latencies, infer_url, body, count + WARM_UP)
        return [
            _row("direct V2 call, aiohttp", direct[WARM_UP:]),
            _row("V2 backend (RemoteV2Versions)", runner.run(_backend, base_url, count)),
            _row("modelbus serve (ZeroMQ) -> V2", runner.run(_service, base_url, workdir, count)),
        ]


def print_remote_table(rows: list[RemoteRow]) -> None:
    click.echo(f"{'':34} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        click.echo(f"{row.label:34} {row.p50_ms:8.3f} {row.p99_ms:8.3f}")
    by_label = {row.label: row for row in rows}
    backend = by_label["V2 backend (RemoteV2Versions)"]
    service = by_label["modelbus serve (ZeroMQ) -> V2"]
    direct = by_label["direct V2 call, aiohttp"]
    click.echo(
        f"added by the V2 backend (p50, vs direct): {backend.p50_ms - direct.p50_ms:+.3f} ms "
        "(target < 0.5 ms)"
    )
    click.echo(
        f"added by bus + service + backend (p50, vs direct): "
        f"{service.p50_ms - direct.p50_ms:+.3f} ms"
    )
