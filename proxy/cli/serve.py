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
from pathlib import Path
from typing import Any

import anyio
import click

from proxy.cli.redaction import redact_url
from proxy.cli.root import Settings, pass_settings, run_async
from proxy.service.health import keep_health_file
from proxy.service.keys import ServiceKeys, default_namespace_key_file, provision
from proxy.service.settings import DEFAULT_SERVICE_PATH, ProxySettings, default_data_dir
from proxy.service.startup import ServiceInfo, run_proxy

__all__ = ["serve"]

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
    "--unsafe-no-sandbox",
    is_flag=True,
    help="Where bubblewrap is missing, run deployed model code unconfined instead of refusing "
    "to start. Only when every deployer is trusted: their code can read this service's keys.",
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
    help="Where committed artifacts live, content-addressed: file:///shared/path (or an "
    "absolute path) on a filesystem several proxies share [default: DATA_DIR/artifacts].",
)
@pass_settings
def serve(
    settings: Settings,
    artifacts: str | None,
    health_file: Path | None,
    registry: str | None,
    data_dir: Path | None,
    namespace: str | None,
    service_path: str,
    no_embedded_bus: bool,
    max_concurrency: int,
    heartbeat_interval: float,
    docker_url: str | None,
    namespace_key: Path | None,
    unsafe_no_sandbox: bool,
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
        entity_path=entity_path,
        namespace=namespace,
        service_path=service_path,
        proof_paths=proof_paths,
        aliases=settings.aliases,
        max_concurrency=max_concurrency,
        heartbeat_interval_s=heartbeat_interval,
        unsafe_no_sandbox=unsafe_no_sandbox,
        **_engine(docker_url),
    )
    run_async(_serve, proxy_settings, keys, health_file)


def _engine(docker_url: str | None) -> dict[str, Any]:
    """The --docker-url setting, if given (else ProxySettings takes $DOCKER_HOST)."""
    return {"docker_url": docker_url} if docker_url else {}


async def _serve(
    settings: ProxySettings, keys: ServiceKeys | None, health_file: Path | None = None
) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        info: ServiceInfo = await task_group.start(run_proxy, settings, stop)
        if health_file is not None:
            interval_s = min(settings.heartbeat_interval_s, 10.0)
            await task_group.start(keep_health_file, health_file, interval_s, stop)
        gc.freeze()  # what start-up made lives as long as the process: keep it out of GC passes
        _announce(info, settings, keys)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                click.echo(
                    f"{signal.Signals(received).name}: draining requests in flight, then stopping",
                    err=True,
                )
                stop.set()
                break
    click.echo("stopped", err=True)


def _announce(info: ServiceInfo, settings: ProxySettings, keys: ServiceKeys | None) -> None:
    embedded = " (embedded ZeroMQ bus)" if info.embedded_bus else ""
    key_file = settings.entity_file
    granting = keys.namespace_key if keys is not None and keys.namespace_key else key_file
    click.echo(f"modelbus serving on {redact_url(info.bus_url)}{embedded}")
    click.echo(f"  namespace  {info.namespace}")
    click.echo(f"  service    {info.service_uri}")
    for slot in ("predict", "admin", "deploy"):
        click.echo(f"  slot       {info.slot(slot)}")
    click.echo(f"  entity     {info.entity_key} ({key_file})")
    if keys is not None and keys.namespace_key is not None:
        click.echo(f"  ns key     {keys.namespace_key} (the service does not hold it)")
    click.echo(f"  data       {info.data_dir}")
    if settings.registry is not None:
        click.echo(f"  registry   {redact_url(str(settings.registry))}")
    _key_advice(keys)
    click.echo("Give a user access (predict, manage and deploy):")
    click.echo(
        f"  modelbus grant --from {granting} --to USER.key "
        f"--uri '{info.service_uri}/*' --perms C*P --expires 30d -o user.grant"
    )
    click.echo("Ctrl-C stops the service.", err=True)


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
