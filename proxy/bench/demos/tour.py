"""The demo behind ``modelbus demo``: the whole service on this machine, driven end to end over the
bus.

It starts the service (embedded ZeroMQ bus on a free port, registry and artifacts in a temporary
directory, models in worker processes), makes an operator and a read-only viewer with their
grants, deploys a thermal model as a plain Python function, predicts a day of 30-minute steps,
upgrades the model, pins and rolls back versions, shows a refused deploy, asks for a day of zone
A's temperature by meaning (three models with adjacent and overlapping ranges and a gap,
:mod:`proxy.bench.demos.forecast`), and reads liveness.
"""

from __future__ import annotations

import itertools
import math
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import click

from bus import BusClient, Entity, Grant, VerificationError, service_states
from container_manager import ServiceClient
from proxy.bench.demos.forecast import forecast_tour
from proxy.service.settings import ProxySettings
from proxy.service.startup import ServiceInfo, load_or_create_entity, run_proxy
from transports import open_transport

__all__ = ["free_base_port", "run_demo", "thermal_v1", "thermal_v2"]

DAY_NS = 86_400 * 10**9


def thermal_v1(inputs: list[list[float]]) -> list[float]:
    """Zone temperature next step from [indoor, outdoor, heating on 0/1]."""
    return [round(0.9 * x[0] + 0.1 * x[1] + 0.8 * x[2], 3) for x in inputs]


def thermal_v2(inputs: list[list[float]]) -> list[float]:
    """A refit: slower envelope losses, stronger heating."""
    return [round(0.93 * x[0] + 0.07 * x[1] + 1.1 * x[2], 3) for x in inputs]


def free_base_port() -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + 2 < 65536 and all(_is_free(base + i) for i in (1, 2)):
            return base
    raise click.ClickException("no three free consecutive ports on 127.0.0.1")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


async def run_demo(data_dir: Path) -> None:
    """The whole demo; its service keeps its registry and artifacts in ``data_dir``."""
    bus_url = f"zmq://127.0.0.1:{free_base_port()}"
    # The demo deploys only its own functions, so without bubblewrap it may run them unconfined;
    # `modelbus serve` refuses to (untrusted deployers), unless told --unsafe-no-sandbox.
    unsandboxed = shutil.which("bwrap") is None
    settings = ProxySettings(
        bus_url=bus_url,
        data_dir=data_dir,
        heartbeat_interval_s=2.0,
        unsafe_no_sandbox=unsandboxed,
    )
    _step(f"starting the service: embedded ZeroMQ bus at {bus_url}, data in {data_dir}")
    if unsandboxed:
        click.secho(
            "note: bubblewrap is not installed, so the demo's own models run unsandboxed; "
            "'modelbus serve' refuses that (apt-get install bubblewrap)",
            fg="yellow",
        )
    async with anyio.create_task_group() as task_group:
        info: ServiceInfo = await task_group.start(run_proxy, settings)
        click.echo(f"service {info.service_uri}")
        await _tour(info, load_or_create_entity(settings), bus_url)
        task_group.cancel_scope.cancel()
    click.secho("\ndemo complete: the service stopped and published its death.", fg="green")


def _grant(giver: Entity, to: Entity, pattern: str, perms: str) -> Grant:
    now = time.time_ns()
    return Grant.create(
        giver, to.public_key, pattern, perms, ttl=0, expires_ns=now + DAY_NS, created_ns=now
    )


async def _tour(info: ServiceInfo, owner: Entity, bus_url: str) -> None:
    _step("entities and grants (the namespace owner signs; nobody holds another's key)")
    operator, viewer = Entity.generate(), Entity.generate()
    operator_grant = _grant(owner, operator, f"{info.service_uri}/*", "C*P")
    viewer_grant = _grant(owner, viewer, info.slot("predict"), "P")
    click.echo(f"operator {operator.key_text}: C*P on {operator_grant.pattern}")
    click.echo(f"viewer   {viewer.key_text}: P on {viewer_grant.pattern}")
    async with (
        BusClient(open_transport(bus_url), operator, proofs=[[operator_grant]]) as op_bus,
        BusClient(open_transport(bus_url), viewer, proofs=[[viewer_grant]]) as view_bus,
    ):
        service = ServiceClient(op_bus, info.service_uri)
        state = await service.check_alive()
        click.echo(f"service alive: lastalive {state.age_s(time.time_ns()):.1f} s ago")
        await _deploy_and_predict(service)
        await _upgrade(service)
        await _viewer(ServiceClient(view_bus, info.service_uri))
        await forecast_tour(service, ServiceClient(view_bus, info.service_uri))
        _step("liveness, as a dashboard sees it, and the models as they are now")
        for found in await service_states(op_bus, f"{info.service_uri}"):
            age = found.age_s(time.time_ns())
            click.echo(
                f"{found.service}: {'ALIVE' if found.is_alive else 'DEAD'} ({found.reason}), "
                f"lastalive {'never' if age is None else f'{age:.1f} s ago'}"
            )
        # The heartbeat's status is a snapshot from its last beat; the status operation answers
        # with the state at this moment.
        for model in (await service.status())["models"]:
            ready = "ready" if model["ready"] else "NOT READY"
            click.echo(
                f"  {model['model']}:{model['version']} {ready}, {model['replicas']} "
                f"replica(s), {model['queued']} queued"
            )


async def _deploy_and_predict(service: ServiceClient) -> None:
    _step("register an application and deploy thermal:1 (a plain Python function)")
    await service.register_application("zone-a", "doubles", "nan", 500_000)
    started = time.perf_counter()
    model = await service.deploy_function(
        "thermal",
        "1",
        thermal_v1,
        "doubles",
        labels=["xbos", "thermal"],
        metadata={"zone": "A", "note": "a next-step model: no forecast metadata"},
        progress=lambda p: click.echo(f"  uploaded {p.acked_bytes}/{p.total_bytes} bytes"),
    )
    click.echo(
        f"deployed {model['model_name']}:{model['model_version']} in "
        f"{time.perf_counter() - started:.2f} s; artifact {model['container_name']}"
    )
    await service.link_model_to_app("zone-a", "thermal")
    await service.wait_ready("thermal", "1")
    click.echo(
        f"a replica of thermal:1 is ready {time.perf_counter() - started:.2f} s after "
        "the deploy began"
    )
    _step("predict zone A for tomorrow in 30-minute steps (one batch of 48 steps)")
    steps = [[21.0, 5.0 + 4 * math.sin(i / 48 * 2 * math.pi), float(i % 6 < 2)] for i in range(48)]
    reply = await service.predict(app="zone-a", inputs=steps)
    outputs = [p["output"] for p in reply["batch_predictions"]]
    click.echo(f"thermal:{reply['version']} → {len(outputs)} steps, first 6: {outputs[:6]}")
    single = await service.predict(app="zone-a", input=[21.0, 5.0, 1.0])
    click.echo(f"one step: {single['output']} (default output used: {single['default']})")


async def _upgrade(service: ServiceClient) -> None:
    _step("deploy thermal:2; version 1 answers until a replica of 2 is ready")
    await service.deploy_function("thermal", "2", thermal_v2, "doubles")
    versions = []
    for _ in range(1200):  # traffic while the new version starts: at most a minute
        reply = await service.predict(app="zone-a", input=[21.0, 5.0, 1.0])
        versions.append(reply["version"])
        if reply["version"] == "2":
            break
        await anyio.sleep(0.05)
    click.echo(
        f"answers during the switch came from versions {_runs(versions)}; now {reply['output']}"
    )
    pinned = await service.predict(model="thermal", version="1", input=[21.0, 5.0, 1.0])
    click.echo(f"pinned to thermal:1 → {pinned['output']}")
    rolled = await service.rollback("thermal")
    click.echo(f"rolled back: current version is {rolled['model_version']}")
    after = await service.predict(app="zone-a", input=[21.0, 5.0, 1.0])
    click.echo(f"predictions come from thermal:{after['version']} again; thermal:2 stays stored")


def _runs(versions: list[Any]) -> str:
    """``1 x27, 2 x1``: how many answers in a row came from each version."""
    return ", ".join(f"{v} x{len(list(g))}" for v, g in itertools.groupby(versions))


async def _viewer(viewer: ServiceClient) -> None:
    _step("the viewer may predict but not deploy")
    reply = await viewer.predict(app="zone-a", input=[20.0, 0.0, 0.0])
    click.echo(f"viewer prediction: {reply['output']} from thermal:{reply['version']}")
    try:
        await viewer.deploy_function("thermal", "3", thermal_v1, "doubles")
    except VerificationError as refused:
        click.echo(f"viewer deploy refused: {refused.code}: {refused.message}")
    else:
        raise click.ClickException("the viewer was allowed to deploy: grants are broken")
