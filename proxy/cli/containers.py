"""``modelbus containers`` and ``modelbus service-status``: a service's containers and its state.

    modelbus containers list --service NS [--label KEY=VALUE]...
    modelbus containers run IMAGE NAME --service NS [--env KEY=VALUE]... [--label KEY=VALUE]...
    modelbus service-status --service NS

``containers`` are the ``container.*`` operations of ``slot/deploy`` (bus/PROTOCOL.md §17.5):
the service's own containers, and a container started confined from an image its engine
already holds (never pulled). ``service-status`` is the ``status`` operation of ``slot/admin``
(§17.4): the status map as it is now, not the last heartbeat's. Each takes ``--json``.
"""

from __future__ import annotations

from typing import Any

import click

from proxy.cli.remote import (
    call_service,
    emit,
    json_option,
    pairs,
    service_option,
    service_uri,
    table,
)
from proxy.cli.root import Settings, pass_settings

__all__ = ["containers", "service_status"]


@click.group()
def containers() -> None:
    """List the service's containers; run one from an image its engine holds."""


def _containers_text(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no containers"
    return table(
        ("id", "name", "image", "state", "labels"),
        [
            (
                item["id"][:12],
                item["name"],
                item["image"],
                item["state"],
                ",".join(f"{k}={v}" for k, v in sorted(item["labels"].items())),
            )
            for item in found
        ],
    )


@containers.command("list")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only with it.")
@service_option
@json_option
@pass_settings
def containers_list(
    settings: Settings, labels: tuple[str, ...], service: str, as_json: bool
) -> None:
    """List the service's containers (replicas included) carrying every --label."""
    wanted = pairs(labels, "--label")
    found = call_service(settings, service, lambda remote: remote.list_containers(wanted))
    emit(found, as_json, _containers_text)


@containers.command("run")
@click.argument("image")
@click.argument("name")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="An environment variable.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label.")
@service_option
@json_option
@pass_settings
def containers_run(
    settings: Settings,
    image: str,
    name: str,
    env: tuple[str, ...],
    labels: tuple[str, ...],
    service: str,
    as_json: bool,
) -> None:
    """Start container NAME from IMAGE (confined: no network, no mounts; never pulled)."""
    variables, marks = pairs(env, "--env"), pairs(labels, "--label")
    started = call_service(
        settings, service, lambda remote: remote.run_container(image, name, variables, marks)
    )
    emit(
        started,
        as_json,
        lambda c: f"started container {c['name']} ({c['id'][:12]}) from {c['image']}: {c['state']}",
    )


@click.command("service-status")
@service_option
@json_option
@pass_settings
def service_status(settings: Settings, service: str, as_json: bool) -> None:
    """Show the service's state now: its version, uptime and started model versions."""
    found = call_service(settings, service, lambda remote: remote.status())

    def text(status: dict[str, Any]) -> str:
        lines = [
            f"service:        {service_uri(settings, service)}",
            f"version:        {status.get('version')}",
            f"uptime:         {float(status.get('uptime_s') or 0):.1f} s",
            f"served default: {status.get('served_default')}",
        ]
        models = status.get("models") or []
        if not models:
            return "\n".join([*lines, "no model versions started"])
        header = ("model", "version", "ready", "replicas", "queued")
        rows = [[model.get(key) for key in header] for model in models]
        return "\n".join([*lines, table(header, rows)])

    emit(found, as_json, text)
