"""``modelbus containers …`` and ``modelbus service-status`` against a real service on Mosquitto.

The service here has no container engine, so ``containers`` meets its documented refusal (the
engine's side is tested in tests/proxy/backend/test_docker.py); the usage errors are checked
before anything is sent. ``service-status`` shows the state as it is now.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_apps import unique
from tests.proxy.cli.test_deploy import environment, invoke
from tests.proxy.cli.test_versions import deploy

pytestmark = pytest.mark.mqtt


@pytest.mark.parametrize(
    "args", [["list"], ["list", "--label", "team=a"], ["run", "alpine:3", "job-1", "--env", "A=1"]]
)
def test_a_service_without_an_engine_says_so(
    service: RunningService, tmp_path: Path, args: list[str]
) -> None:
    result = invoke("containers", *args, env=environment(service, tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: this modelbus service has no container engine, so it can neither list nor run"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--label", "team"], "'team' is not KEY=VALUE"),
        (["run", "alpine:3", "job", "--env", "=1"], "'=1' is not KEY=VALUE"),
        (["run", "alpine:3"], "Missing argument 'NAME'"),
    ],
)
def test_usage_errors_exit_2(
    service: RunningService, tmp_path: Path, args: list[str], message: str
) -> None:
    result = invoke("containers", *args, env=environment(service, tmp_path))
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_predict_only_grant_cannot_list_containers(
    service: RunningService, tmp_path: Path
) -> None:
    result = invoke("containers", "list", env=environment(service, tmp_path, who="viewer"))
    assert result.exit_code == 1
    assert "slot/deploy" in result.stderr


def test_service_status_shows_the_started_versions_now(
    service: RunningService, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name = unique("status")
    deploy(service, name, "1")
    shown = invoke("service-status", env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"service:        {service.service_uri}"
    assert lines[1] == "version:        0.1.0"
    assert lines[4].split() == ["MODEL", "VERSION", "READY", "REPLICAS", "QUEUED"]
    assert [name, "1", "yes", "1", "0"] in [line.split() for line in lines[5:]]
    status = json.loads(invoke("service-status", "--json", env=env).stdout)
    assert {"model": name, "version": "1", "ready": True, "replicas": 1, "queued": 0} in status[
        "models"
    ]
    assert status["uptime_s"] > 0
