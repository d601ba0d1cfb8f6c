"""``modelbus serve``: run the service until Ctrl-C or SIGTERM.

Keys: with no ``--entity``, ``--namespace`` or ``--proof``, the service runs with a service key
of its own, granted what serving needs by a namespace key kept outside the data directory
(:mod:`proxy.service.keys`; the banner says where, and that it belongs offline). With
``--entity`` the operator's keys are used as before: that entity is the namespace owner unless
``--namespace`` (and ``--proof``) say otherwise.

Files are created private (umask 077). The bus URL's password is never printed.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import click
from anyio.abc import TaskStatus

from bus.errors import BusError
from proxy.backend.sandbox import SandboxLimits
from proxy.cli.root import Settings, pass_settings, redact_url, run_async
from proxy.service.health import check_health_file, keep_health_file
from proxy.service.keys import ServiceKeys, default_namespace_key_file, provision
from proxy.service.settings import DEFAULT_SERVICE_PATH, ProxySettings, default_data_dir
from proxy.service.startup import ServiceInfo, run_proxy

__all__ = ["health", "serve"]

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Registry, artifacts, spool and logs [default: $MODELBUS_DATA or "
    "~/.local/share/modelbus].",
)
@click.option(
    "--namespace",
    default=None,
    help="Namespace key (or alias) to serve in [default: the proxy's own key].",
)
@click.option(
    "--service-path",
    default=DEFAULT_SERVICE_PATH,
    show_default=True,
    help="Where under the namespace the service lives.",
)
@click.option(
    "--no-embedded-bus",
    is_flag=True,
    help="Never start the ZeroMQ forwarder in-process; fail if no bus answers.",
)
@click.option(
    "--max-concurrency",
    default=64,
    show_default=True,
    help="Requests handled at once per slot; more are answered 'overloaded'.",
)
@click.option(
    "--heartbeat-interval",
    default=10.0,
    show_default=True,
    help="Seconds between liveness announcements.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus /metrics on this loopback port (0: any free port) [default: off].",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address /metrics binds to (a pod's 0.0.0.0 for Prometheus to scrape it).",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also host the live dashboard of the namespace on this loopback port [default: off].",
)
@click.option(
    "--docker-url",
    default=None,
    help="Container engine API for image deploys: Docker, or Podman's `podman system service` "
    "(e.g. unix:///run/podman/podman.sock) [default: $DOCKER_HOST; none: closures only].",
)
@click.option(
    "--namespace-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The namespace key that grants this service its rights, created on first start and "
    "kept outside the data directory (keep it offline) [default: $MODELBUS_NAMESPACE_KEY or "
    "~/.config/modelbus/namespace.key]. Not used with --entity.",
)
@click.option(
    "--sandbox-share",
    "shared_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A host directory every sandboxed model sees read-only at the same path (reference "
    "data); repeatable [default: none].",
)
@click.option(
    "--unsafe-no-sandbox",
    is_flag=True,
    help="Where bubblewrap is missing, run deployed model code unconfined instead of refusing "
    "to start. Only when every deployer is trusted: their code can read this service's keys.",
)
@click.option(
    "--brick",
    "brick_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A Brick model (Turtle) of the building: the places forecasts compose and fall back on.",
)
@click.option(
    "--registry",
    default=None,
    envvar="MODELBUS_REGISTRY",
    help="The registry: a postgresql://user@host/db URL, shared by several proxies, or a SQLite "
    "file [default: $MODELBUS_REGISTRY or DATA_DIR/registry.sqlite3].",
)
@click.option(
    "--health-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the time here once started and every heartbeat interval after, for probes "
    "(`modelbus health --file`); removed on stop.",
)
@click.option(
    "--artifacts",
    default=None,
    envvar="MODELBUS_ARTIFACTS",
    help="Where committed artifacts live, content-addressed, shared by several proxies: "
    "file:///shared/path (or an absolute path) on a filesystem they all mount, or "
    "s3://bucket/prefix on an S3-compatible server (endpoint and keys from AWS_ENDPOINT_URL, "
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or boto3's config files). Uploads keep their "
    "chunks there too, so any proxy continues them [default: DATA_DIR/artifacts].",
)
@click.option(
    "--instance",
    default=None,
    envvar="MODELBUS_INSTANCE",
    help="This proxy's name among several serving one service on one MQTT broker, with a "
    "postgresql:// registry and a shared --artifacts store [default: the only proxy].",
)
@pass_settings
def serve(
    settings: Settings,
    instance: str | None,
    artifacts: str | None,
    health_file: Path | None,
    registry: str | None,
    data_dir: Path | None,
    namespace: str | None,
    service_path: str,
    no_embedded_bus: bool,
    max_concurrency: int,
    heartbeat_interval: float,
    metrics_port: int | None,
    metrics_host: str,
    dashboard_port: int | None,
    docker_url: str | None,
    namespace_key: Path | None,
    shared_dirs: tuple[Path, ...],
    unsafe_no_sandbox: bool,
    brick_path: Path | None,
) -> None:
    """Run the modelbus service: bus proxy, registry, model backend, heartbeats.

    With no options everything runs on this machine: the ZeroMQ bus embedded (if none answers
    at --bus), the registry in SQLite under the data directory, models in worker processes.
    """
    os.umask(0o077)  # registry, artifacts, spool, logs: readable by this user only
    if namespace is not None and namespace in settings.aliases:
        namespace = settings.aliases[namespace]
    data_dir = data_dir or default_data_dir()
    entity_path, proof_paths = settings.entity_path, settings.proof_paths
    keys: ServiceKeys | None = None
    if entity_path is None and namespace is None and not proof_paths:
        keys = provision(data_dir, service_path, namespace_key or default_namespace_key_file())
        entity_path, proof_paths = keys.entity_path, keys.proof_paths
        namespace = None if keys.legacy else keys.namespace
    proxy_settings = ProxySettings(
        bus_url=settings.bus_url,
        embed_bus=not no_embedded_bus,
        data_dir=data_dir,
        registry=registry,
        artifacts=artifacts,
        instance=instance,
        entity_path=entity_path,
        namespace=namespace,
        service_path=service_path,
        proof_paths=proof_paths,
        aliases=settings.aliases,
        max_concurrency=max_concurrency,
        heartbeat_interval_s=heartbeat_interval,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        unsafe_no_sandbox=unsafe_no_sandbox,
        sandbox_limits=SandboxLimits(shared_dirs=tuple(path.resolve() for path in shared_dirs)),
        brick_path=brick_path,
        **_engine(docker_url),
    )
    run_async(_serve, proxy_settings, keys, dashboard_port, health_file)


def _engine(docker_url: str | None) -> dict[str, Any]:
    """The --docker-url setting, if given (else ProxySettings takes $DOCKER_HOST)."""
    return {"docker_url": docker_url} if docker_url else {}


async def _serve(
    settings: ProxySettings,
    keys: ServiceKeys | None,
    dashboard_port: int | None = None,
    health_file: Path | None = None,
) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        info: ServiceInfo = await task_group.start(run_proxy, settings, stop)
        if health_file is not None:
            interval_s = min(settings.heartbeat_interval_s, 10.0)
            await task_group.start(keep_health_file, health_file, interval_s, stop)
        gc.freeze()  # what start-up made lives as long as the process: keep it out of GC passes
        board = anyio.CancelScope()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            _announce(info, settings, keys)  # once Ctrl-C is handled: the banner says it stops
            if dashboard_port is not None:
                try:
                    address = await task_group.start(
                        _host_dashboard, board, settings, info, dashboard_port
                    )
                except BusError as error:  # the service serves on without its dashboard
                    click.echo(f"warning: no dashboard: {error.message}", err=True)
                else:
                    click.echo(f"  dashboard  {address}")
            async for received in signals:
                click.echo(
                    f"{signal.Signals(received).name}: draining requests in flight, then stopping",
                    err=True,
                )
                stop.set()
                board.cancel()
                break
    click.echo("stopped", err=True)


async def _host_dashboard(
    scope: anyio.CancelScope,
    settings: ProxySettings,
    info: ServiceInfo,
    port: int,
    *,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    from proxy.cli.dashboard import host_dashboard  # the web stack only when asked

    with scope:
        try:
            await host_dashboard(settings, info, port, task_status=task_status)
        except BusError as error:  # the service serves on without its dashboard
            click.echo(f"warning: the dashboard stopped: {error.message}", err=True)


def _announce(info: ServiceInfo, settings: ProxySettings, keys: ServiceKeys | None) -> None:
    embedded = " (embedded ZeroMQ bus)" if info.embedded_bus else ""
    key_file = settings.entity_file
    granting = keys.namespace_key if keys is not None and keys.namespace_key else key_file
    click.echo(f"modelbus serving on {redact_url(info.bus_url)}{embedded}")
    click.echo(f"  namespace  {info.namespace}")
    click.echo(f"  service    {info.service_uri}")
    for slot in ("predict", "admin", "deploy"):
        click.echo(f"  slot       {info.slot(slot)}")
    if keys is None:
        source = "--entity/MODELBUS_ENTITY" if settings.entity_path else "the data directory's key"
    elif keys.legacy:
        source = "the data directory's key, which is also the namespace root"
    else:
        source = "the service's own key, granted by the namespace key"
    click.echo(f"  entity     {info.entity_key} ({key_file}: {source})")
    if keys is not None and keys.namespace_key is not None:
        click.echo(f"  ns key     {keys.namespace_key} (the service does not hold it)")
    click.echo(f"  data       {info.data_dir}")
    if info.metrics_url:
        click.echo(f"  metrics    {info.metrics_url}")
    click.echo(f"  key        {info.entity_key} (clients pin replies and liveness to it)")
    if settings.registry is not None:
        click.echo(f"  registry   {redact_url(str(settings.registry))}")
    _key_advice(keys)
    click.echo("Give a user access, one grant per right (never on the whole service: that would")
    click.echo("let them answer other users' requests and declare the service dead):")
    # Serving under another's namespace, the service re-delegates the grant it holds (made with
    # --ttl 1 or more): the line names that chain (the first, if it holds several).
    delegated = keys is None and settings.namespace is not None and settings.proof_paths
    proof = f" --proof {settings.proof_paths[0]}" if delegated else ""
    for right, pattern, perms in _user_grants(info):
        click.echo(
            f"  modelbus grant --from {granting}{proof} --to USER.key "
            f"--uri '{pattern}' --perms {perms} --expires 30d -o user-{right}.grant"
        )
    click.echo("Ctrl-C stops the service.", err=True)


def _user_grants(info: ServiceInfo) -> list[tuple[str, str, str]]:
    """The narrow grants of PROTOCOL.md §17.1: publish on a slot each; consume the liveness."""
    grants = [(slot, info.slot(slot), "P") for slot in ("predict", "admin", "deploy")]
    return [*grants, ("liveness", f"{info.service_uri}/!meta/*", "C*")]


def _key_advice(keys: ServiceKeys | None) -> None:
    if keys is None:
        return
    if keys.legacy:
        click.echo(
            f"warning: {keys.entity_path} is the namespace root key and the running service "
            "holds it; a new data directory keeps them apart (see 'modelbus serve --help')",
            err=True,
        )
    elif keys.created_namespace_key:
        click.echo(
            f"Created the namespace key {keys.namespace_key}: it signs every grant here. Copy it "
            "somewhere safe and keep it OFFLINE; the service needs it only to renew its own "
            "grants (yearly).",
            err=True,
        )


@click.command()
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file `modelbus serve --health-file` keeps.",
)
@click.option(
    "--max-age",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds since the service last wrote it, past which it is not alive.",
)
def health(path: Path, max_age: float) -> None:
    """Exit 0 if the service keeping FILE finished starting and wrote it within MAX-AGE s."""
    problem = check_health_file(path, max_age)
    if problem is not None:
        click.echo(f"unhealthy: {problem}", err=True)
        sys.exit(1)
    click.echo("healthy")
