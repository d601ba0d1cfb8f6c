"""``modelbus fit``: retrain a fittable model into a new version (bus/PROTOCOL.md §17.10): a
closure, or an image declaring a fit program (§18.9), the same way.

    modelbus fit NAME --data URI-or-FILE [--from-version V] [--new-version V2] [--since T]
                 [--until T] [--switch/--no-switch] [--timeout S] [--memory-mb M] [--wait]
    modelbus fit status JOB          the job: state, progress, error, log tail
    modelbus fit list [NAME]         the latest jobs
    modelbus fit resume JOB          run an interrupted or failed job again

``--data`` is repeatable: a bus URI pattern (``ns/sensors/zone-a/*``: the persisted messages
there are the training points) or a local JSON file, uploaded in chunks. The grant chains given
with ``--proof`` go with the request: the service checks that they let you consume every stream.
``--since``/``--until`` are ISO 8601 or ns. With ``--wait`` a progress line follows the job.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from bus.grants import encode_chain
from proxy.cli.remote import call_service, emit, json_option, key_values, service_option, table
from proxy.cli.root import CliError, Settings, pass_settings

__all__ = ["fit"]

JOB_FIELDS = (
    "job_id",
    "model_name",
    "parent_version",
    "new_version",
    "state",
    "progress",
    "error",
    "attempts",
    "requester",
    "pid",
    "log",
)


def _time_ns(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither ISO 8601 nor ns", param_hint=option
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1e9)


def _progress_line(job: dict[str, Any]) -> None:
    line = f"\r{job['job_id']}  {job['state']:<11}  {job['progress'][:80]}"
    sys.stderr.write(line.ljust(110))
    sys.stderr.flush()


class _FitGroup(click.Group):
    """``modelbus fit NAME ...`` starts a fit; ``fit status|list|resume`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_FitGroup)
def fit() -> None:
    """Fit a model on data from the bus or a file: a new version, no blackout."""


@fit.command("start")
@click.argument("name")
@click.option("--data", "data", multiple=True, required=True, help="Bus URI pattern or file.")
@click.option("--from-version", default=None, help="Fit this version [default: current].")
@click.option("--new-version", default=None, help="The new version's name.")
@click.option("--since", default=None, help="Training range start (ISO 8601 or ns).")
@click.option("--until", default=None, help="Training range end (ISO 8601 or ns) [now].")
@click.option("--switch/--no-switch", default=None, help="Make it current once ready.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True)
@click.option("--memory-mb", type=int, default=2048, show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job.")
@service_option
@json_option
@pass_settings
def fit_start(
    settings: Settings,
    name: str,
    data: tuple[str, ...],
    from_version: str | None,
    new_version: str | None,
    since: str | None,
    until: str | None,
    switch: bool | None,
    timeout_s: float,
    memory_mb: int,
    wait: bool,
    service: str,
    as_json: bool,
) -> None:
    """Start a fit of model NAME (``modelbus fit NAME --data ...``)."""
    files = [Path(item) for item in data if Path(item).is_file()]
    streams = [item for item in data if not Path(item).is_file()]
    if len(files) > 1:
        raise CliError("give at most one training file")
    proofs = [encode_chain(chain) for chain in settings.proofs()]

    async def run(remote: Any) -> dict[str, Any]:
        job = await remote.fit(
            name,
            from_version=from_version,
            new_version=new_version,
            streams=streams,
            data_file=files[0] if files else None,
            since_ns=_time_ns(since, "--since"),
            until_ns=_time_ns(until, "--until"),
            make_current=switch,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            proofs=proofs,
        )
        if not wait:
            return dict(job)
        done = await remote.wait_fit(
            job["job_id"],
            timeout_s=timeout_s + 120,
            on_progress=None if as_json else _progress_line,
        )
        if not as_json:
            sys.stderr.write("\n")
        return dict(done)

    job = call_service(settings, service, run, timeout_s=60.0)
    emit(job, as_json, lambda j: key_values(j, JOB_FIELDS))
    if job["state"] in ("failed", "interrupted"):
        raise SystemExit(1)


@fit.command("status")
@click.argument("job")
@service_option
@json_option
@pass_settings
def fit_status(settings: Settings, job: str, service: str, as_json: bool) -> None:
    """Show fit job JOB: state, progress, error and the tail of its log."""
    found = call_service(settings, service, lambda remote: remote.fit_status(job))
    emit(found, as_json, lambda j: key_values(j, JOB_FIELDS))


@fit.command("list")
@click.argument("name", required=False)
@service_option
@json_option
@pass_settings
def fit_list(settings: Settings, name: str | None, service: str, as_json: bool) -> None:
    """The latest fit jobs (of model NAME), newest first."""
    jobs = call_service(settings, service, lambda remote: remote.fit_list(name))

    def text(found: list[dict[str, Any]]) -> str:
        if not found:
            return "no fit jobs"
        rows = [
            (j["job_id"], j["model_name"], j["parent_version"], j["new_version"], j["state"])
            for j in found
        ]
        return table(("job", "model", "from", "new version", "state"), rows)

    emit(jobs, as_json, text)


@fit.command("resume")
@click.argument("job")
@service_option
@json_option
@pass_settings
def fit_resume(settings: Settings, job: str, service: str, as_json: bool) -> None:
    """Run an interrupted or failed fit job again, as it was asked."""
    found = call_service(settings, service, lambda remote: remote.fit_resume(job))
    emit(found, as_json, lambda j: key_values(j, JOB_FIELDS))
