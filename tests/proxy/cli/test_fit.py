"""``modelbus fit`` and ``modelbus schedule`` against a real service on Mosquitto: a fit on
points published on the bus (its progress line, ``--json``, ``fit status``, ``fit list``) and a
schedule added with a start in the past (its backfilled windows in ``schedule runs``, pause,
resume, remove). Covers proxy/cli/fit.py and proxy/cli/schedule.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bus import PayloadObject
from bus.po import PO_METADATA
from container_manager import ServiceClient
from tests.container_manager.conftest import RunningService
from tests.proxy import fit_models
from tests.proxy.cli.test_apps import unique
from tests.proxy.cli.test_deploy import as_operator, environment, invoke

pytestmark = pytest.mark.mqtt


def total(inputs: list[list[float]]) -> list[float]:
    return [float(sum(values)) for values in inputs]


def test_fit_from_the_command_line(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    name = unique("fitted")
    stream = f"{service.service_uri}/data/{name}"

    async def prepare(remote: ServiceClient) -> None:
        await remote.deploy_function(name, "1", fit_models.mean_model(), "doubles")
        await remote.wait_ready(name, "1")
        for i, value in enumerate((2.0, 4.0)):
            po = PayloadObject.msgpack({"val": value, "ts": time.time_ns() - i}, PO_METADATA)
            await remote.bus.publish(f"{stream}/p{i}", po, persist=True)

    as_operator(service, prepare)
    started = invoke("fit", name, "--data", f"{stream}/*", "--switch", env=env)
    assert started.exit_code == 0, started.output
    assert "succeeded" in started.stderr  # the progress line
    fields = dict(line.split(":", 1) for line in started.stdout.splitlines() if ":" in line)
    assert fields["state"].strip() == "succeeded"
    job = fields["job_id"].strip()
    status = json.loads(invoke("fit", "status", job, "--json", env=env).stdout)
    assert status["new_version"] == f"1-fit-{job[:8]}" and status["state"] == "succeeded"
    listed = invoke("fit", "list", name, env=env)
    assert job in listed.stdout
    new = status["new_version"]

    async def serving_new(remote: ServiceClient) -> dict[str, object]:
        await remote.wait_ready(name, new)
        return await remote.predict(model=name, version=new, input=[0.0])

    reply = as_operator(service, serving_new)
    assert reply["output"] == 3.0
    assert as_operator(service, lambda remote: remote.get_current_model_version(name)) == new
    refused = invoke("fit", name, "--data", "nosuch/ns/*", env=env)
    assert refused.exit_code == 1 and "error:" in refused.stderr


def test_schedule_from_the_command_line(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    name = unique("sched")
    as_operator(service, lambda remote: remote.deploy_function(name, "1", total, "doubles"))
    hour = 3600 * 10**9
    start = str((time.time_ns() // hour - 2) * hour)
    out = f"{service.service_uri}/forecast/{name}"
    added = invoke(
        "schedule",
        "add",
        name,
        "--model",
        name,
        "--every",
        "1h",
        "--window",
        "1h",
        "--start",
        start,
        "--inputs",
        f"{service.service_uri}/data/{name}/*",
        "--output",
        out,
        env=env,
    )
    assert added.exit_code == 0, added.output
    assert "every:" in added.stdout and "3600s" in added.stdout
    assert name in invoke("schedule", "list", env=env).stdout
    for _ in range(200):
        runs = json.loads(invoke("schedule", "runs", name, "--json", env=env).stdout)
        if len(runs) == 3 and all(r["state"] == "done" for r in runs):
            break
        time.sleep(0.1)
    assert [r["state"] for r in runs] == ["done", "done", "done"]
    assert [r["output"] for r in runs] == [0.0, 0.0, 0.0]  # no input points: empty windows
    assert "WINDOW" in invoke("schedule", "runs", name, env=env).stdout
    paused = invoke("schedule", "pause", name, env=env).stdout.splitlines()
    assert ["paused:", "yes"] in [line.split() for line in paused]
    resumed = invoke("schedule", "resume", name, env=env).stdout.splitlines()
    assert ["paused:", "no"] in [line.split() for line in resumed]
    rerun = invoke("schedule", "rerun", name, runs[0]["window_key"], env=env)
    assert rerun.exit_code == 0, rerun.output
    assert invoke("schedule", "remove", name, env=env).exit_code == 0
    assert name not in invoke("schedule", "list", env=env).stdout
