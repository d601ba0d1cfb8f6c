"""``modelbus deploy`` against a real service on Mosquitto: a function from a file (with a
sibling module it imports) deployed, linked and predicting; a second run that finds it done; an
image upload interrupted and resumed by running the command again; and the refusals.

Covers proxy/cli/deploy.py and proxy/cli/artifacts.py (what a deploy builds and keeps to resume).
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import click.testing
import pytest

from bus import BusClient, TransportError
from bus.transfer import UploadProgress, upload_file
from container_manager import ServiceClient
from proxy.cli import main
from tests.container_manager.conftest import RunningService, saved_image_tarball
from transports import open_transport

pytestmark = pytest.mark.mqtt


def invoke(*args: str, env: dict[str, str]) -> click.testing.Result:
    clean = {name: None for name in os.environ if name.startswith("MODELBUS_")}
    runner = click.testing.CliRunner(env={**clean, **env})
    return runner.invoke(main, list(args), catch_exceptions=False)


def environment(service: RunningService, directory: Path, who: str = "operator") -> dict[str, str]:
    key, chains = service.write_identity(directory, who)
    return {
        "MODELBUS_BUS": service.bus_url,
        "MODELBUS_ENTITY": str(key),
        "MODELBUS_PROOF": os.pathsep.join(str(chain) for chain in chains),
        "MODELBUS_SERVICE": service.owner.key_text,
        "MODELBUS_CACHE": str(directory / "cache"),
    }


def as_operator(service: RunningService, call: Any) -> Any:
    async def run() -> Any:
        proofs = service.operator_proofs()
        async with BusClient(
            open_transport(service.bus_url), service.operator, proofs=proofs
        ) as bus:
            return await call(ServiceClient(bus, service.service_uri))

    return anyio.run(run)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A model in a file, using a function of a sibling module (shipped with it, by value)."""
    helper = f"calibration_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{helper}.py").write_text("def offset():\n    return 100.0\n")
    path = tmp_path / "thermal.py"
    path.write_text(
        textwrap.dedent(
            f"""\
            import {helper} as calibration

            def predict(inputs):
                return [calibration.offset() + sum(row) for row in inputs]
            """
        )
    )
    return path


def test_deploy_a_function_link_it_and_predict(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name, app = f"thermal-{uuid.uuid4().hex[:8]}", f"zone-{uuid.uuid4().hex[:8]}"
    as_operator(service, lambda s: s.register_application(app, "doubles", "0", 2_000_000))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(
        json.dumps(
            {
                "type": "thermal",
                "context": {"zone": "A"},
                "resolution_s": 1800,
                "coverage": {"timezone": "UTC", "rules": [{"hours": [8, 9, 10]}]},
            }
        )
    )
    args = [
        "deploy",
        name,
        "1",
        "--function",
        f"{model_file}:predict",
        "--label",
        "lab",
        "--meta",
        str(metadata),
        "--link",
        app,
    ]

    done = invoke(*args, env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"deployed {name}:1 (closure sha256:")
    assert f"linked to application {app}" in done.stdout
    assert f"uploading {name}:1" in done.stderr
    assert not any((tmp_path / "cache").iterdir())  # the built archive went once deployed

    answer = as_operator(service, lambda s: s.predict(app=app, input=[1.0, 2.0]))
    assert (answer["output"], answer["default"]) == (103.0, False)
    info = as_operator(service, lambda s: s.get_model_info(name, "1"))
    assert info["labels"] == ["lab"] and info["metadata"]["context"] == {"zone": "A"}

    again = invoke(*args, env=env)
    assert again.exit_code == 1  # rebuilt closure, new digest: a version is immutable
    assert "already registered" in again.stderr


def test_an_interrupted_upload_resumes_when_the_command_runs_again(
    service: RunningService, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    name = f"imaged-{uuid.uuid4().hex[:8]}"
    tarball = saved_image_tarball(tmp_path / "image.tar", f"example/{name}:1", size=5 * 1024 * 1024)

    class Interrupted(Exception):
        pass

    def interrupt(progress: UploadProgress) -> None:
        if progress.chunks_acked >= 2:
            raise Interrupted

    async def first_attempt(service_client: ServiceClient) -> None:
        await upload_file(
            service_client.bus,
            service_client.slot("deploy"),
            tarball,
            name=f"{name}:1",
            kind="image",
            window=1,
            progress=interrupt,
        )

    with pytest.raises(ExceptionGroup) as interrupted:
        as_operator(service, first_attempt)
    assert interrupted.value.subgroup(Interrupted) is not None

    resumed = invoke("deploy", name, "1", "--image-tar", str(tarball), env=env)
    assert "resuming the upload at chunk 2 of 6" in resumed.stderr, resumed.output
    # This tarball holds no runnable image: the upload completed, the deploy is refused.
    assert resumed.exit_code == 1
    assert resumed.stderr.splitlines()[-1].startswith("error: ")


def test_a_function_deploy_cut_off_resumes_from_what_it_built(
    service: RunningService, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(service, tmp_path)
    name = f"thermal-{uuid.uuid4().hex[:8]}"
    args = ["deploy", name, "1", "--function", f"{model_file}:predict"]
    deploy_artifact = ServiceClient.deploy_artifact

    async def connection_lost(*args: Any, **kwargs: Any) -> Any:
        raise TransportError("the connection to the broker was lost")

    monkeypatch.setattr(ServiceClient, "deploy_artifact", connection_lost)
    cut = invoke(*args, env=env)
    assert cut.exit_code == 1
    assert "run the same command again to resume" in cut.stderr
    kept = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert kept == [f"{name}-1.closure", f"{name}-1.closure.json"]

    monkeypatch.setattr(ServiceClient, "deploy_artifact", deploy_artifact)
    resumed = invoke(*args, env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "reusing" in resumed.stderr
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy", "m", "1"], "exactly one of --function, --image-tar or --image"),
        (["deploy", "m", "1", "--function", "x.py:f", "--image", "a:1"], "exactly one of"),
        (["deploy", "m", "1", "--function", "nofile.py:f"], "no file nofile.py"),
        (["deploy", "m", "1", "--function", "model.txt"], "is not FILE.py:FUNCTION"),
        (["deploy", "m", "1", "--function", "f.py:f", "--metadata", "[1]"], "a JSON object"),
    ],
)
def test_usage_errors(
    service: RunningService, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "f.py").write_text("def f(inputs):\n    return inputs\n")
    env = environment(service, tmp_path)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = invoke(*args, env=env)
    finally:
        os.chdir(old)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_predict_only_grant_is_refused_the_deploy(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path, who="viewer")
    result = invoke("deploy", "mine", "1", "--function", f"{model_file}:predict", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "slot/deploy" in result.stderr


def test_without_an_entity_the_command_says_how_to_get_one(
    service: RunningService, model_file: Path, tmp_path: Path
) -> None:
    env = environment(service, tmp_path)
    del env["MODELBUS_ENTITY"]
    result = invoke("deploy", "m", "1", "--function", f"{model_file}:predict", env=env)
    assert result.exit_code == 1
    assert "modelbus keys new" in result.stderr
