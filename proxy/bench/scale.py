"""``modelbus bench scale``: predictions/s with 1, 2 and 3 instances of one service on one
Mosquitto, next to one proxy without ``--instance`` (plain subscriptions), in the same run.

Every proxy is a ``modelbus serve`` process of its own (``--instance iN`` on the same service
key), every model replica a sandboxed worker of its proxy, the broker a Mosquitto process, and
the load ``clients`` processes (``python -m proxy.bench.scale load …``), each a requester of its
own with ``in_flight`` requests at once, sharing ``count`` predictions of the trivial model per
row; they start together once all are connected, and the row's time runs from that start to
the last one's end. The version is deployed once, through a first proxy, into a registry
and an artifact directory the rows' proxies then start from — each from a copy of that SQLite
registry: the prediction path reads no registry, so a shared PostgreSQL would add nothing to
what is measured here (``deploy/README.md`` runs the instances on one).

What saturates: the CPU time of the broker, the proxies, their workers and this client over each
row's measured window, read from ``/proc`` (Linux), as a share of one core each and of all the
machine's cores together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import click

from bus import BusClient, BusError, Entity, runner
from bus.grants import encode_chain, load_chain
from container_manager import ServiceClient
from proxy.bench import http as bench_http
from proxy.bench.buses import own_mosquitto
from proxy.bench.environment import environment_line
from proxy.bench.service import ServiceUnderTest, service_process
from transports import open_transport

__all__ = ["ScaleRow", "per_core", "print_scale_table", "run_scale_bench"]

ROW = [1.5, 2.0, 3.0]
WARM_UP = 100
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class ScaleRow:
    label: str
    proxies: int
    per_s: float
    errors: int
    cpu: dict[str, float]  # part -> CPU seconds per wall second (1.0 = one core busy)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and all their descendants, now (0 where gone)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    total, seen, todo = 0.0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting on I/O) since boot: /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS_PER_S


def _parts(broker: int, proxies: list[int], clients: list[int]) -> dict[str, list[int]]:
    return {"broker": [broker], "proxies": proxies, "client": clients}


async def _load(client: ServiceClient, count: int, in_flight: int) -> tuple[float, int]:
    """Predictions/s with ``in_flight`` callers sharing ``count`` predictions; errors."""
    errors = 0

    async def caller(share: int) -> None:
        nonlocal errors
        for _ in range(share):
            try:
                await client.predict(model="bench", input=ROW)
            except BusError:
                errors += 1

    share = count // in_flight
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(in_flight):
            group.start_soon(caller, share)
    return share * in_flight / (time.perf_counter() - started), errors


async def _warm(bus_url: str, service: ServiceUnderTest, proxies: int) -> None:
    user, grant = service.user_with_grant()
    async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
        client = ServiceClient(bus, service.service_uri)
        await client.wait_ready("bench", "1")
        for _ in range(WARM_UP * proxies):  # every instance's worker warm
            await client.predict(model="bench", input=ROW)


def _measure(
    label: str, bus_url: str, services: list[ServiceUnderTest], broker: int, settings: _Settings
) -> ScaleRow:
    runner.run(_warm, bus_url, services[0], len(services))
    workdir = Path(tempfile.mkdtemp(prefix="load-", dir=settings.workdir))
    loads = []
    for index in range(settings.clients):
        user, grant = services[0].user_with_grant()
        key, chain = workdir / f"user-{index}.key", workdir / f"user-{index}.grant"
        user.save(key)
        chain.write_bytes(encode_chain([grant]))
        argv = [
            *(sys.executable, "-m", "proxy.bench.scale", "load", bus_url),
            *(services[0].service_uri, str(key), str(chain)),
            *(str(settings.count // settings.clients), str(settings.in_flight)),
        ]
        loads.append(
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    try:
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "ready":
                raise RuntimeError("a load process did not start")
        parts = _parts(broker, [service.pid for service in services], [p.pid for p in loads])
        before = {part: cpu_seconds(pids) for part, pids in parts.items()}
        machine_before = machine_busy_s()
        started = time.perf_counter()
        for load in loads:
            assert load.stdin is not None
            load.stdin.write("go\n")
            load.stdin.flush()
        done = [load.stdout.readline().split() for load in loads if load.stdout is not None]
        wall_s = time.perf_counter() - started
        cpu = {part: (cpu_seconds(pids) - before[part]) / wall_s for part, pids in parts.items()}
        cpu["machine"] = (machine_busy_s() - machine_before) / wall_s
    finally:
        for load in loads:
            load.kill()
            load.communicate()  # reaps it and closes its pipes
    if any(words[:1] != ["done"] for words in done):
        raise RuntimeError("a load process ended without its figures (see its stderr above)")
    answered = sum(int(words[1]) for words in done)
    errors = sum(int(words[2]) for words in done)
    return ScaleRow(label, len(services), answered / wall_s, errors, cpu)


async def _load_main(
    bus_url: str, service_uri: str, key: str, chain: str, count: int, in_flight: int
) -> None:
    """One load process: connect, say ``ready``, wait for ``go``, then print ``done N E``."""
    async with BusClient(
        open_transport(bus_url), Entity.load(key), proofs=[load_chain(chain)]
    ) as bus:
        client = ServiceClient(bus, service_uri)
        await client.predict(model="bench", input=ROW)  # learns the service's key
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        _, errors = await _load(client, count, in_flight)
        share = count // in_flight
        print(f"done {share * in_flight - errors} {errors}", flush=True)


@dataclass(frozen=True, slots=True)
class _Settings:
    count: int
    in_flight: int
    clients: int
    workdir: Path


def _seed(bus_url: str, workdir: Path) -> tuple[Path, Path]:
    """Deploy the model once, through a first proxy; returns (its data dir, namespace key)."""
    seed = workdir / "seed"
    namespace_key = workdir / "namespace.key"
    artifacts = ("--artifacts", str(workdir / "artifacts"))
    with service_process(bus_url, seed, namespace_key=namespace_key, options=artifacts) as one:

        async def deploy() -> None:
            user, grant = one.user_with_grant()
            async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
                client = ServiceClient(bus, one.service_uri)
                await client.deploy_function("bench", "1", bench_http.model, "doubles")
                await client.wait_ready("bench", "1")

        runner.run(deploy)
    return seed, namespace_key


def _row(
    label: str, bus_url: str, workdir: Path, broker: int, instances: int, settings: _Settings
) -> ScaleRow:
    seed, namespace_key = workdir / "seed", workdir / "namespace.key"
    with ExitStack() as stack:
        services = []
        for index in range(instances if instances else 1):
            data_dir = workdir / f"{label.split()[0]}-{instances}-{index}"
            shutil.copytree(seed, data_dir, ignore=shutil.ignore_patterns("replicas", "*.lock"))
            options = ["--artifacts", str(workdir / "artifacts")]
            if instances:
                options += ["--instance", f"i{index}"]
            services.append(
                stack.enter_context(
                    service_process(
                        bus_url, data_dir, namespace_key=namespace_key, options=tuple(options)
                    )
                )
            )
        return _measure(label, bus_url, services, broker, settings)


def run_scale_bench(
    count: int, in_flight: int, clients: int, instances: tuple[int, ...] = (1, 2, 3)
) -> tuple[list[ScaleRow], list[str]]:
    """The rows (the plain proxy first: the baseline) and the notes (environment first)."""
    notes = [environment_line()]
    rows: list[ScaleRow] = []
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-scale-") as tmp:
        workdir = Path(tmp)
        settings = _Settings(count, in_flight, clients, workdir)
        with own_mosquitto(workdir) as (bus_url, broker):
            click.echo("deploying the model once ...", err=True)
            _seed(bus_url, workdir)
            click.echo("one proxy, plain subscriptions ...", err=True)
            rows.append(_row("plain", bus_url, workdir, broker, 0, settings))
            for count_ in instances:
                click.echo(f"{count_} instance(s) ...", err=True)
                rows.append(_row("shared", bus_url, workdir, broker, count_, settings))
    return rows, notes


def per_core(row: ScaleRow) -> float:
    """Predictions/s per core busy in our processes (broker, proxies, clients)."""
    ours = row.cpu["broker"] + row.cpu["proxies"] + row.cpu["client"]
    return row.per_s / ours if ours > 0 else 0.0


def _saturation(row: ScaleRow, cores: int) -> str:
    ours = row.cpu["broker"] + row.cpu["proxies"] + row.cpu["client"]
    machine = max(row.cpu["machine"], ours)
    if machine >= 0.85 * cores:
        return (
            f"the cores: {machine:.2f} of {cores} busy, {ours:.2f} of it ours and "
            f"{machine - ours:.2f} other processes'"
        )
    hot = [part for part in ("broker", "proxies", "client") if row.cpu[part] >= 0.85]
    if hot:
        return ", ".join(f"the {part} (one core: {row.cpu[part]:.2f})" for part in hot)
    return f"nothing measured here ({machine:.2f} of {cores} cores busy): latency-bound"


def print_scale_table(rows: list[ScaleRow], notes: list[str], in_flight: int, clients: int) -> None:
    cores = os.cpu_count() or 1
    baseline = rows[0].per_s
    click.echo(notes[0])
    click.echo(
        f"predictions/s of the trivial model, {clients} client processes with {in_flight} in "
        "flight each, one Mosquitto; CPU in cores busy over the measured window (1.00 = one core)"
    )
    header = (
        f"{'proxies':<34}{'pred/s':>9}{'ratio':>7}{'errors':>7}"
        f"{'broker':>8}{'proxies':>9}{'client':>8}{'machine':>9}{'per core':>10}"
    )
    click.echo(header)
    for row in rows:
        label = (
            "1 proxy, plain (the baseline)"
            if row.label == "plain"
            else f"{row.proxies} instance{'s' if row.proxies > 1 else ''}, $share group"
        )
        click.echo(
            f"{label:<34.34}{row.per_s:>9.0f}{row.per_s / baseline:>7.2f}{row.errors:>7}"
            f"{row.cpu['broker']:>8.2f}{row.cpu['proxies']:>9.2f}{row.cpu['client']:>8.2f}"
            f"{row.cpu['machine']:>9.2f}{per_core(row):>10.0f}"
        )
    click.echo(
        "(proxies: the serve processes with their sandboxed workers; machine: every process "
        "on it, ours and others'; ratio: to the first row; per core: pred/s per core our "
        "processes kept busy, which other users' load on a shared machine does not move)"
    )
    for row in rows:
        click.echo(f"saturated with {row.proxies} ({row.label}): {_saturation(row, cores)}")
    for note in notes[1:]:
        click.echo(note)


if __name__ == "__main__":  # python -m proxy.bench.scale load URL SERVICE KEY CHAIN COUNT IN_FLIGHT
    if sys.argv[1:2] != ["load"] or len(sys.argv) != 8:
        sys.exit(f"usage: {sys.argv[0]} load URL SERVICE_URI KEY CHAIN COUNT IN_FLIGHT")
    url, uri, key_path, chain_path, total, at_once = sys.argv[2:]
    runner.run(_load_main, url, uri, key_path, chain_path, int(total), int(at_once))
