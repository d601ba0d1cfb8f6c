"""``modelbus versions …`` against a real service on Mosquitto (worker processes): list, info,
current, pin, rollback, replicas (and --set), logs, wait, stop, stop-inactive, stop-all — readable
and ``--json`` — and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_manager import ServiceClient
from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_apps import unique
from tests.proxy.cli.test_deploy import as_operator, environment, invoke
from tests.proxy.models import double

pytestmark = pytest.mark.mqtt


def deploy(service: RunningService, name: str, version: str, replicas: int = 1) -> None:
    async def run(remote: ServiceClient) -> None:
        await remote.deploy_function(name, version, double, "doubles", replicas=replicas)
        if replicas:
            await remote.wait_ready(name, version)

    as_operator(service, run)


def current(service: RunningService, name: str) -> str:
    return str(as_operator(service, lambda s: s.get_current_model_version(name)))


def test_list_info_current_pin_rollback(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    name = unique("thermal")
    deploy(service, name, "1")
    deploy(service, name, "2", replicas=0)

    listed = invoke("versions", "list", name, env=env)
    assert listed.exit_code == 0, listed.output
    header, *rows = [line.split() for line in listed.stdout.splitlines()]
    assert header == ["MODEL", "VERSION", "CURRENT", "SERVING", "STATE", "KIND", "INPUT", "LABELS"]
    assert rows == [
        [name, "1", "no", "yes", "ready", "closure", "doubles", "-"],
        [name, "2", "yes", "no", "not", "ready", "closure", "doubles", "-"],
    ]
    views = json.loads(invoke("versions", "list", name, "--json", env=env).stdout)
    assert [(v["model_version"], v["is_current_version"]) for v in views] == [
        ("1", False),
        ("2", True),
    ]
    assert invoke("versions", "current", name, env=env).stdout == "2\n"
    assert json.loads(invoke("versions", "current", name, "--json", env=env).stdout) == "2"

    info = invoke("versions", "info", name, "1", env=env)
    assert info.exit_code == 0, info.output
    lines = info.stdout.splitlines()
    assert lines[0].split() == ["model_name:", name]
    assert ["is_serving:", "yes"] in [line.split() for line in lines]
    assert json.loads(invoke("versions", "info", name, "1", "--json", env=env).stdout)["ready"]

    pinned = invoke("versions", "pin", name, "1", env=env)
    assert pinned.exit_code == 0, pinned.output
    assert pinned.stdout == f"{name}:1 is current (serving)\n"
    assert current(service, name) == "1"
    rolled = invoke("versions", "rollback", name, env=env)
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.startswith(f"rolled {name} back to version 2 (")
    assert current(service, name) == "2"
    waited = invoke("versions", "wait", name, "2", "--timeout", "60", env=env)
    assert waited.exit_code == 0, waited.output
    assert waited.stdout.startswith(f"{name}:2 is ready (")


def test_replicas_logs_and_stops(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    name = unique("occupancy")
    deploy(service, name, "1")
    deploy(service, name, "2")

    replicas = invoke("versions", "replicas", name, "--version", "1", env=env)
    assert replicas.exit_code == 0, replicas.output
    header, row = [line.split() for line in replicas.stdout.splitlines()]
    assert header == ["INDEX", "STATE", "PID", "RESTARTS", "BATCHES", "IN_FLIGHT", "ERROR"]
    assert row[:2] == ["0", "ready"]
    scaled = invoke("versions", "replicas", name, "--version", "1", "--set", "2", env=env)
    assert scaled.exit_code == 0, scaled.output
    assert scaled.stdout == f"{name}:1 now runs 2 replicas\n"
    both = json.loads(
        invoke("versions", "replicas", name, "--version", "1", "--json", env=env).stdout
    )
    assert [replica["index"] for replica in both] == [0, 1]

    log = invoke("versions", "logs", name, "1", "--tail", "50", env=env)
    assert log.exit_code == 0, log.output
    assert isinstance(
        json.loads(invoke("versions", "logs", name, "1", "--json", env=env).stdout), str
    )
    no_replica = invoke("versions", "logs", name, "1", "--replica", "7", env=env)
    assert no_replica.exit_code == 1
    assert no_replica.stderr.startswith("error: ")

    inactive = invoke("versions", "stop-inactive", name, env=env)
    assert inactive.exit_code == 0, inactive.output
    assert inactive.stdout == f"stopped {name}:1\n"
    again = invoke("versions", "stop-inactive", name, "--json", env=env)
    assert json.loads(again.stdout) == []
    stopped_logs = invoke("versions", "logs", name, "1", env=env)
    assert stopped_logs.exit_code == 1
    assert "has no running replicas" in stopped_logs.stderr

    stopped = invoke("versions", "stop", f"{name}:2", env=env)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == f"stopped {name}:2\n"
    assert invoke("versions", "stop", name, env=env).stdout == "nothing newly stopped\n"
    view = json.loads(invoke("versions", "info", name, "2", "--json", env=env).stdout)
    assert view["is_stopped"] is True
    assert "stopped" in invoke("versions", "list", name, env=env).stdout


def test_stop_all_stops_every_version(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    name = unique("weather")
    deploy(service, name, "1")
    result = invoke("versions", "stop-all", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert f"{name}:1" in json.loads(result.stdout)
    listed = json.loads(invoke("versions", "list", "--json", env=env).stdout)
    assert all(view["is_stopped"] for view in listed)


def test_refusals(service: RunningService, tmp_path: Path) -> None:
    env = environment(service, tmp_path)
    unknown = unique("nothing")
    for args in (
        ["info", unknown, "1"],
        ["current", unknown],
        ["pin", unknown, "1"],
        ["rollback", unknown],
        ["replicas", unknown],
        ["wait", unknown, "1"],
        ["stop", f"{unknown}:1"],
        ["stop", unknown],
    ):
        result = invoke("versions", *args, env=env)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error: ") and "Traceback" not in result.output, args
    assert invoke("versions", "list", unknown, env=env).stdout == f"no versions of {unknown}\n"
    only = unique("single")
    deploy(service, only, "1", replicas=0)
    no_earlier = invoke("versions", "rollback", only, env=env)
    assert no_earlier.exit_code == 1
    never_started = invoke("versions", "wait", only, "1", env=env)
    assert never_started.exit_code == 1
    assert "has no replicas" in never_started.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["stop"],
        ["stop", "name:"],
        ["stop", ":1"],
        ["replicas", "m", "--set", "65"],
        ["logs", "m", "1", "--tail", "0"],
        ["wait", "m", "1", "--timeout", "0"],
    ],
)
def test_usage_errors_exit_2(service: RunningService, tmp_path: Path, args: list[str]) -> None:
    result = invoke("versions", *args, env=environment(service, tmp_path))
    assert result.exit_code == 2, result.output
