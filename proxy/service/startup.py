"""The modelbus service: one proxy on the bus in front of the registry and the model backend.

Under its service URI ``S = <namespace>/<service path>`` it serves three slots, so a grant can
allow predicting without deploying:

    S/i.modelbus/slot/predict   predictions                       (proxy.service.operations.predict)
    S/i.modelbus/slot/admin     Clipper's management surface      (proxy.service.operations.admin)
    S/i.modelbus/slot/deploy    artifact uploads, model deploys   (proxy.service.operations.deploy,
    proxy.uploads.sessions)

and announces its liveness under ``S/!meta/…`` (bus.heartbeat). On start it restarts the
replicas of every registered, unstopped version, so a restarted proxy serves what it served.

Closures run sandboxed (:mod:`proxy.backend.sandbox`): the service refuses to start where
bubblewrap is
missing (SandboxUnavailable) unless ``unsafe_no_sandbox`` is set, and makes itself not dumpable.
Its data directory is made 0700 and its registry file 0600.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from bus import BusClient, Entity, Grant, Heartbeat, Verifier
from bus.errors import BusError
from bus.grants import load_chain
from bus.rpc import ServeGate
from proxy.backend import ContainerEngine, EmbeddedBackend
from proxy.backend.runtime import ImageRuntime, ProcessRuntime
from proxy.backend.sandbox import make_undumpable
from proxy.registry.registry import Registry
from proxy.service.operations.admin import AdminOps
from proxy.service.operations.containers import ContainerOps
from proxy.service.operations.deploy import DeployOps
from proxy.service.operations.predict import PredictOps
from proxy.service.settings import ProxySettings
from proxy.service.slots import Slot
from proxy.service.status import ServiceStatus
from proxy.service.versions import VersionRouter, start_model
from proxy.uploads.artifacts import ArtifactStore, artifact_root
from proxy.uploads.sessions import UploadLimits, Uploads
from transports import open_or_embed

__all__ = [
    "ServiceInfo",
    "load_or_create_entity",
    "run_proxy",
    "running_proxy",
    "service_uris",
]

logger = logging.getLogger(__name__)

UPLOAD_SWEEP_S = 60.0


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    bus_url: str
    namespace: str
    service_uri: str
    interface_uri: str
    entity_key: str
    data_dir: str
    embedded_bus: bool

    def slot(self, name: str) -> str:
        return f"{self.interface_uri}/slot/{name}"


def service_uris(namespace: str, service_path: str) -> tuple[str, str]:
    service = f"{namespace}/{service_path}"
    return service, f"{service}/i.modelbus"


def load_or_create_entity(settings: ProxySettings) -> Entity:
    path = settings.entity_file
    if path.exists():
        return Entity.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entity = Entity.generate(comment="modelbus proxy")
    entity.save(path)
    logger.info("created the proxy entity %s at %s", entity.key_text, path)
    return entity


def _load_proofs(settings: ProxySettings) -> list[tuple[Grant, ...]]:
    return [load_chain(path) for path in settings.proof_paths]


@asynccontextmanager
async def running_proxy(settings: ProxySettings) -> AsyncIterator[ServiceInfo]:
    """Run the whole service while the context is open."""
    entity = load_or_create_entity(settings)
    namespace = settings.namespace or entity.key_text
    service_uri, interface_uri = service_uris(namespace, settings.service_path)
    data_dir = settings.data_dir
    _private_files(data_dir, settings.registry_target)
    make_undumpable()
    runtime = ProcessRuntime(
        data_dir / "replicas",
        sandbox_limits=settings.sandbox_limits,
        unsafe_no_sandbox=settings.unsafe_no_sandbox,
    )
    if await runtime.sandbox() is None:
        logger.warning(
            "UNSAFE: bubblewrap is missing and --unsafe-no-sandbox is set: deployed model code "
            "runs unconfined, as this service's user, and can read its keys and registry"
        )
    async with AsyncExitStack() as stack:
        transport, embedded = await stack.enter_async_context(
            open_or_embed(settings.bus_url, embed=settings.embed_bus)
        )
        registry = await stack.enter_async_context(Registry.open(settings.registry_target))
        image_runtime, containers = _container_engine(settings, stack)
        backend = await stack.enter_async_context(
            EmbeddedBackend(data_dir / "replicas", runtime=runtime, image_runtime=image_runtime)
        )
        status = ServiceStatus(backend)
        heartbeat = Heartbeat(
            service_uri, interval_s=settings.heartbeat_interval_s, status=status.snapshot
        )
        client = await stack.enter_async_context(
            BusClient(
                transport,
                entity,
                proofs=_load_proofs(settings),
                verifier=Verifier(aliases=settings.aliases),
                will=heartbeat.will(),
            )
        )
        task_group = await stack.enter_async_context(anyio.create_task_group())
        router = VersionRouter(registry, backend, task_group, on_switch=heartbeat.nudge)
        artifacts = ArtifactStore(artifact_root(settings.artifacts or data_dir / "artifacts"))
        uploads = Uploads(
            registry,
            data_dir,
            UploadLimits(
                max_bytes=settings.max_upload_bytes,
                max_open_per_sender=settings.max_open_uploads_per_sender,
                idle_timeout_s=settings.upload_idle_timeout_s,
            ),
            artifacts,
        )
        predict = PredictOps(
            registry, backend, router, status, timeout_s=settings.predict_timeout_s
        )
        admin = AdminOps(registry, backend, router, status.snapshot)
        slots = {
            "predict": Slot("predict", predict.table()),
            "admin": Slot("admin", admin.table(), on_done=heartbeat.nudge),
            "deploy": Slot(
                "deploy",
                DeployOps(registry, uploads, backend, router).table()
                | ContainerOps(containers).table(),
                on_done=heartbeat.nudge,
            ),
        }
        await _restore(registry, backend, router)
        await task_group.start(registry.watch_current, router.follow)
        gate = ServeGate()
        for name, slot in slots.items():
            await task_group.start(
                _serve,
                client,
                f"{interface_uri}/slot/{name}",
                slot,
                settings.max_concurrency,
                gate,
            )
        await task_group.start(heartbeat.run, client)
        task_group.start_soon(_sweep_uploads, uploads)
        info = ServiceInfo(
            bus_url=settings.bus_url,
            namespace=namespace,
            service_uri=service_uri,
            interface_uri=interface_uri,
            entity_key=entity.key_text,
            data_dir=str(data_dir),
            embedded_bus=embedded,
        )
        try:
            yield info
        finally:
            if gate.in_flight:
                logger.info("draining %d requests in flight", gate.in_flight)
            left = await gate.drain(settings.drain_timeout_s)
            if left:
                logger.warning(
                    "%d requests still running after %.0f s; cancelling them",
                    left,
                    settings.drain_timeout_s,
                )
            task_group.cancel_scope.cancel()


async def run_proxy(
    settings: ProxySettings,
    stop: anyio.Event | None = None,
    *,
    task_status: TaskStatus[ServiceInfo] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until ``stop`` is set (then drain requests in flight, publish the
    death and return) or until cancelled; ``task_status.started`` gets its ServiceInfo."""
    async with running_proxy(settings) as info:
        task_status.started(info)
        if stop is None:
            await anyio.sleep_forever()
        else:
            await stop.wait()


async def _serve(
    client: BusClient,
    uri: str,
    slot: Slot,
    max_concurrency: int,
    gate: ServeGate,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await client.serve(
        uri, slot.handle, max_concurrency=max_concurrency, gate=gate, task_status=task_status
    )


def _private_files(data_dir: Path, registry: str | Path) -> None:
    """The data directory 0700 (nobody else may enter it) and the registry file 0600."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if not isinstance(registry, Path):
        return  # a PostgreSQL registry: the database server guards it
    os.close(os.open(registry, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(registry, 0o600)


def _container_engine(
    settings: ProxySettings, stack: AsyncExitStack
) -> tuple[ImageRuntime | None, ContainerEngine | None]:
    """The docker runtime for image versions and the engine behind ``container.*``, or none."""
    if settings.docker_url is None:
        return None, None
    from proxy.backend.docker import DockerRuntime  # docker-py only if used
    from proxy.backend.docker_engine import ServiceContainers

    runtime = DockerRuntime(
        settings.docker_url, settings.data_dir / "replicas", limits=settings.sandbox_limits
    )
    stack.callback(runtime.engine.close)  # once the backend has stopped its containers
    return runtime, ServiceContainers(runtime.engine, runtime.owner)


async def _restore(registry: Registry, backend: EmbeddedBackend, router: VersionRouter) -> None:
    for model in await registry.list_models(None):
        if model.is_stopped or model.desired_replicas == 0:
            continue
        try:
            await start_model(backend, model, model.desired_replicas)
        except BusError as error:
            logger.error("could not restart %s: %s", model.key, error.message)
            continue
        if model.is_current:
            router.switch(model.name, model.version)


async def _sweep_uploads(uploads: Uploads) -> None:
    while True:
        try:
            await uploads.expire_idle()
        except BusError as error:
            logger.warning("upload sweep failed: %s", error.message)
        await anyio.sleep(UPLOAD_SWEEP_S)
