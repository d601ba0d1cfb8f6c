"""``modelbus route`` and ``modelbus policy`` against a real service on Mosquitto: a contract
set from a file, shown as a table, a gate opened by a fed metric, the log read back; a
selection policy set and one user's state shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from container_manager import ServiceClient
from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_deploy import as_operator, environment, invoke

pytestmark = pytest.mark.mqtt


def tenfold(inputs: list[list[float]]) -> list[float]:
    return [10.0 * sum(x) for x in inputs]


async def _setup(service: ServiceClient) -> None:
    await service.register_application("cli-zone", "doubles", "-1", 10_000_000)
    await service.register_application("cli-pick", "doubles", "-1", 10_000_000)
    await service.deploy_function("cli-thermal", "1", tenfold, "doubles")
    await service.wait_ready("cli-thermal", "1")
    await service.deploy_function("cli-thermal", "2", tenfold, "doubles", replicas=0)
    await service.link_model_to_app("cli-zone", "cli-thermal")


def test_route_and_policy_commands(service: RunningService, tmp_path: Path) -> None:
    as_operator(service, _setup)
    env = environment(service, tmp_path)
    contract = {
        "releases": [
            {"version": "1"},
            {
                "version": "2",
                "validity": {"gate": "metric", "metric": "mae", "op": "<", "threshold": 1},
            },
        ],
        "log": {"level": "full", "key_fields": ["zone"]},
    }
    (tmp_path / "contract.json").write_text(json.dumps(contract))
    shown = invoke("route", "set", "cli-zone", f"@{tmp_path / 'contract.json'}", env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[1].split()[:3] == ["1", "serving", "100.0%"]
    assert lines[2].split()[:2] == ["2", "waiting"]
    assert "0 of 1 values of mae fed" in lines[2]

    fed = invoke("route", "feed-metric", "cli-zone", "2", "mae", "0.5", env=env)
    assert fed.exit_code == 0, fed.output
    assert fed.output.splitlines()[2].split()[:2] == ["2", "serving"]
    assert "mae = 0.5 (1 fed)" in fed.output

    async def predict(client: ServiceClient) -> dict[str, Any]:
        await client.set_route("cli-zone", {**contract, "releases": contract["releases"][:1]})
        return await client.predict_routed(app="cli-zone", input=[1.0], fields={"zone": "A"})

    assert as_operator(service, predict)["output"] == 10.0
    logged = invoke("route", "log", "cli-zone", "--key", "A", env=env)
    assert logged.exit_code == 0, logged.output
    # the log is written in the background: the record may take a moment; it is there or not yet
    for line in logged.output.splitlines():
        assert json.loads(line)["key"] == "A"

    selection = json.dumps({"candidates": ["cli-thermal"], "policy": {"policy": "exp3"}})
    assert invoke("policy", "set", "cli-pick", selection, env=env).exit_code == 0
    as_operator(service, lambda c: c.predict_routed(app="cli-pick", input=[1.0], user_id="ann"))
    shown = invoke("policy", "show", "cli-pick", "--user", "ann", env=env)
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.output)
    assert view["users"] == 1 and view["state"] == {"cli-thermal": {"cli-thermal": {"logw": 0.0}}}
    bad = invoke("route", "set", "cli-pick", "{not json", env=env)
    assert bad.exit_code != 0
