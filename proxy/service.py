"""The modelbus service: one proxy on the bus in front of the registry and the model backend.

Under its service URI ``S = <namespace>/<service path>`` it serves three slots, so a grant can
allow predicting without deploying:

    S/i.modelbus/slot/predict   predictions                       (proxy.predict)
    S/i.modelbus/slot/admin     Clipper's management surface      (proxy.admin)
    S/i.modelbus/slot/deploy    artifact uploads, model deploys   (proxy.deploy, proxy.uploads)

and announces its liveness under ``S/!meta/…`` (bus.heartbeat). On start it restarts the
replicas of every registered, unstopped version, so a restarted proxy serves what it served.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from bus import BusClient, Entity, Heartbeat, Verifier, decode_chain
from bus.errors import BusError, DecodeError, TransportError
from bus.rpc import ServeGate
from bus.transport import Transport
from proxy.admin import AdminOps
from proxy.backend import EmbeddedBackend
from proxy.containers import ContainerEngine, ContainerOps
from proxy.deploy import DeployOps
from proxy.metrics import ProxyMetrics, RequestRate, serve_metrics
from proxy.predict import PredictOps
from proxy.registry import Registry
from proxy.routing import VersionRouter, start_model
from proxy.runtime import ImageRuntime
from proxy.service_metrics import replica_summary, service_sources
from proxy.settings import ProxySettings
from proxy.slots import Slot
from proxy.uploads import UploadLimits, Uploads
from transports import open_transport

__all__ = [
    "ServiceInfo",
    "load_or_create_entity",
    "run_proxy",
    "running_proxy",
    "service_uris",
]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
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


def _load_proofs(settings: ProxySettings) -> list[Any]:
    proofs = []
    for path in settings.proof_paths:
        try:
            proofs.append(decode_chain(path.read_bytes()))
        except OSError as exc:
            raise DecodeError(f"cannot read proof {path}: {exc.strerror}") from exc
    return proofs


@asynccontextmanager
async def _bus(settings: ProxySettings) -> AsyncIterator[tuple[Transport, bool]]:
    """The service's transport. With ``embed_bus`` and no bus answering at a ``zmq://`` URL, it
    starts the ZeroMQ forwarder in this process and talks to it in-process (``inproc://``);
    the flag says whether it did."""
    if not (settings.embed_bus and settings.bus_url.startswith("zmq://")):
        yield open_transport(settings.bus_url), False
        return
    from transports.zeromq import Forwarder, ZmqTransport

    probe = ZmqTransport(settings.bus_url, connect_timeout_s=1.0)
    try:
        await probe.connect()
    except TransportError:
        async with Forwarder(settings.bus_url) as forwarder:
            logger.info("started the embedded ZeroMQ bus at %s", settings.bus_url)
            yield forwarder.local_transport(), True
        return
    finally:
        await probe.close()
    yield open_transport(settings.bus_url), False


@asynccontextmanager
async def running_proxy(settings: ProxySettings) -> AsyncIterator[ServiceInfo]:
    """Run the whole service while the context is open."""
    entity = load_or_create_entity(settings)
    namespace = settings.namespace or entity.key_text
    service_uri, interface_uri = service_uris(namespace, settings.service_path)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        transport, embedded = await stack.enter_async_context(_bus(settings))
        registry = await stack.enter_async_context(Registry.open(data_dir / "registry.sqlite3"))
        image_runtime, containers = _container_engine(settings, stack)
        backend = await stack.enter_async_context(
            EmbeddedBackend(data_dir / "replicas", image_runtime=image_runtime)
        )
        heartbeat = Heartbeat(
            service_uri,
            interval_s=settings.heartbeat_interval_s,
            plain_json=settings.bus_url.startswith(("mqtt://", "mqtts://")),
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
        gate = ServeGate()
        metrics = ProxyMetrics(service_sources(client, gate, backend, heartbeat))
        router = VersionRouter(registry, backend, task_group, on_switch=heartbeat.nudge)
        uploads = Uploads(
            registry,
            data_dir,
            UploadLimits(
                max_bytes=settings.max_upload_bytes,
                max_open_per_sender=settings.max_open_uploads_per_sender,
                idle_timeout_s=settings.upload_idle_timeout_s,
            ),
        )
        predict = PredictOps(registry, backend, router, timeout_s=settings.predict_timeout_s)
        status = functools.partial(
            _status, backend, predict, started, uploads, RequestRate(lambda: metrics.total)
        )
        heartbeat.status = status  # set before the first beat: heartbeat.run starts below
        admin = AdminOps(registry, backend, router, status)
        slots = {
            "predict": Slot("predict", predict.table(), on_answer=metrics.record),
            "admin": Slot(
                "admin", admin.table(), on_done=heartbeat.nudge, on_answer=metrics.record
            ),
            "deploy": Slot(
                "deploy",
                DeployOps(registry, uploads, backend, router).table()
                | ContainerOps(containers).table(),
                on_done=heartbeat.nudge,
                on_answer=metrics.record,
            ),
        }
        await _restore(registry, backend, router)
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
    max_concurrency: int,
    gate: ServeGate,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await client.serve(
        uri, slot.handle, max_concurrency=max_concurrency, gate=gate, task_status=task_status
    )


def _status(
    backend: EmbeddedBackend,
    predict: PredictOps,
    started: float,
    uploads: Uploads,
    request_rate: RequestRate,
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "uptime_s": round(time.monotonic() - started, 3),
        "models": [
            {
                "model": name,
                "version": version,
                "ready": backend.is_ready(name, version),
                "replicas": len(backend.replicas(name, version)),
                "queued": backend.stats(name, version).queued,
                **replica_summary(backend.replicas(name, version)),
            }
            for name, version in backend.versions()
        ],
        "served_default": predict.served_default,
        "requests_per_s": request_rate(),
        "uploads": uploads.in_progress(),
    }


def _container_engine(
    settings: ProxySettings, stack: AsyncExitStack
) -> tuple[ImageRuntime | None, ContainerEngine | None]:
    """The docker runtime for image versions and the engine behind ``container.*``, or none."""
    if settings.docker_url is None:
        return None, None
    from proxy.runtime_docker import DockerRuntime, ServiceContainers  # docker-py only if used

    runtime = DockerRuntime(settings.docker_url, settings.data_dir / "replicas")
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
