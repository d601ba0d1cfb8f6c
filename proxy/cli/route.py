"""``modelbus route`` and ``modelbus policy``: an application's routing policies on a service.

    modelbus route set APP CONTRACT --service NS     (CONTRACT: JSON, or @FILE)
    modelbus route show APP --service NS
    modelbus route delete APP --service NS
    modelbus route feed-metric APP VERSION METRIC VALUE --service NS
    modelbus route expire|restore APP VERSION --service NS
    modelbus route log APP [--key KEY] [--limit 100] --service NS
    modelbus policy set APP SELECTION --service NS   (SELECTION: JSON, or @FILE)
    modelbus policy show APP [--user U] --service NS
    modelbus policy delete APP --service NS

The shapes are ``bus/PROTOCOL.md`` §17.9's; the calls are :mod:`container_manager.routes`'.
``route show`` prints a table of the releases (status, share of requests now, phase-in,
answers, why not serving); the others print the service's reply as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from bus import BusClient
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from proxy.cli.root import CliError, Settings, pass_settings, run_async
from transports import open_transport

__all__ = ["policy", "route"]

_SERVICE = click.option(
    "--service",
    "service",
    envvar="MODELBUS_SERVICE",
    required=True,
    metavar="NS[/PATH]",
    help=f"The service: its namespace (key or alias), with PATH {DEFAULT_SERVICE_PATH} by "
    "default.  [env: MODELBUS_SERVICE]",
)


def _document(text: str) -> Any:
    """JSON given inline, or ``@FILE``."""
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        return json.loads(raw)
    except (OSError, ValueError) as exc:
        raise CliError(f"not JSON (or @FILE of JSON): {exc}") from None


def _call(settings: Settings, service: str, call: Callable[[ServiceClient], Awaitable[Any]]) -> Any:
    canonical = settings.canonical(service.strip("/"))
    service_uri = canonical if "/" in canonical else f"{canonical}/{DEFAULT_SERVICE_PATH}"

    async def run() -> Any:
        client = BusClient(
            open_transport(settings.bus_url),
            settings.entity(),
            proofs=settings.proofs(),
            verifier=settings.verifier(),
        )
        async with client as bus:
            return await call(ServiceClient(bus, service_uri))

    return run_async(run)


def _echo(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=repr))


def releases_table(shown: dict[str, Any]) -> list[str]:
    """``route show``'s lines: one per release, then the background counters."""
    lines = [
        f"{'version':<16} {'status':<8} {'share':>7} {'phase':>6} {'answers':>8}  reason",
    ]
    for row in shown["releases"]:
        lines.append(
            f"{row['version']:<16} {row['status']:<8} {row['share'] * 100:>6.1f}% "
            f"{row['phase'] * 100:>5.0f}% {row['served']:>8}  {row['reason']}"
        )
        for name, metric in sorted(row["metrics"].items()):
            lines.append(f"{'':<16}   {name} = {metric['value']:g} ({metric['samples']} fed)")
    counters = ", ".join(f"{k} {v}" for k, v in sorted(shown["counters"].items()))
    lines.append(f"router {shown['contract']['router']}; {counters}")
    return lines


@click.group()
def route() -> None:
    """An application's release contract: versions, validity, phase-in, shadows, expiry."""


@route.command("set")
@click.argument("app")
@click.argument("contract", metavar="CONTRACT")
@_SERVICE
@pass_settings
def route_set(settings: Settings, app: str, contract: str, service: str) -> None:
    """Set (or replace) APP's contract; releases it lists again keep their state."""
    spec = _document(contract)
    shown = _call(settings, service, lambda s: s.set_route(app, spec))
    for line in releases_table(shown):
        click.echo(line)


@route.command("show")
@click.argument("app")
@_SERVICE
@pass_settings
def route_show(settings: Settings, app: str, service: str) -> None:
    """APP's releases: status, share of requests now, phase-in, answers, reason."""
    for line in releases_table(_call(settings, service, lambda s: s.show_route(app))):
        click.echo(line)


@route.command("delete")
@click.argument("app")
@_SERVICE
@pass_settings
def route_delete(settings: Settings, app: str, service: str) -> None:
    """Delete APP's contract (its linked model's serving version answers again)."""
    _echo(_call(settings, service, lambda s: s.delete_route(app)))


@route.command("feed-metric")
@click.argument("app")
@click.argument("version")
@click.argument("metric")
@click.argument("value", type=float)
@_SERVICE
@pass_settings
def route_feed_metric(
    settings: Settings, app: str, version: str, metric: str, value: float, service: str
) -> None:
    """Feed METRIC = VALUE to a release (for a metric gate or top-N expiry)."""
    shown = _call(settings, service, lambda s: s.feed_metric(app, version, metric, value))
    for line in releases_table(shown):
        click.echo(line)


@route.command("expire")
@click.argument("app")
@click.argument("version")
@_SERVICE
@pass_settings
def route_expire(settings: Settings, app: str, version: str, service: str) -> None:
    """Stop a release serving (it stays stored; restore brings it back)."""
    for line in releases_table(_call(settings, service, lambda s: s.expire_release(app, version))):
        click.echo(line)


@route.command("restore")
@click.argument("app")
@click.argument("version")
@_SERVICE
@pass_settings
def route_restore(settings: Settings, app: str, version: str, service: str) -> None:
    """Bring an expired release back (exempt from automatic expiry until expired by hand)."""
    shown = _call(settings, service, lambda s: s.restore_release(app, version))
    for line in releases_table(shown):
        click.echo(line)


@route.command("log")
@click.argument("app")
@click.option("--key", default=None, help="Only the records of this key.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@_SERVICE
@pass_settings
def route_log(settings: Settings, app: str, key: str | None, limit: int, service: str) -> None:
    """APP's newest prediction-log records, one JSON object a line."""
    for record in _call(settings, service, lambda s: s.prediction_log(app, key, limit)):
        click.echo(json.dumps(record, sort_keys=True, default=repr))


@click.group()
def policy() -> None:
    """An application's selection policy: bandits per user, or combined models."""


@policy.command("set")
@click.argument("app")
@click.argument("selection", metavar="SELECTION")
@_SERVICE
@pass_settings
def policy_set(settings: Settings, app: str, selection: str, service: str) -> None:
    """Set (or replace) APP's selection policy."""
    spec = _document(selection)
    _echo(_call(settings, service, lambda s: s.set_selection(app, spec)))


@policy.command("show")
@click.argument("app")
@click.option("--user", "user_id", default="", help="The user whose state to show.")
@_SERVICE
@pass_settings
def policy_show(settings: Settings, app: str, user_id: str, service: str) -> None:
    """APP's selection policy and one user's learnt state."""
    _echo(_call(settings, service, lambda s: s.show_policy(app, user_id)))


@policy.command("delete")
@click.argument("app")
@_SERVICE
@pass_settings
def policy_delete(settings: Settings, app: str, service: str) -> None:
    """Delete APP's selection policy."""
    _echo(_call(settings, service, lambda s: s.delete_selection(app)))
