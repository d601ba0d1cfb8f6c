"""``modelbus versions``: the model versions of a modelbus service, and their replicas.

    modelbus versions list [NAME] --service NS          every version (of NAME), a table
    modelbus versions info NAME VERSION --service NS    one version: its record and state
    modelbus versions current NAME --service NS         the current version's name
    modelbus versions pin NAME VERSION [--replicas N]   make VERSION current (it serves once ready)
    modelbus versions rollback NAME                     back to the version current before
    modelbus versions replicas NAME [--version V] [--set N]   list (or set the count of) replicas
    modelbus versions logs NAME VERSION [--replica I] [--tail N]   a replica's worker log
    modelbus versions wait NAME VERSION [--timeout S]   until a replica is ready
    modelbus versions stop NAME[:VERSION]...            stop versions (all of NAME without :V)
    modelbus versions stop-inactive [NAME]...           stop all but the current versions
    modelbus versions stop-all                          stop every version

Each is one operation of the service's ``slot/admin`` (``model.*``, bus/PROTOCOL.md §17.4),
each takes ``--service NS`` and ``--json``. A version is deployed with ``modelbus deploy``.
"""

from __future__ import annotations

from typing import Any

import click

from proxy.cli.remote import (
    call_service,
    emit,
    json_option,
    key_values,
    service_option,
    table,
)
from proxy.cli.root import Settings, pass_settings

__all__ = ["versions"]

MAX_REPLICAS = 64
VIEW_FIELDS = (
    "model_name",
    "model_version",
    "is_current_version",
    "is_serving",
    "ready",
    "is_stopped",
    "input_type",
    "artifact_kind",
    "container_name",
    "batch_size",
    "labels",
    "metadata",
    "model_data_path",
)


@click.group()
def versions() -> None:
    """List and inspect model versions; pin, roll back, scale, stop; read replica logs."""


def _view_text(view: dict[str, Any]) -> str:
    return key_values(view, VIEW_FIELDS)


def _state(view: dict[str, Any]) -> str:
    if view.get("is_stopped"):
        return "stopped"
    return "ready" if view.get("ready") else "not ready"


@versions.command("list")
@click.argument("name", required=False)
@service_option
@json_option
@pass_settings
def versions_list(settings: Settings, name: str | None, service: str, as_json: bool) -> None:
    """List the versions of every model, or of model NAME."""
    found = call_service(
        settings, service, lambda remote: remote.get_all_models(verbose=True, name=name)
    )

    def text(views: list[dict[str, Any]]) -> str:
        if not views:
            return f"no versions of {name}" if name else "no models"
        return table(
            ("model", "version", "current", "serving", "state", "kind", "input", "labels"),
            [
                (
                    view["model_name"],
                    view["model_version"],
                    view["is_current_version"],
                    view["is_serving"],
                    _state(view),
                    view["artifact_kind"],
                    view["input_type"],
                    view["labels"],
                )
                for view in views
            ],
        )

    emit(found, as_json, text)


@versions.command("info")
@click.argument("name")
@click.argument("version")
@service_option
@json_option
@pass_settings
def versions_info(settings: Settings, name: str, version: str, service: str, as_json: bool) -> None:
    """Show NAME:VERSION: its record, whether it is current, serving, ready, stopped."""
    view = call_service(settings, service, lambda remote: remote.get_model_info(name, version))
    emit(view, as_json, _view_text)


@versions.command("current")
@click.argument("name")
@service_option
@json_option
@pass_settings
def versions_current(settings: Settings, name: str, service: str, as_json: bool) -> None:
    """Print the current version of model NAME."""
    current = call_service(settings, service, lambda remote: remote.get_current_model_version(name))
    emit(current, as_json, str)


@versions.command("pin")
@click.argument("name")
@click.argument("version")
@click.option(
    "--replicas",
    type=click.IntRange(0, MAX_REPLICAS),
    default=None,
    help="Run this many replicas of it [default: its recorded count, at least 1].",
)
@service_option
@json_option
@pass_settings
def versions_pin(
    settings: Settings,
    name: str,
    version: str,
    replicas: int | None,
    service: str,
    as_json: bool,
) -> None:
    """Make NAME:VERSION the current version (it serves once a replica is ready)."""
    view = call_service(
        settings, service, lambda remote: remote.set_model_version(name, version, replicas)
    )
    emit(view, as_json, lambda v: f"{name}:{version} is current ({_serving(v)})")


def _serving(view: dict[str, Any]) -> str:
    if view.get("is_serving"):
        return "serving"
    return "it serves once a replica is ready; the previous version answers meanwhile"


@versions.command("rollback")
@click.argument("name")
@service_option
@json_option
@pass_settings
def versions_rollback(settings: Settings, name: str, service: str, as_json: bool) -> None:
    """Make the version current before this one current again."""
    view = call_service(settings, service, lambda remote: remote.rollback(name))
    emit(
        view,
        as_json,
        lambda v: f"rolled {name} back to version {v['model_version']} ({_serving(v)})",
    )


@versions.command("replicas")
@click.argument("name")
@click.option("--version", default=None, help="[default: the serving, else the current, version]")
@click.option(
    "--set",
    "count",
    type=click.IntRange(0, MAX_REPLICAS),
    default=None,
    help="Run this many replicas (0 stops them).",
)
@service_option
@json_option
@pass_settings
def versions_replicas(
    settings: Settings,
    name: str,
    version: str | None,
    count: int | None,
    service: str,
    as_json: bool,
) -> None:
    """List the replicas of a version of NAME, or set how many run (--set N)."""
    if count is not None:
        done = call_service(
            settings, service, lambda remote: remote.set_num_replicas(name, count, version)
        )
        emit(
            done, as_json, lambda d: f"{d['name']}:{d['version']} now runs {d['replicas']} replicas"
        )
        return
    found = call_service(settings, service, lambda remote: remote.get_replicas(name, version))

    def text(replicas: list[dict[str, Any]]) -> str:
        if not replicas:
            return f"no replicas of {name}"
        header = ("index", "state", "pid", "restarts", "batches", "in_flight", "error")
        return table(header, [[replica.get(key) for key in header] for replica in replicas])

    emit(found, as_json, text)


@versions.command("logs")
@click.argument("name")
@click.argument("version")
@click.option("--replica", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tail", type=click.IntRange(1, 10_000), default=200, show_default=True)
@service_option
@json_option
@pass_settings
def versions_logs(
    settings: Settings,
    name: str,
    version: str,
    replica: int,
    tail: int,
    service: str,
    as_json: bool,
) -> None:
    """Print the last lines of a replica's worker log."""
    log = call_service(
        settings, service, lambda remote: remote.get_logs(name, version, replica, tail)
    )
    emit(log, as_json, lambda text: text.rstrip("\n"))


@versions.command("wait")
@click.argument("name")
@click.argument("version")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0, 600, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to wait for a ready replica.",
)
@service_option
@json_option
@pass_settings
def versions_wait(
    settings: Settings, name: str, version: str, timeout_s: float, service: str, as_json: bool
) -> None:
    """Wait until a replica of NAME:VERSION is ready (an error past --timeout)."""
    view = call_service(
        settings, service, lambda remote: remote.wait_ready(name, version, timeout_s=timeout_s)
    )
    emit(view, as_json, lambda v: f"{name}:{version} is ready ({_serving(v)})")


def _stopped_text(keys: list[str]) -> str:
    return "\n".join(f"stopped {key}" for key in keys) or "nothing newly stopped"


@versions.command("stop")
@click.argument("models", nargs=-1, required=True, metavar="NAME[:VERSION]...")
@service_option
@json_option
@pass_settings
def versions_stop(settings: Settings, models: tuple[str, ...], service: str, as_json: bool) -> None:
    """Stop versions: NAME:VERSION one version, NAME every version of NAME."""
    names: list[str] = []
    by_model: dict[str, list[str]] = {}
    for model in models:
        name, sep, version = model.partition(":")
        if not name or (sep and not version):
            raise click.BadParameter(f"{model!r} is not NAME or NAME:VERSION", param_hint="NAME")
        if sep:
            by_model.setdefault(name, []).append(version)
        else:
            names.append(name)

    stopped = call_service(settings, service, lambda remote: remote.stop(names, by_model))
    emit(stopped, as_json, _stopped_text)


@versions.command("stop-inactive")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@service_option
@json_option
@pass_settings
def versions_stop_inactive(
    settings: Settings, names: tuple[str, ...], service: str, as_json: bool
) -> None:
    """Stop every version but the current one, of the NAMEs (default: of every model)."""
    stopped = call_service(
        settings, service, lambda remote: remote.stop_inactive_model_versions(list(names))
    )
    emit(stopped, as_json, _stopped_text)


@versions.command("stop-all")
@service_option
@json_option
@pass_settings
def versions_stop_all(settings: Settings, service: str, as_json: bool) -> None:
    """Stop every version of every model."""
    stopped = call_service(settings, service, lambda remote: remote.stop_all_model_containers())
    emit(stopped, as_json, _stopped_text)
