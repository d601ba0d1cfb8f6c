"""``modelbus bench registry``: what a PostgreSQL registry costs next to SQLite.

In one run it starts two ``modelbus serve`` processes, each on a ZeroMQ bus of its own and alike
but for ``--registry``: one a SQLite file, one a PostgreSQL database (``--postgres-url``, or a
server the bench starts itself from the installed binaries:
:class:`proxy.bench.postgres_server.PostgresServer`). It uploads the trivial closure model to
each once, deploys it as version ``0`` (one replica, current), then measures, alternating between
the two services so the machine's noise falls on both alike:

1. ``model.deploy`` over the bus, N times: a new version of the uploaded archive each time,
   with no replica and not made current (so the timing is the deploy's own path — checks,
   registry transaction, routing — not a worker's start-up, the same for both);
2. an upload of a new archive (the same model, built again: its own digest) and its
   ``model.deploy``, N times: what ``modelbus deploy`` does but start the replica;
3. the registry write alone: ``Registry.register_model`` in this process against the same
   SQLite file and PostgreSQL database, after the services stopped;
4. ``predict`` against version ``0``, one request at a time.

Targets (issue 17): a deploy under 10% slower on PostgreSQL (p50 ratio < 1.10), and nothing
added to a prediction (version routing is served from memory; ratio about 1, taken as < 1.05).
Afterwards both registries are opened directly and must hold every deployed version.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bus import BusClient, runner
from bus.artifact import build_closure_archive
from container_manager import ServiceClient
from proxy.bench import http as bench_http
from proxy.bench.bus import free_port_block
from proxy.bench.environment import environment_line
from proxy.bench.postgres_server import PostgresServer, PostgresUnavailable, find_postgres_bin
from proxy.bench.service import ServiceUnderTest, service_process
from proxy.registry.registry import Registry
from transports import open_transport

__all__ = ["RegistryResult", "RegistryRow", "print_registry_table", "run_registry_bench"]

ROW = [1.5, 2.0, 3.0]
WARM_UP = 5
DEPLOY_TARGET = 1.10
PREDICT_TARGET = 1.05


@dataclass(frozen=True, slots=True)
class Timing:
    p50_ms: float
    p90_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ordered = sorted(seconds)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        return cls(statistics.median(ordered) * 1e3, p90 * 1e3)


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """One registry's figures; ``versions`` is what the registry itself holds afterwards."""

    label: str
    registry: str
    deploy: Timing
    upload_deploy: Timing
    write: Timing
    predict: Timing
    versions: int


@dataclass(frozen=True, slots=True)
class RegistryResult:
    model: str
    sqlite: RegistryRow
    postgres: RegistryRow
    notes: list[str]

    def ratio(self, what: str) -> float:
        ours: Timing = getattr(self.postgres, what)
        base: Timing = getattr(self.sqlite, what)
        return ours.p50_ms / base.p50_ms


class _Side:
    """One service under test, its client, and the times measured against it."""

    def __init__(self, client: ServiceClient, artifact: str) -> None:
        self.client = client
        self.artifact = artifact
        self.deploys: list[float] = []
        self.upload_deploys: list[float] = []
        self.predictions: list[float] = []


async def _timed(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    await call(*args, **kwargs)
    return time.perf_counter() - started


async def _open_side(
    stack: AsyncExitStack, bus_url: str, service: ServiceUnderTest, model: str, archive: Path
) -> _Side:
    """A client of the service, with the model uploaded and deployed as version 0 (ready)."""
    user, grant = service.user_with_grant()
    bus = await stack.enter_async_context(
        BusClient(open_transport(bus_url), user, proofs=[[grant]])
    )
    client = ServiceClient(bus, service.service_uri)
    artifact = await client.upload_artifact(archive, name=f"{model}:0", kind="closure")
    await client.deploy_artifact(model, "0", "doubles", artifact)
    await client.wait_ready(model, "0")
    answer = await client.predict(model=model, version="0", input=ROW)
    if answer.get("output") != 2 * ROW[0]:
        raise click.ClickException(f"the service answered {answer}, not {2 * ROW[0]}")
    return _Side(client, artifact)


async def _upload_deploy(side: _Side, model: str, version: str, archive: Path) -> None:
    artifact = await side.client.upload_artifact(archive, name=f"{model}:{version}", kind="closure")
    await side.client.deploy_artifact(
        model, version, "doubles", artifact, replicas=0, make_current=False
    )


async def _measure_services(
    services: list[tuple[str, ServiceUnderTest]],
    model: str,
    archives: list[Path],
    deploys: int,
    predictions: int,
) -> list[_Side]:
    """Deploys, then predictions, against each (bus URL, service), alternating which goes
    first from one round to the next."""
    async with AsyncExitStack() as stack:
        sides = [
            await _open_side(stack, bus_url, service, model, archives[0])
            for bus_url, service in services
        ]
        for index in range(WARM_UP + deploys):
            for side in sides if index % 2 else sides[::-1]:
                seconds = await _timed(
                    side.client.deploy_artifact,
                    *(model, str(index + 1), "doubles", side.artifact),
                    replicas=0,
                    make_current=False,
                )
                if index >= WARM_UP:
                    side.deploys.append(seconds)
        for index in range(WARM_UP + deploys):
            for side in sides if index % 2 else sides[::-1]:
                seconds = await _timed(
                    _upload_deploy, side, model, f"u{index}", archives[1 + index]
                )
                if index >= WARM_UP:
                    side.upload_deploys.append(seconds)
        warm = 10 * WARM_UP
        for index in range(warm + predictions):
            for side in sides if index % 2 else sides[::-1]:
                seconds = await _timed(side.client.predict, model=model, version="0", input=ROW)
                if index >= warm:
                    side.predictions.append(seconds)
        return sides


async def _measure_writes(
    registries: list[str], model: str, artifact: str, writes: int
) -> tuple[list[list[float]], list[int]]:
    """``register_model`` alone against each registry, alternating; then the versions each
    registry holds of ``model`` (read directly, not through a service)."""
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(Registry.open(r)) for r in registries]
        times: list[list[float]] = [[] for _ in opened]
        for index in range(WARM_UP + writes):
            for slot in (0, 1) if index % 2 else (1, 0):
                seconds = await _timed(
                    opened[slot].register_model,
                    *(f"{model}w", f"w{index}"),
                    input_type="doubles",
                    artifact_kind="closure",
                    artifact_sha256=artifact,
                    artifact_path=f"bench/{artifact}",
                    desired_replicas=0,
                    make_current=False,
                )
                if index >= WARM_UP:
                    times[slot].append(seconds)
        versions = [len(await registry.list_models(model)) for registry in opened]
        return times, versions


def run_registry_bench(
    deploys: int,
    predictions: int,
    postgres_url: str | None = None,
    *,
    workdir: Path | None = None,
) -> RegistryResult:
    """Both services, both measurements; ``postgres_url`` an empty-or-not database to use
    (the model's name is new in each run), else a server of the bench's own. ``workdir``
    keeps the SQLite registry and the services' data and logs (default: a temp dir)."""
    notes = [environment_line()]
    model = f"regbench{secrets.token_hex(4)}"
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelbus-")))
        if postgres_url is None:
            try:
                server = PostgresServer(find_postgres_bin())
            except PostgresUnavailable as exc:
                raise click.ClickException(f"{exc} (or give --postgres-url)") from None
            stack.callback(server.stop)
            server.start()
            postgres_url = server.create_database("bench")
            notes.append(
                f"PostgreSQL: started by the bench ({server.bin_dir}; fsync and "
                "synchronous_commit on, its defaults; SQLite: WAL, synchronous=NORMAL)"
            )
        else:
            notes.append("PostgreSQL: --postgres-url")
        sqlite_path = str(workdir / "registry.sqlite3")
        archives = _archives(workdir, 1 + WARM_UP + deploys)
        services = []
        with ExitStack() as running:
            for name, registry in (("sqlite", sqlite_path), ("postgres", postgres_url)):
                bus_url = f"zmq://127.0.0.1:{free_port_block(3)}"
                (workdir / name).mkdir()
                service = running.enter_context(
                    service_process(
                        bus_url,
                        workdir / name / "data",
                        embedded_bus=True,
                        options=("--registry", registry),
                    )
                )
                services.append((bus_url, service))
            sides = runner.run(_measure_services, services, model, archives, deploys, predictions)
        writes, versions = runner.run(
            _measure_writes, [sqlite_path, postgres_url], model, sides[0].artifact, deploys
        )
    expected = 1 + 2 * (WARM_UP + deploys)
    if versions != [expected, expected]:
        raise click.ClickException(
            f"the registries hold {versions} versions of {model} (SQLite, PostgreSQL), "
            f"not {expected} each"
        )
    rows = [
        RegistryRow(
            label,
            registry,
            Timing.of(side.deploys),
            Timing.of(side.upload_deploys),
            Timing.of(times),
            Timing.of(side.predictions),
            count,
        )
        for label, registry, side, times, count in zip(
            ("SQLite", "PostgreSQL"),
            (sqlite_path, postgres_url),
            sides,
            writes,
            versions,
            strict=True,
        )
    ]
    return RegistryResult(model, rows[0], rows[1], notes)


def _archives(workdir: Path, count: int) -> list[Path]:
    """``count`` closure archives of the trivial model, each its own digest (its manifest's
    ``created_ns``), so each upload is a real one."""
    paths, digests = [], set()
    for index in range(count):
        data = build_closure_archive(bench_http.model)
        digests.add(hashlib.sha256(data).digest())
        paths.append(workdir / f"bench-{index}.closure")
        paths[-1].write_bytes(data)
    if len(digests) != count:
        raise click.ClickException("two closure archives came out alike: uploads would be skipped")
    return paths


def _verdict(ratio: float, target: float) -> str:
    return f"{'met' if ratio < target else 'MISSED'} (target < {target:.2f})"


def print_registry_table(result: RegistryResult) -> None:
    sqlite, postgres = result.sqlite, result.postgres
    click.echo(
        f"{'(ms)':36} {'SQLite p50':>10} {'p90':>7} {'PostgreSQL p50':>14} {'p90':>7} "
        f"{'ratio p50':>9}"
    )
    lines = (
        ("model.deploy over the bus", "deploy", DEPLOY_TARGET),
        ("upload + model.deploy over the bus", "upload_deploy", DEPLOY_TARGET),
        ("registry write alone (register_model)", "write", None),
        ("predict over the bus", "predict", PREDICT_TARGET),
    )
    for label, what, target in lines:
        ours: Timing = getattr(postgres, what)
        base: Timing = getattr(sqlite, what)
        ratio = result.ratio(what)
        verdict = f"  {_verdict(ratio, target)}" if target is not None else ""
        click.echo(
            f"{label:36} {base.p50_ms:10.2f} {base.p90_ms:7.2f} {ours.p50_ms:14.2f} "
            f"{ours.p90_ms:7.2f} {ratio:8.3f}x{verdict}"
        )
    click.echo(
        f"ratio = PostgreSQL/SQLite; both registries hold {sqlite.versions} versions of "
        f"{result.model} afterwards (read directly)"
    )
    for note in result.notes:
        click.echo(note if note.startswith("environment:") else f"note: {note}")
