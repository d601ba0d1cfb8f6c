"""Image deploys end to end, against a real engine (Podman's Docker API, tests/fixtures/podman.py).

The base image is built from this machine's Python (deploy/base-image/rootfs.py) once per machine
— its tag is its content digest; model images are built FROM it out of tests/proxy/images/, saved
with ``docker save`` into tarballs and removed from the engine, so every deploy really loads its
upload. Then, through the real service on an in-memory bus: upload, deploy two replicas,
predict, upgrade, stop, garbage collection; an upload interrupted half-way and resumed; the
refusals (an image the tarball lacks, no engine at all, a model that cannot load).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest

from bus.artifact import build_closure_archive
from bus.errors import Conflict, DecodeError, InvalidRequest, NotFound, OutOfScope
from bus.transfer import UploadProgress, upload_file
from proxy.backend.docker_engine import DockerEngine
from proxy.backend.images import check_saved_image, find_saved_image, parse_entry
from proxy.backend.sandbox import SandboxLimits
from tests.proxy.conftest import ProxyHarness, Service, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
CONTEXTS = Path(__file__).resolve().parents[1] / "images"


def summed(factor: float, delay_s: float = 0.0) -> Callable[[list[list[float]]], list[float]]:
    """A model answering ``factor * sum(x)``; a nested function, so it is pickled by value."""

    def predict(inputs: list[list[float]]) -> list[float]:
        time.sleep(delay_s)
        return [round(sum(x) * factor, 6) for x in inputs]

    return predict


@dataclass(frozen=True)
class SavedModel:
    tag: str
    tarball: Path
    image_id: str


@dataclass(frozen=True)
class ModelImages:
    closure: SavedModel  # factor 10, 0.2 s per batch; a closure archive at /model/model.closure
    function: SavedModel  # factor 20; Clipper's layout, /model/func.pkl
    broken: SavedModel  # its entry label names a file that is not there


@pytest.fixture(scope="session")
def engine(docker_url: str) -> Iterator[DockerEngine]:
    engine = DockerEngine(docker_url)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def base_image(engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base image, built unless the engine has this content digest already."""
    context = tmp_path_factory.mktemp("base-image")
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "base-image" / "rootfs.py"), str(context)],
        capture_output=True,
        text=True,
        check=True,
    )
    tag = done.stdout.strip()
    if not engine.has_image(tag):
        engine.build(context, tag)
    shutil.rmtree(context)
    return tag


@pytest.fixture(scope="session")
def model_images(
    engine: DockerEngine, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelImages]:
    """Three model images, saved to tarballs and then removed from the engine."""
    work = tmp_path_factory.mktemp("model-images")
    run = uuid.uuid4().hex[:8]

    def build(name: str, context: str, files: dict[str, bytes], **args: str) -> SavedModel:
        directory = work / name
        shutil.copytree(CONTEXTS / context, directory)
        for file_name, data in files.items():
            (directory / file_name).write_bytes(data)
        tag = f"modelbus-test/{name}:{run}"
        image_id = engine.build(directory, tag, buildargs={"BASE": base_image, **args})
        tarball = work / f"{name}.tar"
        engine.save(tag, tarball)
        engine.remove_image(image_id, force=True)
        return SavedModel(tag, tarball, image_id)

    pickled = cloudpickle.dumps(summed(20))
    images = ModelImages(
        closure=build(
            "thermal", "closure", {"model.closure": build_closure_archive(summed(10, delay_s=0.2))}
        ),
        function=build("thermal-clipper", "function", {"func.pkl": pickled}),
        broken=build(
            "broken", "function", {"func.pkl": pickled}, ENTRY="function:/model/missing.pkl"
        ),
    )
    yield images
    for image in (images.closure, images.function, images.broken):
        engine.remove_image(image.image_id, force=True)


async def _containers(engine: DockerEngine, **labels: str) -> list[dict[str, Any]]:
    """Containers (any state) whose labels include ``labels``: their status and labels."""
    filters = {"label": [f"modelbus.{key}={value}" for key, value in labels.items()]}

    def listed() -> list[dict[str, Any]]:
        found = engine.client.containers.list(all=True, filters=filters)
        return [{"status": c.status, "labels": c.labels, "name": c.name} for c in found]

    return await anyio.to_thread.run_sync(listed)


async def _has_image(engine: DockerEngine, image_id: str) -> bool:
    return await anyio.to_thread.run_sync(engine.has_image, image_id)


async def _upload(service: Service, model: SavedModel) -> str:
    return await service.operator.upload_artifact(
        model.tarball, name=model.tag, kind="image", chunk_size=4 * 1024 * 1024
    )


async def _deploy(
    service: Service, version: str, model: SavedModel, artifact: str, replicas: int = 1
) -> dict[str, Any]:
    return await service.operator.deploy_artifact(
        "thermal", version, "doubles", artifact, kind="image", image=model.tag, replicas=replicas
    )


@pytest.mark.timeout(300)
async def test_image_versions_deploy_predict_upgrade_stop_and_gc(
    memory_harness: ProxyHarness, docker_url: str, engine: DockerEngine, model_images: ModelImages
) -> None:
    v1, v2 = model_images.closure, model_images.function
    async with memory_harness.serving(docker_url=docker_url) as service:
        operator = service.operator
        await operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)

        progress: list[UploadProgress] = []
        artifact1 = await operator.upload_artifact(
            v1.tarball, name=v1.tag, kind="image", progress=progress.append
        )
        assert artifact1 == hashlib.sha256(v1.tarball.read_bytes()).hexdigest()
        assert progress[-1].fraction == 1.0 and progress[-1].resumed_from == 0
        deployed = await _deploy(service, "1", v1, artifact1, replicas=2)
        assert (deployed["container_name"], deployed["replicas"]) == (v1.tag, 2)
        await operator.link_model_to_app("zone-a", "thermal")
        await operator.wait_ready("thermal", "1")
        await wait_until(
            lambda: _all_ready(operator, "1", 2), what="both replicas of thermal:1 ready"
        )

        running = await _containers(engine, model="thermal", version="1")
        assert sorted(c["labels"]["modelbus.replica"] for c in running) == ["0", "1"]
        assert {c["status"] for c in running} == {"running"}
        assert all(c["name"].startswith("modelbus-thermal-1-r") for c in running)

        async with anyio.create_task_group() as tg:  # 0.2 s per batch: both replicas get work
            for _ in range(8):
                tg.start_soon(_predicts, service, "1", [1.0, 2.0], 30.0)
        assert all(r["batches"] > 0 for r in await operator.get_replicas("thermal", "1"))
        assert "model loaded" in await operator.get_logs("thermal", "1", replica=1)

        artifact2 = await _upload(service, v2)
        await _deploy(service, "2", v2, artifact2)
        await operator.wait_ready("thermal", "2")
        await wait_until(lambda: _serves(service, "2"), what="thermal:2 serves the app")
        reply = await operator.predict(app="zone-a", input=[1.0, 2.0])
        assert (reply["version"], reply["output"]) == ("2", 60.0)
        await _predicts(service, "1", [1.0, 2.0], 30.0)  # the old version still answers, pinned

        await operator.stop_versioned_models({"thermal": ["1"]})
        assert await _containers(engine, model="thermal", version="1") == []
        assert not await _has_image(engine, v1.image_id)
        assert await _has_image(engine, v2.image_id)

        await _deploy(service, "3", v2, artifact2)  # the same image as version 2
        await operator.wait_ready("thermal", "3")
        await operator.stop_versioned_models({"thermal": ["2"]})
        assert await _has_image(engine, v2.image_id), "version 3 still uses the image"
        assert await _containers(engine, model="thermal", version="2") == []

        await operator.set_model_version("thermal", "1")  # back from its kept tarball
        await operator.wait_ready("thermal", "1")
        await _predicts(service, "1", [2.0, 2.0], 40.0)
        await operator.stop_versioned_models({"thermal": ["3"]})
        assert not await _has_image(engine, v2.image_id)
        versions = {m["model_version"] for m in await operator.get_all_models(verbose=True)}
        assert versions == {"1", "2", "3"}

    # The service stopped: its containers are gone, the running version's image is kept.
    assert await _containers(engine, model="thermal") == []
    assert await _has_image(engine, v1.image_id)
    await anyio.to_thread.run_sync(lambda: engine.remove_image(v1.image_id, force=True))


async def _all_ready(operator: Any, version: str, count: int) -> bool:
    states = [r["state"] for r in await operator.get_replicas("thermal", version)]
    return states == ["ready"] * count


async def _serves(service: Service, version: str) -> bool:
    return bool((await service.operator.predict(app="zone-a", input=[0.0]))["version"] == version)


async def _predicts(service: Service, version: str, value: list[float], expected: float) -> None:
    reply = await service.operator.predict(model="thermal", version=version, input=value)
    assert (reply["version"], reply["output"], reply["default"]) == (version, expected, False)


class _Interrupted(Exception):
    pass


@pytest.mark.timeout(180)
async def test_upload_interrupted_half_way_resumes_then_deploys(
    memory_harness: ProxyHarness, docker_url: str, engine: DockerEngine, model_images: ModelImages
) -> None:
    model = model_images.function
    chunk_size = 1024 * 1024
    async with memory_harness.serving(docker_url=docker_url) as service:

        def interrupt(progress: UploadProgress) -> None:
            if progress.fraction >= 0.5:
                raise _Interrupted(progress.chunks_acked)

        with pytest.RaisesGroup(_Interrupted, flatten_subgroups=True):
            await upload_file(
                service.operator.bus,
                service.operator.slot("deploy"),
                model.tarball,
                name=model.tag,
                kind="image",
                chunk_size=chunk_size,
                progress=interrupt,
            )
        resumed: list[UploadProgress] = []
        committed = await upload_file(
            service.operator.bus,
            service.operator.slot("deploy"),
            model.tarball,
            name=model.tag,
            kind="image",
            chunk_size=chunk_size,
            progress=resumed.append,
        )
        chunks = resumed[-1].chunk_count
        assert 0 < resumed[0].resumed_from < chunks, resumed[0]
        assert len(resumed) == chunks - resumed[0].resumed_from, "no chunk was sent twice"
        assert committed["artifact"] == hashlib.sha256(model.tarball.read_bytes()).hexdigest()

        await service.operator.register_application("zone-a", "doubles", "-1.0", 10_000_000)
        await _deploy(service, "1", model, committed["artifact"])
        await service.operator.wait_ready("thermal", "1")
        await _predicts(service, "1", [1.0, 2.0], 60.0)
        await service.operator.stop_models(["thermal"])
        assert not await _has_image(engine, model.image_id)


async def test_refused_image_deploys_register_nothing(
    memory_harness: ProxyHarness, docker_url: str, model_images: ModelImages, tmp_path: Path
) -> None:
    model = model_images.function
    not_a_tarball = tmp_path / "model.tar"
    not_a_tarball.write_bytes(b"not a tarball\n" * 100)
    async with memory_harness.serving(docker_url=docker_url) as service:
        artifact = await _upload(service, model)
        with pytest.raises(InvalidRequest, match="does not contain image 'modelbus-test/other:1'"):
            await service.operator.deploy_artifact(
                "thermal", "1", "doubles", artifact, kind="image", image="modelbus-test/other:1"
            )
        junk = await service.operator.upload_artifact(not_a_tarball, name="junk", kind="image")
        with pytest.raises(DecodeError, match="not a `docker save` tarball"):
            await service.operator.deploy_artifact(
                "thermal", "1", "doubles", junk, kind="image", image=model.tag
            )
        assert await service.operator.get_all_models() == []


def _saved_image_stub(path: Path, tag: str, labels: dict[str, str]) -> str:
    """A ``docker save`` tarball with a manifest and a config but no layers; the image's id."""
    config = json.dumps({"config": {"Labels": labels}}).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": []}])
    with tarfile.open(path, "w") as archive:
        for name, data in ((f"{image_id}.json", config), ("manifest.json", manifest.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return f"sha256:{image_id}"


def test_saved_image_stubs_are_read_like_saved_images(tmp_path: Path) -> None:
    """The checks a deploy makes before it needs an engine, on hand-made tarballs."""
    tarball = tmp_path / "model.tar"
    entry = {"modelbus.entry": "function:/model/func.pkl"}
    image_id = _saved_image_stub(tarball, "docker.io/library/thermal:latest", entry)
    assert check_saved_image(tarball, "thermal").id == image_id
    assert check_saved_image(tarball, image_id).entry.kind == "function"
    with pytest.raises(InvalidRequest, match="does not contain image 'thermal:2'"):
        check_saved_image(tarball, "thermal:2")
    _saved_image_stub(tarball, "thermal:1", {})
    with pytest.raises(InvalidRequest, match=r"no usable modelbus\.entry label"):
        check_saved_image(tarball, "thermal:1")


async def test_a_service_without_engine_refuses_images(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    tarball = tmp_path / "model.tar"
    _saved_image_stub(tarball, "thermal:1", {"modelbus.entry": "closure:/model/model.closure"})
    async with memory_harness.serving(docker_url=None) as service:
        artifact = await service.operator.upload_artifact(tarball, name="m", kind="image")
        with pytest.raises(InvalidRequest, match="this service has no container engine"):
            await service.operator.deploy_artifact(
                "thermal", "1", "doubles", artifact, kind="image", image="thermal:1"
            )
        assert await service.operator.get_all_models() == []


@pytest.mark.timeout(120)
async def test_an_image_whose_model_cannot_load_fails_without_restarts(
    memory_harness: ProxyHarness, docker_url: str, engine: DockerEngine, model_images: ModelImages
) -> None:
    model = model_images.broken
    async with memory_harness.serving(docker_url=docker_url) as service:
        artifact = await _upload(service, model)
        await _deploy(service, "1", model, artifact)
        with pytest.raises(InvalidRequest, match=r"/model/missing\.pkl cannot be read"):
            await service.operator.wait_ready("thermal", "1", timeout_s=60)
        [replica] = await service.operator.get_replicas("thermal", "1")
        assert (replica["state"], replica["restarts"]) == ("failed", 0)
        assert await _containers(engine, model="thermal", version="1") == []
        assert "cannot load the model" in await service.operator.get_logs("thermal", "1")


def test_saved_image_lookup_and_entry_labels(model_images: ModelImages) -> None:
    model = model_images.closure
    saved = find_saved_image(model.tarball, model.tag)
    assert saved.id == model.image_id
    assert find_saved_image(model.tarball, f"docker.io/{model.tag}") == saved
    assert find_saved_image(model.tarball, model.image_id[7:19]) == saved
    assert saved.entry.worker_args() == ["--artifact", "/model/model.closure"]
    assert parse_entry("function:/model/func.pkl", "x").worker_args() == [
        "--function",
        "/model/func.pkl",
    ]
    for bad in (None, "", "closure:relative/path", "shell:/bin/sh"):
        with pytest.raises(InvalidRequest, match=r"modelbus\.entry"):
            parse_entry(bad, "x")


@pytest.mark.timeout(300)
async def test_container_operations_are_confined_and_granted(
    memory_harness: ProxyHarness,
    docker_url: str,
    engine: DockerEngine,
    model_images: ModelImages,
    base_image: str,
) -> None:
    """container.list sees this service's containers only; container.run starts one from an
    image the engine holds, sandboxed; a predict-only grant reaches neither."""
    model = model_images.closure
    async with memory_harness.serving(docker_url=docker_url) as service:
        operator = service.operator
        artifact = await _upload(service, model)
        await _deploy(service, "1", model, artifact)
        await operator.wait_ready("thermal", "1")
        listed = await operator.list_containers({"modelbus.model": "thermal"})
        assert [c["labels"]["modelbus.version"] for c in listed] == ["1"]
        assert await operator.list_containers({"modelbus.model": "no-such-model"}) == []

        name = f"modelbus-test-run-{uuid.uuid4().hex[:8]}"
        ran = await operator.run_container(
            base_image, name, env={"GREETING": "hello"}, labels={"purpose": "test"}
        )
        try:
            assert ran["name"] == name and ran["labels"]["purpose"] == "test"
            attrs = await anyio.to_thread.run_sync(
                lambda: engine.client.containers.get(ran["id"]).attrs
            )
            host = attrs["HostConfig"]
            assert host["NetworkMode"] == "none"
            dropped = {cap.upper().removeprefix("CAP_") for cap in host["CapDrop"] or []}
            # Docker reports ALL; Podman expands it into the default set it dropped
            assert "ALL" in dropped or {"CHOWN", "KILL", "SETUID", "NET_BIND_SERVICE"} <= dropped
            assert not host.get("CapAdd")
            assert any("no-new-privileges" in opt for opt in host["SecurityOpt"] or [])
            assert "GREETING=hello" in attrs["Config"]["Env"]
            mine = await operator.list_containers({"purpose": "test"})
            assert [c["name"] for c in mine] == [name]
            with pytest.raises(Conflict):
                await operator.run_container(base_image, name)
            with pytest.raises(NotFound):
                await operator.run_container("localhost/never-uploaded:1", f"{name}-x")
            with pytest.raises(OutOfScope):
                await service.viewer.list_containers()
        finally:
            await anyio.to_thread.run_sync(engine.remove, ran["id"])


@pytest.mark.timeout(300)
async def test_an_image_replica_runs_confined(
    memory_harness: ProxyHarness, docker_url: str, engine: DockerEngine, model_images: ModelImages
) -> None:
    """Inspected through the engine's API: no network but the mounted channel, no capabilities,
    no new privileges, not root, a read-only root, limits — and it still predicts."""
    model = model_images.function
    limits = SandboxLimits(memory_bytes=512 * 1024 * 1024, processes=64, cpus=0.5)
    async with memory_harness.serving(docker_url=docker_url, sandbox_limits=limits) as service:
        artifact = await _upload(service, model)
        await _deploy(service, "1", model, artifact)
        await service.operator.wait_ready("thermal", "1")
        await _predicts(service, "1", [1.0, 2.0], 60.0)

        def inspected() -> list[dict[str, Any]]:
            filters = {"label": ["modelbus.model=thermal", "modelbus.version=1"]}
            found = engine.client.containers.list(filters=filters)
            return [c.attrs for c in found if c.labels.get("modelbus.owner")]

        [attrs] = await anyio.to_thread.run_sync(inspected)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["NetworkMode"] == "none"
    engine_defaults = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "NET_RAW"}
    engine_defaults |= {"SETGID", "SETUID", "SETPCAP", "SYS_CHROOT", "MKNOD", "SETFCAP"}
    assert "ALL" in host["CapDrop"] or engine_defaults <= set(host["CapDrop"])  # podman: each
    assert not host.get("CapAdd")
    assert "no-new-privileges" in " ".join(host["SecurityOpt"])
    assert config["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == 512 * 1024 * 1024
    assert host["PidsLimit"] == 64
    assert host["NanoCpus"] == 500_000_000
    assert f"size={64 * 1024 * 1024}" in host["Tmpfs"]["/tmp"]
    [mount] = [m for m in attrs["Mounts"] if m["Destination"] == "/run/modelbus"]
    assert mount["RW"] is False
    assert all(m["Destination"] in ("/run/modelbus",) for m in attrs["Mounts"])
    assert attrs["NetworkSettings"].get("IPAddress") in ("", None)


def test_an_engine_on_plain_tcp_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    for url in ("tcp://127.0.0.1:2375", "http://10.0.0.1:2375", "https://engine:2376"):
        with pytest.raises(InvalidRequest, match="plain TCP"):
            DockerEngine(url)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not checked until connecting\n")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    assert DockerEngine("tcp://engine:2376").base_url == "tcp://engine:2376"  # TLS: accepted
    DockerEngine("unix:///run/podman/podman.sock")  # a local socket needs no TLS
