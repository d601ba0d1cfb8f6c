"""``modelbus dashboard PATTERN``: the live fleet dashboard in a browser (proxy.dashboard); and
:func:`host_dashboard`, with which ``modelbus serve --dashboard-port`` hosts it on loopback.
The web stack is imported only when a dashboard runs."""

from __future__ import annotations

import functools
import signal

import anyio
import click
from anyio.abc import TaskStatus

from bus import BusClient, Verifier, load_chain
from proxy.cli.root import CliError, Settings, pass_settings, run_async
from proxy.service import ServiceInfo, load_or_create_entity
from proxy.service.settings import ProxySettings
from transports import open_transport

__all__ = ["dashboard", "host_dashboard"]

DEFAULT_PORT = 8470


@click.command()
@click.argument("pattern")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Port to bind (0: any).")
@click.option(
    "--token",
    envvar="MODELBUS_DASHBOARD_TOKEN",
    default=None,
    help="Required from every viewer (?token=…); mandatory when --host is not loopback "
    "[env: MODELBUS_DASHBOARD_TOKEN].",
)
@pass_settings
def dashboard(settings: Settings, pattern: str, host: str, port: int, token: str | None) -> None:
    """Serve a live dashboard of the services under PATTERN ('ns/*'), from their heartbeats."""
    from proxy.dashboard import is_loopback  # the web stack (aiohttp) only when asked

    if not is_loopback(host) and not token:
        raise CliError(f"--host {host} is not a loopback address: give a --token too")
    canonical = settings.canonical(pattern)
    run_async(functools.partial(_run, settings, canonical, host, port, token))


async def _run(settings: Settings, pattern: str, host: str, port: int, token: str | None) -> None:
    from proxy.dashboard import Dashboard, Fleet, FleetMonitor

    def connect() -> BusClient:
        return BusClient(
            open_transport(settings.bus_url),
            settings.entity(),
            proofs=settings.proofs(),
            verifier=settings.verifier(),
        )

    settings.entity()  # a missing entity is a usage error now, not a retried link failure
    board = Dashboard(FleetMonitor(connect, pattern, Fleet()), token=token)
    async with anyio.create_task_group() as task_group:
        bound = await task_group.start(board.run, host, port)
        shown = f"[{host}]" if ":" in host else host
        suffix = "/?token=…" if token else "/"
        click.echo(f"modelbus dashboard: {pattern} at http://{shown}:{bound}{suffix}")
        click.echo("press Ctrl-C to stop", err=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                task_group.cancel_scope.cancel()
                break


async def host_dashboard(
    settings: ProxySettings,
    info: ServiceInfo,
    port: int,
    *,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard of the service's namespace (``NS/*``) on loopback, as the service's
    own entity and grants, until cancelled; ``started`` gets its address."""
    from proxy.dashboard import Dashboard, Fleet, FleetMonitor

    entity = load_or_create_entity(settings)
    proofs = [load_chain(path) for path in settings.proof_paths]

    def connect() -> BusClient:
        verifier = Verifier(aliases=settings.aliases)
        return BusClient(open_transport(settings.bus_url), entity, proofs=proofs, verifier=verifier)

    monitor = FleetMonitor(
        connect,
        f"{info.namespace}/*",
        Fleet(),
        probe=f"{info.service_uri}/!meta/dashboard-probe",  # a place its own grants cover
    )
    board = Dashboard(monitor)
    async with anyio.create_task_group() as task_group:
        bound = await task_group.start(board.run, "127.0.0.1", port)
        task_status.started(f"http://127.0.0.1:{bound}/")
