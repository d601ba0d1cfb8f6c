"""``modelbus schedule``: predictions on a fixed grid of windows (bus/PROTOCOL.md §17.11).

    modelbus schedule add NAME --model M --every 30min --window 24h [--delay 5min]
                          --start 2026-12-07T00:00:00Z --inputs URI... --output URI
                          [--max-catchup N] [--catchup-window 7d] [--catchup-rate R]
                          [--overlap buffer_all|allow_all] [--max-attempts N] [--retry 1s]
    modelbus schedule list
    modelbus schedule runs NAME [--state failed] [--limit N]
    modelbus schedule pause|resume|remove NAME
    modelbus schedule rerun NAME WINDOW_KEY

Outputs are published, persisted, on ``<output>/<window key>``; ``modelbus query
'<output>/*'`` reads them. The grant chains given with ``--proof`` go with ``add``: the service
checks they let you consume the inputs and publish on the output.
"""

from __future__ import annotations

from typing import Any

import click

from bus.grants import encode_chain
from proxy.cli.remote import call_service, emit, json_option, key_values, service_option, table
from proxy.cli.root import Settings, pass_settings

__all__ = ["schedule"]


@click.group()
def schedule() -> None:
    """Run a model on every window of a grid; backfill after downtime; re-run a window."""


def _ns(value: int) -> str:
    return f"{value / 1e9:g}s"


def _schedule_text(record: dict[str, Any]) -> str:
    spec = record["spec"]
    shown = record | {
        "every": _ns(spec["every_ns"]),
        "window": _ns(spec["window_ns"]),
        "delay": _ns(spec["delay_ns"]),
        "start_ns": spec["start_ns"],
    }
    keys = ("name", "model", "every", "window", "delay", "start_ns", "inputs", "output", "paused")
    return key_values(shown, keys)


@schedule.command("add")
@click.argument("name")
@click.option("--model", help="The model each window calls (or a forecast query, below).")
@click.option("--type", "forecast_type", help="Instead of --model: the prediction API's type.")
@click.option("--context", help="With --type: the place, kind=id (zone=A).")
@click.option("--granularity", help="With --type: the forecast's step (30min).")
@click.option("--every", required=True, help="The interval: 30min, 1h, 10s …")
@click.option("--window", required=True, help="The data each window reads: 24h …")
@click.option("--delay", default="0s", show_default=True, help="Wait this long past the end.")
@click.option("--start", required=True, help="The grid's origin: ISO 8601 or ns.")
@click.option("--inputs", multiple=True, help="Input URI pattern; repeatable (a model's).")
@click.option("--output", required=True, help="Results go to OUTPUT/<window key>.")
@click.option("--max-catchup", type=int, default=100, show_default=True)
@click.option("--catchup-window", default="365d", show_default=True)
@click.option("--catchup-rate", type=float, default=10.0, show_default=True)
@click.option("--overlap", type=click.Choice(["buffer_all", "allow_all"]), default="buffer_all")
@click.option("--max-attempts", type=int, default=3, show_default=True)
@click.option("--retry", "retry_initial_s", type=float, default=1.0, show_default=True)
@service_option
@json_option
@pass_settings
def schedule_add(
    settings: Settings,
    name: str,
    model: str | None,
    forecast_type: str | None,
    context: str | None,
    granularity: str | None,
    every: str,
    window: str,
    delay: str,
    start: str,
    inputs: tuple[str, ...],
    output: str,
    max_catchup: int,
    catchup_window: str,
    catchup_rate: float,
    overlap: str,
    max_attempts: int,
    retry_initial_s: float,
    service: str,
    as_json: bool,
) -> None:
    """Add schedule NAME: MODEL (or a forecast by --type/--context/--granularity) on every
    window of the grid from --start."""
    if (model is None) == (forecast_type is None):
        raise click.UsageError("give --model, or --type with --context and --granularity")
    if forecast_type is not None and not (context and granularity):
        raise click.UsageError("--type needs --context and --granularity")
    query = (
        None
        if forecast_type is None
        else {"type": forecast_type, "context": context, "granularity": granularity}
    )
    proofs = [encode_chain(chain) for chain in settings.proofs()]
    added = call_service(
        settings,
        service,
        lambda remote: remote.schedule_add(
            name,
            model=model,
            query=query,
            every=every,
            window=window,
            delay=delay,
            start=start,
            inputs=list(inputs),
            output=output,
            proofs=proofs,
            max_catchup=max_catchup,
            catchup_window=catchup_window,
            catchup_rate=catchup_rate,
            overlap=overlap,
            max_attempts=max_attempts,
            retry_initial_s=retry_initial_s,
        ),
    )
    emit(added, as_json, _schedule_text)


@schedule.command("list")
@service_option
@json_option
@pass_settings
def schedule_list(settings: Settings, service: str, as_json: bool) -> None:
    """Every schedule of the service."""
    found = call_service(settings, service, lambda remote: remote.schedule_list())

    def text(records: list[dict[str, Any]]) -> str:
        if not records:
            return "no schedules"
        rows = [
            (r["name"], r["model"], _ns(r["spec"]["every_ns"]), r["output"], r["paused"])
            for r in records
        ]
        return table(("name", "model", "every", "output", "paused"), rows)

    emit(found, as_json, text)


@schedule.command("runs")
@click.argument("name")
@click.option("--state", default=None, help="Only windows in this state (e.g. failed).")
@click.option("--limit", type=int, default=50, show_default=True)
@service_option
@json_option
@pass_settings
def schedule_runs(
    settings: Settings, name: str, state: str | None, limit: int, service: str, as_json: bool
) -> None:
    """The latest windows of schedule NAME: state, attempts, output or reason."""
    found = call_service(
        settings, service, lambda remote: remote.schedule_runs(name, limit=limit, state=state)
    )

    def text(windows: list[dict[str, Any]]) -> str:
        if not windows:
            return f"no windows of {name} yet"
        rows = [
            (w["window_key"], w["state"], w["attempts"], w["model_version"], w["output"])
            if w["state"] != "failed" and w["state"] != "skipped"
            else (w["window_key"], w["state"], w["attempts"], w["model_version"], w["reason"])
            for w in windows
        ]
        return table(("window", "state", "attempts", "version", "output or reason"), rows)

    emit(found, as_json, text)


def _one(name: str, help_text: str, method: str) -> None:
    @schedule.command(name, help=help_text)
    @click.argument("schedule_name", metavar="NAME")
    @service_option
    @json_option
    @pass_settings
    def command(settings: Settings, schedule_name: str, service: str, as_json: bool) -> None:
        found = call_service(
            settings, service, lambda remote: getattr(remote, method)(schedule_name)
        )
        emit(found, as_json, _schedule_text)


_one("pause", "Pause schedule NAME: no window runs until it is resumed.", "schedule_pause")
_one("resume", "Resume NAME; windows due while paused are not backfilled.", "schedule_resume")
_one("remove", "Remove NAME and its windows (its outputs stay on the bus).", "schedule_remove")


@schedule.command("rerun")
@click.argument("name")
@click.argument("window")
@service_option
@json_option
@pass_settings
def schedule_rerun(settings: Settings, name: str, window: str, service: str, as_json: bool) -> None:
    """Run window WINDOW (its key) of NAME again; its new output replaces the old one."""
    found = call_service(settings, service, lambda remote: remote.schedule_rerun(name, window))
    emit(found, as_json, key_values)
