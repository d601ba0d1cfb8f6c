"""``modelbus containers …`` and ``modelbus service-status`` against a real service on Mosquitto.

The module's service has no container engine, so ``containers`` meets its documented refusal;
the last test runs a service with Podman behind it (tests/fixtures/podman.py) for ``run`` and
``list``. The usage errors are checked before anything is sent. ``service-status`` shows the
state as it is now.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from proxy.backend.docker import DockerEngine
from tests.container_manager.conftest import RunningService, running_service
from tests.fixtures.mosquitto import MosquittoBroker
from tests.proxy.backend.test_docker import base_image, engine
from tests.proxy.cli.test_apps import unique
from tests.proxy.cli.test_deploy import environment, invoke
from tests.proxy.cli.test_versions import deploy

pytestmark = pytest.mark.mqtt

__all__ = ["base_image", "engine"]  # Podman's fixtures, imported for the last test


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
    expected = {"model": name, "version": "1", "ready": True, "replicas": 1, "queued": 0}
    shown_models = [{key: model[key] for key in expected} for model in status["models"]]
    assert expected in shown_models
    assert status["uptime_s"] > 0


@pytest.mark.timeout(300)
def test_list_and_run_on_a_service_with_an_engine(
    mosquitto: MosquittoBroker,
    docker_url: str,
    engine: DockerEngine,
    base_image: str,
    tmp_path: Path,
) -> None:
    """With Podman behind the service: ``run`` starts a container from an image the engine
    holds and ``list`` finds it by its label; a second run of the same name is refused."""
    mosquitto.start()
    name = f"modelbus-cli-{uuid.uuid4().hex[:8]}"
    with running_service(mosquitto.url, tmp_path / "data", docker_url=docker_url) as service:
        env = environment(service, tmp_path)
        ran = invoke(
            "containers", "run", base_image, name, "--env", "GREETING=hello",
            "--label", f"purpose={name}", "--json",
            env=env,
        )  # fmt: skip
        assert ran.exit_code == 0, ran.output
        started = json.loads(ran.stdout)
        try:
            assert (started["name"], started["image"]) == (name, base_image)
            assert started["labels"]["purpose"] == name
            assert started["labels"]["modelbus.requester"] == service.operator.key_text
            listed = invoke("containers", "list", "--label", f"purpose={name}", env=env)
            assert listed.exit_code == 0, listed.output
            header, row = listed.stdout.splitlines()
            assert header.split() == ["ID", "NAME", "IMAGE", "STATE", "LABELS"]
            assert row.split()[:3] == [started["id"][:12], name, base_image]
            assert invoke("containers", "list", "--label", "purpose=none", env=env).stdout == (
                "no containers\n"
            )
            again = invoke("containers", "run", base_image, name, env=env)
            assert again.exit_code == 1
            assert again.stderr.startswith("error: ")
        finally:
            engine.remove(started["id"])
