"""The modelbus service: one proxy on the bus in front of the registry and the model backend.

Under its service URI ``S = <namespace>/<service path>`` it serves three slots, so a grant can
allow predicting without deploying:

    S/i.modelbus/slot/predict   predictions                       (proxy.service.operations.predict,
                                by meaning                        proxy.service.forecast)
    S/i.modelbus/slot/admin     Clipper's management surface      (proxy.service.operations.admin)
                                and schedules                     (….operations.schedules)
    S/i.modelbus/slot/deploy    artifact uploads, model deploys   (proxy.service.operations.deploy,
    proxy.uploads.sessions), fits (proxy.service.operations.fit)

and announces its liveness under ``S/!meta/…`` (bus.liveness.heartbeat; a named instance, under
``S/!meta/instances/<name>/…``). On start it restarts the
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
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from bus import BusClient, Entity, Grant, Heartbeat, Verifier
from bus.errors import BusError
from bus.grants import load_chain
from bus.liveness import InstanceView
from bus.responder import ServeGate
from proxy.backend import BackendSettings, ContainerEngine, EmbeddedBackend
from proxy.backend.runtime import ProcessRuntime
from proxy.backend.sandbox import make_undumpable
from proxy.metrics import ProxyMetrics, serve_metrics
from proxy.registry.registry import Registry
from proxy.service.datalock import lock_data_dir
from proxy.service.forecast.build import forecast_ops
from proxy.service.memory import return_big_buffers
from proxy.service.metrics import service_sources
from proxy.service.operations.admin import AdminOps
from proxy.service.operations.containers import ContainerOps
from proxy.service.operations.deploy import DeployOps
from proxy.service.operations.predict import PredictOps
from proxy.service.policies import build_policies
from proxy.service.settings import ProxySettings
from proxy.service.slots import Slot
from proxy.service.status import ServiceStatus
from proxy.service.versions import VersionRouter, start_model
from proxy.service.wiring import fit_ops, schedule_ops
from proxy.uploads.artifacts import ArtifactStore, artifact_root
from proxy.uploads.collect import collect_artifacts
from proxy.uploads.sessions import UploadLimits, Uploads
from transports import open_or_embed

if TYPE_CHECKING:  # docker-py only if an engine is used
    from proxy.backend.docker import DockerRuntime

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
    metrics_url: str | None = None

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
    """Run the whole service while the context is open; the data directory is locked for it
    (:mod:`proxy.service.datalock`: a second service on it is refused with Conflict)."""
    return_big_buffers()
    with lock_data_dir(settings.data_dir):
        async with _running_proxy(settings) as info:
            yield info


@asynccontextmanager
async def _running_proxy(settings: ProxySettings) -> AsyncIterator[ServiceInfo]:
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
            EmbeddedBackend(
                data_dir / "replicas",
                runtime=runtime,
                image_runtime=image_runtime,
                settings=BackendSettings(max_replicas_total=settings.max_replicas_total),
            )
        )
        artifacts = ArtifactStore(artifact_root(settings.artifacts or data_dir / "artifacts"))
        uploads = Uploads(
            registry,
            data_dir,
            UploadLimits(
                max_bytes=settings.max_upload_bytes,
                max_open_per_sender=settings.max_open_uploads_per_sender,
                idle_timeout_s=settings.upload_idle_timeout_s,
                reserve_bytes=settings.disk_reserve_bytes,
            ),
            artifacts,
        )
        metrics = ProxyMetrics()
        verifier = Verifier(aliases=settings.aliases)
        status = ServiceStatus(
            backend, uploads, metrics, rejections=verifier.rejected, instance=settings.instance
        )
        plain_json = settings.bus_url.startswith(("mqtt://", "mqtts://"))
        siblings = InstanceView(service_uri) if settings.instance and plain_json else None
        heartbeat = Heartbeat(
            service_uri,
            interval_s=settings.heartbeat_interval_s,
            status=status.snapshot,
            plain_json=plain_json,
            instance=settings.instance,
            instances=siblings.snapshot if siblings else None,
        )
        client = await stack.enter_async_context(
            BusClient(
                transport,
                entity,
                proofs=_load_proofs(settings),
                verifier=verifier,
                will=heartbeat.will(),
            )
        )
        task_group = await stack.enter_async_context(anyio.create_task_group())
        gate = ServeGate()
        metrics.watch(service_sources(client, gate, backend, heartbeat))
        router = VersionRouter(registry, backend, task_group, on_switch=heartbeat.nudge)
        policies = build_policies(
            registry,
            backend,
            router,
            client,
            service_uri,
            shadow_timeout_s=settings.predict_timeout_s,
        )
        predict = PredictOps(
            registry,
            backend,
            router,
            status,
            timeout_s=settings.predict_timeout_s,
            max_inputs_per_sender=settings.max_inputs_per_sender,
            routed=policies.routed,
        )
        admin = AdminOps(
            registry,
            backend,
            router,
            status.snapshot,
            max_applications=settings.max_applications,
            max_waiting_ready=settings.max_waiting_ready,
        )
        fits = fit_ops(
            settings, registry, uploads, backend, router, client, runtime, task_group, image_runtime
        )
        forecasts = await forecast_ops(settings, registry, backend, verifier)
        schedules = schedule_ops(settings, registry, backend, router, client, forecasts)
        slots = {
            "predict": Slot(
                "predict",
                predict.table() | forecasts.table() | policies.ops.predict_table(),
                on_answer=metrics.record,
            ),
            "admin": Slot(
                "admin",
                admin.table() | policies.ops.admin_table() | schedules.table(),
                on_done=heartbeat.nudge,
                on_answer=metrics.record,
            ),
            "deploy": Slot(
                "deploy",
                DeployOps(registry, uploads, backend, router).table()
                | ContainerOps(containers).table()
                | fits.table(),
                on_done=heartbeat.nudge,
                on_answer=metrics.record,
            ),
        }
        await _restore(registry, backend, router)
        await fits.jobs.interrupt_leftovers()
        await task_group.start(registry.watch_current, router.follow)
        for name, slot in slots.items():
            await task_group.start(
                _serve,
                client,
                f"{interface_uri}/slot/{name}",
                slot,
                settings,
                gate,
            )
        if siblings is not None:  # the instance list of the plain JSON status
            await task_group.start(siblings.run, client)
        await task_group.start(heartbeat.run, client)
        await task_group.start(policies.background.run)
        await task_group.start(schedules.scheduler.run)
        task_group.start_soon(_sweep_uploads, uploads, registry)
        metrics_url = None
        if settings.metrics_port is not None:
            port = await task_group.start(
                serve_metrics, metrics.registry, settings.metrics_host, settings.metrics_port
            )
            metrics_url = f"http://{settings.metrics_host}:{port}/metrics"
        info = ServiceInfo(
            bus_url=settings.bus_url,
            namespace=namespace,
            service_uri=service_uri,
            interface_uri=interface_uri,
            entity_key=entity.key_text,
            data_dir=str(data_dir),
            embedded_bus=embedded,
            metrics_url=metrics_url,
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
    settings: ProxySettings,
    gate: ServeGate,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await client.serve(
        uri,
        slot.handle,
        max_concurrency=settings.max_concurrency,
        max_per_sender=settings.max_in_flight_per_sender,
        gate=gate,
        task_status=task_status,
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
) -> tuple[DockerRuntime | None, ContainerEngine | None]:
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


async def _sweep_uploads(uploads: Uploads, registry: Registry) -> None:
    """Every minute: abort idle uploads, collect artifacts no version refers to."""
    while True:
        try:
            await uploads.expire_idle()
            models = await registry.list_models(None)
            referenced = {sha for model in models for sha in model.artifact_digests}
            await anyio.to_thread.run_sync(collect_artifacts, uploads.artifact_dir, referenced)
        except BusError as error:
            logger.warning("upload sweep failed: %s", error.message)
        except OSError as error:
            logger.warning("artifact collection failed: %s", error)
        await anyio.sleep(UPLOAD_SWEEP_S)
