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

Several instances (``settings.instance`` set) serve one service URI on one MQTT broker: each
subscribes to the slots in the service's share group (:func:`bus.responder.service_share_group`),
so each request reaches one of them; ZeroMQ, one machine's bus, refuses to start that way.
Every instance serves ``predict``; ``admin`` and ``deploy`` are served by the one instance that
holds the registry's lead (:meth:`proxy.registry.Registry.lead`), so that their retries meet the
replies and requests in flight that instance keeps (PROTOCOL.md §15.4).

Closures run sandboxed (:mod:`proxy.backend.sandbox`): the service refuses to start where
bubblewrap is
missing (SandboxUnavailable) unless ``unsafe_no_sandbox`` is set, and makes itself not dumpable.
Its data directory is made 0700 and its registry file 0600.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from bus import BusClient, Entity, Grant, Heartbeat, Verifier
from bus.errors import BusError, Unsupported
from bus.grants import load_chain
from bus.liveness import InstanceView
from bus.responder import ServeGate, service_share_group
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
from proxy.service.versions import VersionRouter
from proxy.service.wiring import fit_ops, schedule_ops
from proxy.uploads.collect import DEFAULT_UNUSED_FOR_S
from proxy.uploads.sessions import UploadLimits, Uploads
from proxy.uploads.store import open_store
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
_Serving = Callable[..., Coroutine[Any, Any, None]]  # one slot's _serve, for a task group


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
    _check_instance_bus(settings)
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
        artifacts = open_store(settings.artifacts or data_dir / "artifacts", data_dir / "cache")
        await artifacts.check()
        backend = await stack.enter_async_context(
            EmbeddedBackend(
                data_dir / "replicas",
                runtime=runtime,
                image_runtime=image_runtime,
                settings=BackendSettings(max_replicas_total=settings.max_replicas_total),
            )
        )
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
            shared=settings.artifacts is not None,
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
        router = VersionRouter(
            registry,
            backend,
            task_group,
            on_switch=heartbeat.nudge,
            fetch_artifact=artifacts.local_at,
            fetch_state=artifacts.local,
        )
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
        await _restore(registry, router)
        if settings.instance is None:  # one of several: the leader does, when it takes the lead
            await fits.jobs.interrupt_leftovers()
        await task_group.start(registry.watch_current, router.follow)
        share_group = None
        if settings.instance is not None:
            share_group = service_share_group(verifier.canonical(service_uri))
        led: list[_Serving] = []  # admin and deploy, when one of several instances
        leadership = _Leadership()
        for name, slot in slots.items():
            uri = f"{interface_uri}/slot/{name}"
            serve = functools.partial(_serve, client, uri, slot, settings, gate, share_group)
            if share_group is None or name == "predict":
                await task_group.start(serve)
            else:
                led.append(serve)
        if led:
            lead = f"{verifier.canonical(service_uri)} slots admin deploy"
            sweep = functools.partial(_sweep_uploads, uploads, registry)
            serve_led = functools.partial(
                _serve_all, led, fits.jobs.interrupt_leftovers, sweep, leadership
            )
            task_group.start_soon(_wait_to_lead, registry, lead, serve_led, leadership)
        if siblings is not None:  # the instance list of the plain JSON status
            await task_group.start(siblings.run, client)
        await task_group.start(heartbeat.run, client)
        await task_group.start(policies.background.run)
        await task_group.start(schedules.scheduler.run)
        if not led:  # one of several: the leader sweeps (above), not each instance
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
            if not leadership.leading:  # a stopping instance never takes the lead
                leadership.waiting.cancel()
            if gate.in_flight:
                logger.info("draining %d requests in flight", gate.in_flight)
            # One of several instances withdraws from the share group: the others take the new
            # requests while it finishes its own (PROTOCOL.md §15.4); one alone refuses them.
            left = await gate.drain(settings.drain_timeout_s, withdraw=share_group is not None)
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
    share_group: str | None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await client.serve(
        uri,
        slot.handle,
        max_concurrency=settings.max_concurrency,
        max_per_sender=settings.max_in_flight_per_sender,
        gate=gate,
        share_group=share_group,
        task_status=task_status,
    )


@dataclass
class _Leadership:
    """Whether this instance leads, and the wait for the lead (cancelled when it stops)."""

    leading: bool = False
    waiting: anyio.CancelScope = field(default_factory=anyio.CancelScope)


async def _wait_to_lead(
    registry: Registry, name: str, run: Callable[[], Awaitable[None]], leadership: _Leadership
) -> None:
    with leadership.waiting:
        await registry.lead(name, run)


async def _serve_all(
    serving: list[_Serving],
    on_lead: Callable[[], Awaitable[object]],
    sweep: Callable[[], Coroutine[Any, Any, None]],
    leadership: _Leadership,
) -> None:
    """Serve several slots until cancelled (the leader's slots), after ``on_lead``, and run
    ``sweep`` (idle uploads, unused artifacts) beside them: fit jobs are run by the leader, so
    the fits a dead leader left are marked interrupted by the next one, never by an instance
    starting beside a live leader; one sweeper lists the shared store, not every instance."""
    leadership.leading = True
    await on_lead()
    async with anyio.create_task_group() as group:
        group.start_soon(sweep)
        for serve in serving:
            await group.start(serve)


def _check_instance_bus(settings: ProxySettings) -> None:
    """Refuse to run one of several instances on ZeroMQ, which cannot spread requests, or
    without a shared artifact store; warn when its registry is a SQLite file, which no other
    instance shares."""
    if settings.instance is not None and not isinstance(settings.registry_target, str):
        logger.warning(
            "instance %s keeps its registry in a SQLite file of its own: deploys and switches "
            "through it do not reach other instances (use a postgresql:// --registry)",
            settings.instance,
        )
    if settings.instance is not None and settings.bus_url.startswith("zmq://"):
        raise Unsupported(
            f"instance {settings.instance!r}: ZeroMQ is one machine's bus; several instances "
            "need MQTT (--bus mqtt://host:1883 with a postgresql:// --registry and a shared "
            "--artifacts store), or run one proxy without --instance",
            url=settings.bus_url,
            instance=settings.instance,
        )
    if settings.instance is not None and settings.artifacts is None:
        raise Unsupported(
            f"instance {settings.instance!r}: several instances need one shared artifact store "
            "(--artifacts s3://bucket/prefix or file:///shared/path), so that any of them starts "
            "any version and continues any upload",
            instance=settings.instance,
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


async def _restore(registry: Registry, router: VersionRouter) -> None:
    for model in await registry.list_models(None):
        if model.is_stopped or model.desired_replicas == 0:
            continue
        try:
            await router.start(model, model.desired_replicas)
        except BusError as error:
            logger.error("could not restart %s: %s", model.key, error.message)
            continue
        except OSError as error:  # its artifact unreadable: the service starts without it
            logger.error("could not restart %s: %s", model.key, error)
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
            await uploads.collect(referenced, DEFAULT_UNUSED_FOR_S)
        except BusError as error:
            logger.warning("upload sweep failed: %s", error.message)
        except OSError as error:
            logger.warning("artifact collection failed: %s", error)
        await anyio.sleep(UPLOAD_SWEEP_S)
