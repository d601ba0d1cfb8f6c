"""Fits of image versions, end to end on a real engine (Podman's Docker API), and their result.

Covers proxy/fitting/images.py, container_manager/images.py, the image side of
proxy/fitting/worker.py (``--output-dir``) and of proxy/backend/worker.py (``--state``).
The model image is built by ``container_manager.images.write_model_image`` FROM the base image
(tests/proxy/backend/test_docker.py builds it once per machine), holding a fittable model whose
fit fails on purpose for some values (tests/proxy/fit_models.py: ``fit_by_data``); it is saved to
a tarball, removed from the engine, and uploaded and deployed through a real service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest

from bus.artifact import load_closure
from bus.codec import pack
from bus.errors import InvalidRequest
from bus.grants import encode_chain
from container_manager.images import write_model_image
from proxy.backend.docker_engine import DockerEngine
from proxy.backend.images import FIT_LABEL, find_saved_image, parse_fit_command
from proxy.fitting.images import _result
from proxy.fitting.runner import FitFailed, FitLimits
from tests.proxy import fit_models
from tests.proxy.backend.test_docker import SavedModel, base_image, engine  # noqa: F401
from tests.proxy.conftest import ProxyHarness, Service, wait_until
from tests.proxy.fitting.test_fit_service import publish_points

pytestmark = pytest.mark.slow

TIMEOUT_S = 240
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def fittable_image(
    engine: DockerEngine,  # noqa: F811
    base_image: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SavedModel]:
    """The fittable model image, saved to a tarball and removed from the engine."""
    work = tmp_path_factory.mktemp("fittable-image")
    model = fit_models.mean_model(fit_models.fit_by_data)
    context = write_model_image(work / "context", model, base=base_image)
    tag = f"modelbus-test/fittable:{uuid.uuid4().hex[:8]}"
    image_id = engine.build(context, tag)
    tarball = work / "fittable.tar"
    engine.save(tag, tarball)
    engine.remove_image(image_id, force=True)
    yield SavedModel(tag, tarball, image_id)
    engine.remove_image(image_id, force=True)


@pytest.fixture(scope="session")
def plain_image(
    engine: DockerEngine,  # noqa: F811
    base_image: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SavedModel]:
    """A model image whose model has no fit: its modelbus.fit label is empty."""
    work = tmp_path_factory.mktemp("plain-image")
    context = write_model_image(work / "context", fit_models.predict_mean, base=base_image)
    tag = f"modelbus-test/plain:{uuid.uuid4().hex[:8]}"
    image_id = engine.build(context, tag)
    tarball = work / "plain.tar"
    engine.save(tag, tarball)
    engine.remove_image(image_id, force=True)
    yield SavedModel(tag, tarball, image_id)
    engine.remove_image(image_id, force=True)


async def _deploy(service: Service, image: SavedModel) -> None:
    operator = service.operator
    artifact = await operator.upload_artifact(
        image.tarball, name=image.tag, kind="image", chunk_size=4 * 1024 * 1024
    )
    await operator.deploy_artifact(
        "thermal",
        "1",
        "doubles",
        artifact,
        kind="image",
        image=image.tag,
        metadata={"fit_auto_switch": True},
    )
    await operator.wait_ready("thermal", "1", timeout_s=120)


async def _fit_containers(docker: DockerEngine) -> list[str]:
    def listed() -> list[str]:
        found = docker.client.containers.list(all=True, filters={"label": "modelbus.fit-job"})
        return [str(c.name) for c in found]

    return await anyio.to_thread.run_sync(listed)


@pytest.mark.timeout(TIMEOUT_S)
async def test_an_image_fit_makes_a_version_serving_the_fitted_state(
    memory_harness: ProxyHarness,
    docker_url: str,
    engine: DockerEngine,  # noqa: F811
    fittable_image: SavedModel,
) -> None:
    h = memory_harness
    stream = f"{h.service_uri}/data/temp"
    proofs = [encode_chain([h.operator_grant()])]
    saved = find_saved_image(fittable_image.tarball, fittable_image.tag)
    assert saved.fit_command == ["python3", "-m", "proxy.fitting.worker"]
    async with h.serving(docker_url=docker_url) as service:
        operator = service.operator
        await _deploy(service, fittable_image)
        await publish_points(operator, stream, [1.0, 2.0, 3.0, 6.0])
        answers: list[tuple[str, float]] = []
        failures: list[BaseException] = []
        done = anyio.Event()

        async def traffic() -> None:
            while not done.is_set():
                try:
                    reply = await operator.predict(model="thermal", input=[1.0])
                    answers.append((reply["version"], reply["output"]))
                except Exception as exc:  # counted: the test wants none
                    failures.append(exc)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as group:
            group.start_soon(traffic)
            job = await operator.fit("thermal", streams=[f"{stream}/*"], proofs=proofs)
            finished = await operator.wait_fit(job["job_id"], timeout_s=180)
            assert finished["state"] == "succeeded", finished
            assert "fitting 4 values" in finished["log"]
            new = finished["new_version"]

            async def switched() -> bool:
                return bool(answers) and answers[-1][0] == new

            await wait_until(switched, what="the fitted version answers", timeout_s=120)
            done.set()
        assert failures == []
        assert answers[0] == ("1", 0.0) and answers[-1] == (new, 3.0)
        assert [v for v, _ in answers] == sorted((v for v, _ in answers), key=lambda v: v != "1")
        info = await operator.call("admin", "model.info", name="thermal", version=new)
        meta = info["metadata"]
        assert meta["parent_version"] == "1" and meta["training_points"] == 4
        assert len(meta["fit_state"]) == 64
        assert info["container_name"] == fittable_image.tag  # the same image, a new state
        assert await _fit_containers(engine) == []  # the one-shot container is gone

        # A fitted version fits again (its state goes to the fit), here "deployed, not current".
        await publish_points(operator, f"{stream}-b", [10.0, 20.0])
        again = await operator.fit(
            "thermal", streams=[f"{stream}-b/*"], proofs=proofs, make_current=False
        )
        second = await operator.wait_fit(again["job_id"], timeout_s=180)
        assert second["state"] == "succeeded", second
        assert second["parent_version"] == new
        assert await operator.get_current_model_version("thermal") == new
        await operator.wait_ready("thermal", second["new_version"], timeout_s=120)
        reply = await operator.predict(model="thermal", version=second["new_version"], input=[0.0])
        assert reply["output"] == 15.0


@pytest.mark.timeout(TIMEOUT_S)
async def test_failed_image_fits_are_recorded_and_serving_is_unchanged(
    memory_harness: ProxyHarness,
    docker_url: str,
    engine: DockerEngine,  # noqa: F811
    fittable_image: SavedModel,
) -> None:
    h = memory_harness
    proofs = [encode_chain([h.operator_grant()])]
    cases: dict[float, tuple[dict[str, Any], str, str]] = {
        # the value the fit fails on: (limits, the recorded code, in its message)
        666.0: ({}, "fit_error", "ValueError: the data is all wrong"),
        777.0: ({}, "fit_crashed", "exited with status 7"),
        888.0: ({"memory_mb": 256}, "fit_killed", "memory limit of 256 MiB"),
        999.0: ({"timeout_s": 5.0}, "fit_timeout", "past its 5 s limit"),
    }
    async with h.serving(docker_url=docker_url) as service:
        operator = service.operator
        await _deploy(service, fittable_image)
        for value, (limits, code, message) in cases.items():
            stream = f"{h.service_uri}/data/v{int(value)}"
            await publish_points(operator, stream, [1.0, value])
            job = await operator.fit("thermal", streams=[f"{stream}/*"], proofs=proofs, **limits)
            finished = await operator.wait_fit(job["job_id"], timeout_s=180)
            assert finished["state"] == "failed", finished
            assert finished["error"]["code"] == code, finished
            assert message in finished["error"]["message"], finished
            assert await operator.get_all_models() == ["thermal:1"]
            reply = await operator.predict(model="thermal", input=[1.0])
            assert (reply["version"], reply["output"]) == ("1", 0.0)
            assert await _fit_containers(engine) == []


@pytest.mark.timeout(TIMEOUT_S)
async def test_an_image_without_a_fit_program_is_refused(
    memory_harness: ProxyHarness,
    docker_url: str,
    plain_image: SavedModel,
) -> None:
    h = memory_harness
    proofs = [encode_chain([h.operator_grant()])]
    assert find_saved_image(plain_image.tarball, plain_image.tag).fit_command is None
    async with h.serving(docker_url=docker_url) as service:
        operator = service.operator
        artifact = await operator.upload_artifact(
            plain_image.tarball, name=plain_image.tag, kind="image", chunk_size=4 * 1024 * 1024
        )
        await operator.deploy_artifact(
            "plain", "1", "doubles", artifact, kind="image", image=plain_image.tag, replicas=0
        )
        with pytest.raises(InvalidRequest, match="declares no fit program"):
            await operator.fit("plain", streams=[f"{h.service_uri}/data/x/*"], proofs=proofs)
        assert await operator.fit_list() == []


@pytest.mark.timeout(TIMEOUT_S)
async def test_a_restart_during_an_image_fit_removes_its_container(
    memory_harness: ProxyHarness,
    docker_url: str,
    engine: DockerEngine,  # noqa: F811
    fittable_image: SavedModel,
) -> None:
    """The service stops mid-fit: the fit's container goes with it, and the job is interrupted
    (and can be resumed, as a closure's)."""
    h = memory_harness
    stream = f"{h.service_uri}/data/hangs"
    proofs = [encode_chain([h.operator_grant()])]
    async with h.serving(docker_url=docker_url) as service:
        operator = service.operator
        await _deploy(service, fittable_image)
        await publish_points(operator, stream, [999.0])
        job = await operator.fit("thermal", streams=[f"{stream}/*"], proofs=proofs, timeout_s=120)

        async def fitting() -> bool:
            status = await operator.fit_status(job["job_id"])
            return status["progress"] == "fitting 1 values" and status["pid"] is not None

        await wait_until(fitting, what="the fit runs in its container", timeout_s=120)
        assert await _fit_containers(engine) == [f"modelbus-fit-{job['job_id']}"]
    assert await _fit_containers(engine) == []
    async with h.serving(docker_url=docker_url) as restarted:
        status = await restarted.operator.fit_status(job["job_id"])
        assert status["state"] == "interrupted", status
        assert "fitting 1 values" in status["log"]


def _limits() -> FitLimits:
    return FitLimits(timeout_s=10.0, memory_bytes=64 * 1024 * 1024)


def test_what_a_fit_container_leaves_is_read_as_a_result(tmp_path: Path) -> None:
    """The output directory is the container's to write: only a regular state file counts."""
    (tmp_path / "state").write_bytes(b"fitted")
    assert _result(tmp_path, 0, False, _limits()) == b"fitted"
    with pytest.raises(FitFailed, match="memory limit of 64 MiB") as oom:
        _result(tmp_path, 137, True, _limits())
    assert oom.value.code == "fit_killed"
    secret = tmp_path / "secret"
    secret.write_bytes(b"a host file")
    os.unlink(tmp_path / "state")
    os.symlink(secret, tmp_path / "state")  # a link to a host file is not a state
    with pytest.raises(FitFailed, match="without writing its state") as linked:
        _result(tmp_path, 0, False, _limits())
    assert linked.value.code == "fit_crashed"
    (tmp_path / "error.json").write_text(json.dumps({"code": "bad_data", "message": "no rows"}))
    with pytest.raises(FitFailed, match="no rows") as said:
        _result(tmp_path, 1, False, _limits())
    assert said.value.code == "bad_data"
    (tmp_path / "error.json").write_text("[not a map]")
    with pytest.raises(FitFailed, match="killed by signal 15") as killed:
        _result(tmp_path, 143, False, _limits())
    assert killed.value.code == "fit_killed"


def test_the_fit_label_is_empty_or_a_json_array_of_strings() -> None:
    assert parse_fit_command(None, "x") is None
    assert parse_fit_command("", "x") is None  # an empty label declares no fit
    assert parse_fit_command('["fit", "--fast"]', "x") == ["fit", "--fast"]
    for bad in ("fit", "[]", '[""]', "[1]", '{"a": 1}', "[" * 100_000):
        with pytest.raises(InvalidRequest, match=FIT_LABEL):
            parse_fit_command(bad, "x")


async def test_a_deploy_may_not_name_a_fitted_state(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    async with memory_harness.serving() as service:
        operator = service.operator
        with pytest.raises(InvalidRequest, match="reserved"):
            await operator.deploy_function(
                "thermal", "1", fit_models.mean_model(), "doubles", metadata={"fit_state": "0" * 64}
            )
        assert await operator.get_all_models() == []


def _fit_in_image_mode(
    tmp_path: Path, *model: str, values: list[float]
) -> subprocess.CompletedProcess[bytes]:
    """``python -m proxy.fitting.worker`` as an image runs it, here on the host."""
    job = {"data": {"s": [[i, v] for i, v in enumerate(values)]}, "upload": None, "context": {}}
    (tmp_path / "input").write_bytes(pack(job))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    command = [sys.executable, "-m", "proxy.fitting.worker", *model]
    command += ["--input", str(tmp_path / "input"), "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, env=env, capture_output=True, check=False)


def test_the_base_images_fit_program_writes_the_fitted_model_as_the_state(tmp_path: Path) -> None:
    """Clipper's layout (a cloudpickled function) fits; the state is a closure archive the
    replica worker serves; fitting from that state chains; a failure is error.json."""
    model = tmp_path / "func.pkl"
    model.write_bytes(cloudpickle.dumps(fit_models.mean_model(fit_models.fit_by_data)))
    done = _fit_in_image_mode(tmp_path, "--function", str(model), values=[2.0, 4.0])
    assert done.returncode == 0, done.stderr
    assert b"modelbus-progress: fitting 2 values" in done.stderr
    state = tmp_path / "state"
    shutil.move(tmp_path / "out" / "state", state)
    fitted = load_closure(state)
    assert fitted([0.0, 0.0]) == [3.0, 3.0]
    chained = _fit_in_image_mode(
        tmp_path, "--function", str(model), "--state", str(state), values=[10.0]
    )
    assert chained.returncode == 0, chained.stderr
    assert load_closure(tmp_path / "out" / "state")([0.0]) == [10.0]
    failed = _fit_in_image_mode(tmp_path, "--function", str(model), values=[666.0])
    assert failed.returncode == 1 and not (tmp_path / "out" / "state").exists()
    error = json.loads((tmp_path / "out" / "error.json").read_text())
    assert error == {"code": "fit_error", "message": "fit raised ValueError: the data is all wrong"}
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(cloudpickle.dumps(fit_models.predict_mean))
    refused = _fit_in_image_mode(tmp_path, "--function", str(plain), values=[1.0])
    assert json.loads((tmp_path / "out" / "error.json").read_text())["code"] == "not_fittable"
    assert refused.returncode == 1
