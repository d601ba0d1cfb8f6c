"""``modelbus predict`` and ``modelbus models``: ask a service by meaning, or one model directly.

    modelbus [--bus URL] [--entity FILE] [--proof FILE]... predict --service NS
        --type thermal --context zone=A --start '2018-01-30 00:00:00 PST'
        --end '2018-01-31 00:00:00 PST' --granularity 30min
        [--aggregation mean|sum] [--stream-proof FILE]... [--json]
    modelbus ... predict --service NS (--model NAME [--version V] | --app APP) --input JSON [--json]
    modelbus ... models --service NS --type thermal --context zone=A [--start S --end E]
        [--stream-proof FILE]... [--json]

A forecast (PROTOCOL §17.8) prints one line per point — its time in the zone of ``--start``, the
value, and the model and version that made it (``a:1+b:1`` when composed from children) — with
``gap: <reason>`` where no usable model answered, then the problems met on the way. ``--json``
prints the service's reply as it is, for scripts. ``--stream-proof`` names grant chain files
proving this entity may consume the training streams of the models it wants used; they travel
in the request (``proofs``). ``--model``/``--app`` call the ``predict`` operation (§17.3).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import click

from bus import BusClient, Grant
from chooser import TimeGridError, parse_instant
from container_manager.forecast_table import format_forecast, format_models
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from proxy.cli.root import Settings, pass_settings, read_chain, run_async
from transports import open_transport

__all__ = ["models", "predict"]


def _service_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--service",
        envvar="MODELBUS_SERVICE",
        required=True,
        metavar="NS[/PATH]",
        help=f"The service: its namespace (key or alias), with PATH {DEFAULT_SERVICE_PATH} by "
        "default.  [env: MODELBUS_SERVICE]",
    )(command)


def _stream_proof_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--stream-proof",
        "stream_proofs",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A grant chain file proving you may consume training streams; repeatable.",
    )(command)


async def _with_service(
    settings: Settings, service: str, work: Callable[[ServiceClient], Any]
) -> Any:
    canonical = settings.canonical(service.strip("/"))
    uri = canonical if "/" in canonical else f"{canonical}/{DEFAULT_SERVICE_PATH}"
    client = BusClient(
        open_transport(settings.bus_url),
        settings.entity(),
        proofs=settings.proofs(),
        verifier=settings.verifier(),
    )
    async with client as bus:
        return await work(ServiceClient(bus, uri))


def _zone_of(text: str | None) -> tzinfo:
    if text is None:
        return UTC
    try:
        return parse_instant(text).tzinfo or UTC
    except TimeGridError:
        return UTC


def _chains(paths: Sequence[Path]) -> list[tuple[Grant, ...]]:
    return [read_chain(path) for path in paths]


@click.command()
@_service_option
@click.option("--type", "model_type", metavar="TYPE", help="Model type: thermal, consumption, …")
@click.option("--context", metavar="KIND=ID", help="The place: zone=A, floor=2, building=soda.")
@click.option("--start", metavar="TIME", help="With a zone: '2018-01-30 00:00:00 PST'.")
@click.option("--end", metavar="TIME", help="With a zone, a whole number of steps after --start.")
@click.option("--granularity", metavar="STEP", default="30min", show_default=True)
@click.option("--aggregation", type=click.Choice(["mean", "sum"]), default=None)
@_stream_proof_option
@click.option("--model", metavar="NAME", help="Call this model directly (no chooser).")
@click.option("--version", metavar="V", help="With --model: pin this version.")
@click.option("--app", metavar="APP", help="Call this application directly.")
@click.option("--input", "input_json", metavar="JSON", help="With --model/--app: the input.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@pass_settings
def predict(
    settings: Settings,
    service: str,
    model_type: str | None,
    context: str | None,
    start: str | None,
    end: str | None,
    granularity: str,
    aggregation: str | None,
    stream_proofs: tuple[Path, ...],
    model: str | None,
    version: str | None,
    app: str | None,
    input_json: str | None,
    as_json: bool,
) -> None:
    """Forecast TYPE at a place over a time range, or call one model or application."""
    if model is not None or app is not None:
        if model_type or context or start or end:
            raise click.UsageError("--model/--app calls one model: no --type/--context/--start")
        if input_json is None:
            raise click.UsageError("--model/--app needs --input JSON")
        try:
            value = json.loads(input_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None

        async def direct(client: ServiceClient) -> Any:
            return await client.predict(app=app, model=model, version=version, input=value)

        reply = run_async(_with_service, settings, service, direct)
        click.echo(json.dumps(reply) if as_json else json.dumps(reply["output"]))
        return
    if not (model_type and context and start and end):
        raise click.UsageError("give --type, --context, --start and --end (or --model/--app)")
    proofs = _chains(stream_proofs)

    async def forecast(client: ServiceClient) -> Any:
        return await client.forecast(
            model_type, context, start, end, granularity, aggregation=aggregation, proofs=proofs
        )

    reply = run_async(_with_service, settings, service, forecast)
    if as_json:
        click.echo(json.dumps(reply))
        return
    for line in format_forecast(reply, _zone_of(start)):
        click.echo(line)


@click.command()
@_service_option
@click.option("--type", "model_type", required=True, metavar="TYPE")
@click.option("--context", required=True, metavar="KIND=ID")
@click.option("--start", metavar="TIME", help="With --end: show what each model covers there.")
@click.option("--end", metavar="TIME")
@_stream_proof_option
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@pass_settings
def models(
    settings: Settings,
    service: str,
    model_type: str,
    context: str,
    start: str | None,
    end: str | None,
    stream_proofs: tuple[Path, ...],
    as_json: bool,
) -> None:
    """The models you may use for TYPE at a place (and around it), with their coverage."""
    proofs = _chains(stream_proofs)

    async def listing(client: ServiceClient) -> Any:
        return await client.forecast_models(
            model_type, context, start=start, end=end, proofs=proofs
        )

    entries = run_async(_with_service, settings, service, listing)
    if as_json:
        click.echo(json.dumps(entries))
        return
    for line in format_models(entries, _zone_of(start)):
        click.echo(line)
