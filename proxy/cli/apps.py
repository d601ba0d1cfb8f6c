"""``modelbus apps``: the applications of a modelbus service, and their links to models.

    modelbus apps list --service NS                 every application, one per line (a table)
    modelbus apps info APP --service NS             one application
    modelbus apps register APP --service NS [--input-type doubles] [--default-output None]
                                            [--slo-micros 100000] [--description TEXT]
    modelbus apps delete APP --service NS           (its link goes with it)
    modelbus apps link APP MODEL --service NS       route APP's predictions to MODEL
    modelbus apps unlink APP MODEL --service NS
    modelbus apps linked APP --service NS           the model linked to APP, if any

Each is one operation of the service's ``slot/admin`` (``app.*``, bus/PROTOCOL.md §17.4); with
``--json`` the reply is printed as JSON for scripts.
"""

from __future__ import annotations

from typing import Any

import click

from bus import Conflict, InvalidRequest, NotFound
from container_manager.service import ServiceClient
from proxy.cli.remote import (
    call_service,
    emit,
    json_option,
    key_values,
    service_option,
    table,
)
from proxy.cli.root import Settings, pass_settings

__all__ = ["INPUT_TYPES", "apps", "check_link"]

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings")
APP_FIELDS = ("name", "input_type", "default_output", "latency_slo_micros", "linked_models")


@click.group()
def apps() -> None:
    """Register, list, inspect and delete applications; link them to models."""


def _app_text(app: dict[str, Any]) -> str:
    return key_values(app, APP_FIELDS)


@apps.command("list")
@service_option
@json_option
@pass_settings
def apps_list(settings: Settings, service: str, as_json: bool) -> None:
    """List the service's applications."""
    found = call_service(settings, service, lambda remote: remote.get_all_apps(verbose=True))

    def text(records: list[dict[str, Any]]) -> str:
        if not records:
            return "no applications"
        return table(
            ("name", "input", "slo_micros", "default", "linked"),
            [
                (
                    app["name"],
                    app["input_type"],
                    app["latency_slo_micros"],
                    app["default_output"],
                    app["linked_models"],
                )
                for app in records
            ],
        )

    emit(found, as_json, text)


@apps.command("info")
@click.argument("app")
@service_option
@json_option
@pass_settings
def apps_info(settings: Settings, app: str, service: str, as_json: bool) -> None:
    """Show application APP."""
    found = call_service(settings, service, lambda remote: remote.get_app_info(app))
    emit(found, as_json, _app_text)


@apps.command("register")
@click.argument("app")
@click.option("--input-type", type=click.Choice(INPUT_TYPES), default="doubles", show_default=True)
@click.option(
    "--default-output",
    default="None",
    show_default=True,
    help="The answer when no model answers within the SLO.",
)
@click.option(
    "--slo-micros",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="The latency SLO, in microseconds.",
)
@click.option("--description", default="", help="A note kept with the application.")
@service_option
@json_option
@pass_settings
def apps_register(
    settings: Settings,
    app: str,
    input_type: str,
    default_output: str,
    slo_micros: int,
    description: str,
    service: str,
    as_json: bool,
) -> None:
    """Register application APP."""
    created = call_service(
        settings,
        service,
        lambda remote: remote.register_application(
            app, input_type, default_output, slo_micros, description
        ),
    )
    emit(
        created,
        as_json,
        lambda a: (
            f"registered application {a['name']} ({a['input_type']}, SLO "
            f"{a['latency_slo_micros']} µs, default output {a['default_output']!r})\n"
            f"next: modelbus apps link {a['name']} MODEL --service {service}"
        ),
    )


@apps.command("delete")
@click.argument("app")
@service_option
@json_option
@pass_settings
def apps_delete(settings: Settings, app: str, service: str, as_json: bool) -> None:
    """Delete application APP (and its link)."""
    gone = call_service(settings, service, lambda remote: remote.delete_application(app))
    emit(gone, as_json, lambda a: f"deleted application {a['name']}")


@apps.command("link")
@click.argument("app")
@click.argument("model")
@service_option
@json_option
@pass_settings
def apps_link(settings: Settings, app: str, model: str, service: str, as_json: bool) -> None:
    """Link application APP to MODEL: APP's predictions go to MODEL's serving version."""
    linked = call_service(settings, service, lambda remote: remote.link_model_to_app(app, model))
    emit(linked, as_json, lambda a: f"linked application {a['name']} to model {model}")


@apps.command("unlink")
@click.argument("app")
@click.argument("model")
@service_option
@json_option
@pass_settings
def apps_unlink(settings: Settings, app: str, model: str, service: str, as_json: bool) -> None:
    """Unlink MODEL from application APP."""
    unlinked = call_service(
        settings, service, lambda remote: remote.unlink_model_from_app(app, model)
    )
    emit(unlinked, as_json, lambda a: f"unlinked model {model} from application {a['name']}")


@apps.command("linked")
@click.argument("app")
@service_option
@json_option
@pass_settings
def apps_linked(settings: Settings, app: str, service: str, as_json: bool) -> None:
    """Print the model linked to application APP (nothing if none)."""
    models = call_service(settings, service, lambda remote: remote.get_linked_models(app))
    emit(models, as_json, lambda names: "\n".join(names))
    if not models and not as_json:
        click.echo(f"application {app} has no linked model", err=True)


async def check_link(
    service: ServiceClient, app: str, model: str, input_type: str, service_arg: str
) -> None:
    """Raise the error ``app.link`` would give after the deploy, naming the fix."""
    where = f"--service {service_arg}"
    try:
        found = await service.get_app_info(app)
    except NotFound:
        raise NotFound(
            f"no application named {app!r}: register it first (modelbus apps register {app} "
            f"--input-type {input_type} {where}) or leave out --link; nothing was uploaded",
            app=app,
        ) from None
    if found.get("input_type") != input_type:
        raise InvalidRequest(
            f"application {app!r} takes {found.get('input_type')} inputs, not {input_type} "
            "(--input-type); nothing was uploaded",
            app=app,
        )
    linked = [str(name) for name in found.get("linked_models") or []]
    if linked and model not in linked:
        raise Conflict(
            f"application {app!r} is linked to model {linked[0]!r} (one model per application): "
            f"modelbus apps unlink {app} {linked[0]} {where}; nothing was uploaded",
            app=app,
        )
