"""``modelbus bench predict``: prediction round trips over the bus next to HTTP model servers.

For a trivial model (double the first feature) it measures, in one run (every server in a process
of its own — ours is ``modelbus serve`` — and every client in this one): p50/p99 of one request
at a time and predictions/s with 8 in flight — through our service on the ZeroMQ bus it runs
itself (``modelbus serve``'s default), joined to a ZeroMQ forwarder in another process, and over
MQTT (Mosquitto), through a minimal aiohttp server, and through MLServer's REST V2 API when
``MODELBUS_MLSERVER`` names an ``mlserver`` executable (MLServer 1.7.1 needs
``parallel_workers: 0`` or ``uvloop==0.21.0``; we set the former).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import click

from bus import BusClient, runner
from container_manager import ServiceClient
from proxy.bench import http as bench_http
from proxy.bench.bus import (
    crypto_costs,
    free_port_block,
    own_buses,
    signed_echo_rtt,
    transport_rtt,
)
from proxy.bench.bus_results import BenchSettings, Costs
from proxy.bench.environment import environment_line
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["PredictRow", "run_predict_bench"]

ROW = [1.5, 2.0, 3.0]
EMBEDDED_LABEL = "modelbus, serve's own ZeroMQ bus"
_REPORT_LINES = ("environment:", "per message", "where the time goes", "  ")  # not notes


@dataclass(frozen=True, slots=True)
class PredictRow:
    """One server's figures; for ours also, on the same bus in the same run, the p50 round trip
    of our transport alone and of a signed echo (``client.request`` to ``client.serve``)."""

    label: str
    p50_ms: float
    p99_ms: float
    per_s_8: float
    transport_p50_ms: float | None = None
    echo_p50_ms: float | None = None


def _row(label: str, latencies: list[float], per_s: float) -> PredictRow:
    latencies = sorted(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return PredictRow(label, statistics.median(latencies) * 1e3, p99 * 1e3, per_s)


def _p50_ms(rtts_ns: list[int]) -> float | None:
    return statistics.median(rtts_ns) / 1e6 if rtts_ns else None


async def _ours(
    bus_url: str, label: str, count: int, in_flight: int, workdir: Path, embedded_bus: bool
) -> PredictRow:
    data_dir = Path(tempfile.mkdtemp(dir=workdir)) / "data"
    with service_process(bus_url, data_dir, embedded_bus=embedded_bus) as service:
        user, grant = service.user_with_grant()
        async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
            client = ServiceClient(bus, service.service_uri)
            await client.deploy_function("bench", "1", bench_http.model, "doubles")
            await client.wait_ready("bench", "1")
            for _ in range(50):
                await client.predict(model="bench", input=ROW)
            latencies = []
            for _ in range(count):
                started = time.perf_counter()
                await client.predict(model="bench", input=ROW)
                latencies.append(time.perf_counter() - started)

            async def worker(share: int) -> None:
                for _ in range(share):
                    await client.predict(model="bench", input=ROW)

            started = time.perf_counter()
            async with anyio.create_task_group() as load:
                for _ in range(in_flight):
                    load.start_soon(worker, count // in_flight)
            per_s = (count // in_flight * in_flight) / (time.perf_counter() - started)
        # The bus alone, the same bus, the service still up (the embedded bus is its own):
        settings = BenchSettings(requests=min(count, 1000), size=len(repr(ROW)))
        transport = _p50_ms(await transport_rtt(bus_url, settings))
        echo = _p50_ms(await signed_echo_rtt(bus_url, settings))
    row = _row(label, latencies, per_s)
    return dataclasses.replace(row, transport_p50_ms=transport, echo_p50_ms=echo)


async def _http(
    url: str, label: str, body: dict[str, object], count: int, in_flight: int
) -> PredictRow:
    await bench_http.http_latencies(url, body, 50)
    latencies = await bench_http.http_latencies(url, body, count)
    per_s = await bench_http.http_throughput(url, body, count, in_flight)
    return _row(label, latencies, per_s)


def run_predict_bench(count: int, in_flight: int) -> tuple[list[PredictRow], list[str]]:
    """The rows and the notes; the notes start with the environment and, measured in this run,
    the per-message crypto costs the "where the time goes" lines use."""
    notes: list[str] = [environment_line()]
    rows: list[PredictRow] = []
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        embedded = f"zmq://127.0.0.1:{free_port_block(3)}"
        rows.append(runner.run(_ours, embedded, EMBEDDED_LABEL, count, in_flight, workdir, True))
        for label, url in stack.enter_context(own_buses(notes)):
            rows.append(
                runner.run(_ours, url, f"modelbus over {label}", count, in_flight, workdir, False)
            )
        base = free_port_block(1)
        url = stack.enter_context(bench_http.aiohttp_server(base, workdir))
        body = bench_http.plain_body(ROW)
        rows.append(runner.run(_http, url, "aiohttp server (HTTP/1.1)", body, count, in_flight))
        executable = os.environ.get("MODELBUS_MLSERVER")
        if executable:
            base = free_port_block(3)
            url = stack.enter_context(
                bench_http.mlserver(executable, (base, base + 1, base + 2), workdir)
            )
            rows.append(
                runner.run(
                    _http, url, "MLServer REST V2", bench_http.v2_body(ROW), count, in_flight
                )
            )
        else:
            notes.append(
                "MLServer: not measured (set MODELBUS_MLSERVER to its `mlserver` "
                "executable, e.g. in a virtualenv with mlserver==1.7.1)"
            )
    notes += where_time_goes(rows, crypto_costs(len(repr(ROW))))
    return rows, notes


def where_time_goes(rows: list[PredictRow], costs: Costs) -> list[str]:
    """Per bus, p50 one at a time: our transport alone -> a signed echo (of which the two
    seals and two receive checks) -> a prediction (the service's own path: slot, operation,
    the hop to the replica and back)."""
    crypto_ms = 2 * (costs.seal_us + costs.check_us) / 1000
    lines = [
        f"per message, measured in this run: sign {costs.sign_us:.1f} us, verify "
        f"{costs.verify_us:.1f} us; seal {costs.seal_us:.1f} us; receive check "
        f"{costs.check_us:.1f} us",
        "where the time goes (p50, one request at a time):",
    ]
    for row in rows:
        if row.transport_p50_ms is None or row.echo_p50_ms is None:
            continue
        transport, echo, ours = row.transport_p50_ms, row.echo_p50_ms, row.p50_ms
        lines.append(
            f"  {row.label}: our transport alone {transport:.2f} ms -> signed echo "
            f"{echo:.2f} ({echo - transport:+.2f}, of which 2 seals + 2 receive checks "
            f"{crypto_ms:.2f}) -> prediction {ours:.2f} ({ours - echo:+.2f}: slot, operation, "
            "the hop to the replica and back)"
        )
    return lines


def print_predict_table(rows: list[PredictRow], notes: list[str], in_flight: int) -> None:
    reference = next((r for r in rows if r.label.startswith("MLServer")), None)
    reference = reference or next((r for r in rows if r.label.startswith("aiohttp")), None)
    click.echo(
        f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {f'pred/s @{in_flight}':>12} "
        f"{'p50 vs ref':>11} {'pred/s vs ref':>14}"
    )
    for row in rows:
        ratio_p50 = f"{row.p50_ms / reference.p50_ms:.2f}x" if reference else "-"
        ratio_tp = f"{row.per_s_8 / reference.per_s_8:.2f}x" if reference else "-"
        click.echo(
            f"{row.label:34} {row.p50_ms:8.2f} {row.p99_ms:8.2f} {row.per_s_8:12.0f} "
            f"{ratio_p50:>11} {ratio_tp:>14}"
        )
    if reference:
        click.echo(f"(reference: {reference.label})")
    for note in notes:
        click.echo(note if note.startswith(_REPORT_LINES) else f"note: {note}")
