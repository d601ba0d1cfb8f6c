"""The demo behind ``modelbus demo fit``: a model fitted on data published on the bus, the new
version taking over with no failed request, and a schedule that backfills two missed windows.

It starts the whole service on this machine (as ``modelbus demo`` does), deploys a fittable
occupancy model (:class:`bus.fittable.Fittable`: the mean of what it was fitted on), publishes a
day of occupancy readings as persisted messages, fits the model on them while a client predicts
in a loop, then adds an hourly schedule whose start lies two hours in the past: the current
window runs and the two missed ones are backfilled, their outputs published on the bus.
"""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import click

from bus import BusClient, Entity, Grant, PayloadObject
from bus.fittable import Fittable
from bus.grants import encode_chain
from bus.po import PO_METADATA
from container_manager import ServiceClient
from proxy.bench.demos.tour import free_base_port
from proxy.service.settings import ProxySettings
from proxy.service.startup import ServiceInfo, load_or_create_entity, run_proxy
from transports import open_transport

__all__ = ["fit_occupancy", "predict_occupancy", "run_fit_demo"]

HOUR_NS = 3600 * 10**9


def predict_occupancy(state: dict[str, float], inputs: list[Any]) -> list[float]:
    """Expected occupancy: the fitted mean (the inputs are ignored: a baseline model)."""
    return [round(state["mean"], 3) for _ in inputs]


def fit_occupancy(data: dict[str, list[list[Any]]], context: dict[str, Any]) -> dict[str, float]:
    values = [float(value) for points in data.values() for _, value in points]
    context["progress"](f"averaging {len(values)} readings")
    return {"mean": sum(values) / len(values)}


def _step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


async def run_fit_demo(data_dir: Path) -> None:
    bus_url = f"zmq://127.0.0.1:{free_base_port()}"
    settings = ProxySettings(
        bus_url=bus_url,
        data_dir=data_dir,
        heartbeat_interval_s=2.0,
        unsafe_no_sandbox=shutil.which("bwrap") is None,
    )
    _step(f"starting the service: embedded ZeroMQ bus at {bus_url}, data in {data_dir}")
    async with anyio.create_task_group() as task_group:
        info: ServiceInfo = await task_group.start(run_proxy, settings)
        owner = load_or_create_entity(settings)
        operator = Entity.generate()
        now = time.time_ns()
        grant = Grant.create(
            owner,
            operator.public_key,
            f"{info.service_uri}/*",
            "C*P",
            ttl=0,
            expires_ns=now + 24 * HOUR_NS,
            created_ns=now,
        )
        async with BusClient(open_transport(bus_url), operator, proofs=[[grant]]) as bus:
            service = ServiceClient(bus, info.service_uri)
            proofs = [encode_chain([grant])]
            sensors = f"{info.service_uri}/sensors/zone-a/occupancy"
            await _fit(service, sensors, proofs)
            await _schedule(service, sensors, f"{info.service_uri}/forecasts/zone-a", proofs)
        task_group.cancel_scope.cancel()
    click.secho("\ndemo complete.", fg="green")


async def _fit(service: ServiceClient, sensors: str, proofs: list[bytes]) -> None:
    _step("deploy occupancy:1, a fittable model (mean 0.0), switching on fit")
    model = Fittable(predict_occupancy, fit_occupancy, state={"mean": 0.0})
    await service.deploy_function(
        "occupancy", "1", model, "doubles", metadata={"fit_auto_switch": True}
    )
    await service.wait_ready("occupancy", "1")
    _step("publish a day of occupancy readings (persisted, one per half hour)")
    start = (time.time_ns() // HOUR_NS - 24) * HOUR_NS
    for index in range(48):
        occupied = 9 <= (index // 2) % 24 < 17
        value = {"val": 12.0 if occupied else 1.0, "ts": start + index * HOUR_NS // 2}
        await service.bus.publish(
            f"{sensors}/r{index:02d}", PayloadObject.msgpack(value, PO_METADATA), persist=True
        )
    click.echo(f"48 readings under {sensors}/*")
    _step("fit occupancy on them while a client predicts in a loop")
    answers: list[str] = []
    failures = 0
    done = anyio.Event()

    async def traffic() -> None:
        nonlocal failures
        while not done.is_set():
            try:
                answers.append((await service.predict(model="occupancy", input=[0.0]))["version"])
            except Exception:  # counted and shown: the point is that there are none
                failures += 1

    async with anyio.create_task_group() as group:
        group.start_soon(traffic)
        job = await service.fit("occupancy", streams=[f"{sensors}/*"], proofs=proofs)
        finished = await service.wait_fit(
            job["job_id"], on_progress=lambda j: click.echo(f"  {j['state']}: {j['progress']}")
        )
        new = finished["new_version"]
        with anyio.fail_after(60):
            while not answers or answers[-1] != new:  # noqa: ASYNC110 (no event to await)
                await anyio.sleep(0.05)
        done.set()
    runs = ", ".join(f"{v} x{len(list(g))}" for v, g in itertools.groupby(answers))
    click.echo(f"job {job['job_id']} {finished['state']}: new version occupancy:{new}")
    click.echo(f"answers during the fit and switch: {runs}; failed requests: {failures}")
    reply = await service.predict(model="occupancy", input=[0.0])
    info = await service.call("admin", "model.info", name="occupancy", version=new)
    meta = info["metadata"]
    click.echo(
        f"occupancy:{reply['version']} now predicts {reply['output']}; parent "
        f"{meta['parent_version']}, {meta['training_points']} points from "
        f"{meta['training_streams']}"
    )


async def _schedule(service: ServiceClient, sensors: str, output: str, proofs: list[bytes]) -> None:
    _step("an hourly schedule whose start lies two hours back: two windows were missed")
    start = (time.time_ns() // HOUR_NS - 2) * HOUR_NS
    await service.schedule_add(
        "zone-a-hourly",
        model="occupancy",
        every="1h",
        window="1h",
        start=str(start),
        inputs=[f"{sensors}/*"],
        output=output,
        proofs=proofs,
    )
    with anyio.fail_after(60):
        while len(await service.schedule_runs("zone-a-hourly", state="done")) < 3:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    for run in await service.schedule_runs("zone-a-hourly"):
        click.echo(
            f"  window {run['window_key']}: {run['state']} (attempts {run['attempts']}), "
            f"output {run['output']} from occupancy:{run['model_version']}"
        )
    published = await service.bus.query(f"{output}/*")
    click.echo(f"{len(published)} outputs persisted on the bus under {output}/*")
