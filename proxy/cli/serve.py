"""``modelbus serve``: run the service until Ctrl-C or SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path
from typing import Any

import anyio
import click

from proxy.cli.root import Settings, pass_settings, run_async
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
    "--brick",
    "brick_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A Brick model (Turtle) of the building: the places forecasts compose and fall back on.",
)
@pass_settings
def serve(
    settings: Settings,
    data_dir: Path | None,
    namespace: str | None,
    service_path: str,
    no_embedded_bus: bool,
    max_concurrency: int,
    heartbeat_interval: float,
    docker_url: str | None,
    brick_path: Path | None,
) -> None:
    """Run the modelbus service: bus proxy, registry, model backend, heartbeats.

    With no options everything runs on this machine: the ZeroMQ bus embedded (if none answers
    at --bus), the registry in SQLite under the data directory, models in worker processes.
    """
    if namespace is not None and namespace in settings.aliases:
        namespace = settings.aliases[namespace]
    proxy_settings = ProxySettings(
        bus_url=settings.bus_url,
        embed_bus=not no_embedded_bus,
        data_dir=data_dir or default_data_dir(),
        entity_path=settings.entity_path,
        namespace=namespace,
        service_path=service_path,
        proof_paths=settings.proof_paths,
        aliases=settings.aliases,
        max_concurrency=max_concurrency,
        heartbeat_interval_s=heartbeat_interval,
        brick_path=brick_path,
        **_engine(docker_url),
    )
    run_async(_serve, proxy_settings)


def _engine(docker_url: str | None) -> dict[str, Any]:
    """The --docker-url setting, if given (else ProxySettings takes $DOCKER_HOST)."""
    return {"docker_url": docker_url} if docker_url else {}


async def _serve(settings: ProxySettings) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        info: ServiceInfo = await task_group.start(run_proxy, settings, stop)
        gc.freeze()  # what start-up made lives as long as the process: keep it out of GC passes
        _announce(info, settings)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                click.echo(
                    f"{signal.Signals(received).name}: draining requests in flight, then stopping",
                    err=True,
                )
                stop.set()
                break
    click.echo("stopped", err=True)


def _announce(info: ServiceInfo, settings: ProxySettings) -> None:
    embedded = " (embedded ZeroMQ bus)" if info.embedded_bus else ""
    key_file = settings.entity_file
    click.echo(f"modelbus serving on {info.bus_url}{embedded}")
    click.echo(f"  namespace  {info.namespace}")
    click.echo(f"  service    {info.service_uri}")
    for slot in ("predict", "admin", "deploy"):
        click.echo(f"  slot       {info.slot(slot)}")
    click.echo(f"  entity     {info.entity_key} ({key_file})")
    click.echo(f"  data       {info.data_dir}")
    click.echo("Give a user access (predict, manage and deploy):")
    click.echo(
        f"  modelbus grant --from {key_file} --to USER.key "
        f"--uri '{info.service_uri}/*' --perms C*P --expires 30d -o user.grant"
    )
    click.echo("Ctrl-C stops the service.", err=True)
