"""``modelbus deploy``: deploy a Python function or a container image to a modelbus service.

    modelbus [--bus URL] [--entity FILE] [--proof FILE]... deploy NAME VERSION --service NS
        (--function FILE.py:FUNC | --image-tar FILE [--image REF] | --image REF)
        [--input-type doubles] [--replicas 1] [--batch-size -1] [--label L]...
        [--metadata JSON|@FILE | --meta FILE.json] [--link APP] [--wait/--no-wait]

The artifact — the function as a closure archive, a ``docker save`` tarball, or an image
exported from your container engine — is uploaded in chunks with a progress bar on stderr, then
deployed; with ``--wait`` (the default) the command returns once a replica is ready.
Interrupted (Ctrl-C, a lost connection), run the same command again: what it built is kept in
the cache directory until the deploy succeeds, so the upload resumes from the last chunk the
service acknowledged, and a version already deployed from the same artifact counts as done.

The command runs under the root ``modelbus`` group and takes the bus, entity, proofs and aliases
from its :class:`~proxy.cli.root.Settings`; the work is done by :mod:`container_manager`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bus import BusClient, BusError, Conflict, RequestTimeout, TransportError, runner
from bus.errors import InvalidRequest
from bus.transfer import UploadProgress
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from proxy.cli.apps import check_link
from proxy.cli.artifacts import (
    Artifact,
    default_cache_dir,
    function_artifact,
    image_artifact,
    tarball_artifact,
)
from proxy.cli.diagnose import asking
from proxy.cli.remote import service_uri
from proxy.cli.root import CliError, Settings, pass_settings
from proxy.service.forecast.metadata import check_metadata
from transports import open_transport

__all__ = ["deploy"]

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings")


class _Progress:
    """A progress bar on stderr, opened on the first acknowledged chunk."""

    def __init__(self, stack: contextlib.ExitStack, label: str) -> None:
        self.stack = stack
        self.label = label
        self.bar: Any = None
        self.shown = 0
        self.started = False  # the service was found alive and the upload began

    def __call__(self, progress: UploadProgress) -> None:
        if self.bar is None:
            if progress.resumed_from:
                click.echo(
                    f"resuming the upload at chunk {progress.resumed_from} of "
                    f"{progress.chunk_count}",
                    err=True,
                )
            self.bar = self.stack.enter_context(
                click.progressbar(length=progress.total_bytes, label=self.label, file=sys.stderr)
            )
        self.bar.update(progress.acked_bytes - self.shown)
        self.shown = progress.acked_bytes


# ---- deploying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    name: str
    version: str
    service_uri: str
    input_type: str
    replicas: int
    batch_size: int
    labels: list[str]
    metadata: dict[str, Any]
    link_app: str | None
    wait: bool
    ready_timeout_s: float
    service: str
    """The --service as given, for the follow-up commands printed after a partial success."""


@dataclass
class _Outcome:
    """How far a run got: ``stage`` is ``checking``, ``uploading``, ``deploying`` or
    ``deployed``; past ``deployed``, ``step`` names the follow-up under way and ``then`` the
    command that finishes it if it fails."""

    stage: str = "checking"
    sha256: str = ""
    step: str = ""
    then: str = ""


async def _deploy(
    client: BusClient, plan: _Plan, artifact: Artifact, progress: _Progress, outcome: _Outcome
) -> dict[str, Any]:
    async with client as bus:
        service = ServiceClient(bus, plan.service_uri)
        await service.check_alive()
        if plan.link_app is not None:
            await check_link(service, plan.link_app, plan.name, plan.input_type, plan.service)
        key = (plan.name, plan.version)
        outcome.stage = "uploading"
        sha256 = await service.upload_artifact(
            artifact.path,
            name=f"{plan.name}:{plan.version}",
            kind=artifact.kind,
            progress=progress,
        )
        outcome.stage, outcome.sha256 = "deploying", sha256
        try:
            await service.deploy_artifact(
                *key,
                plan.input_type,
                sha256,
                kind=artifact.kind,
                image=artifact.image,
                labels=plan.labels,
                metadata=plan.metadata,
                replicas=plan.replicas,
                batch_size=plan.batch_size,
            )
        except Conflict:
            found = await service.get_model_info(*key)
            if found.get("container_name") != artifact.container_name(sha256):
                raise
            click.echo(f"{plan.name}:{plan.version} was already deployed from it", err=True)
        outcome.stage = "deployed"
        artifact.forget()
        where = f"--service {plan.service}"
        if plan.wait and plan.replicas > 0:
            outcome.step = "waiting for a ready replica"
            outcome.then = (
                f"modelbus versions wait {plan.name} {plan.version} {where}; "
                f"modelbus versions logs {plan.name} {plan.version} {where}"
            )
            await service.wait_ready(*key, timeout_s=plan.ready_timeout_s)
        if plan.link_app and plan.name not in await service.get_linked_models(plan.link_app):
            outcome.step = f"linking it to application {plan.link_app}"
            outcome.then = f"modelbus apps link {plan.link_app} {plan.name} {where}"
            await service.link_model_to_app(plan.link_app, plan.name)
        outcome.step = "reading its record"
        outcome.then = f"modelbus versions info {plan.name} {plan.version} {where}"
        return await service.get_model_info(*key)


def _failed(error: BaseException, plan: _Plan, artifact: Artifact, outcome: _Outcome) -> None:
    """Say what a failed run did: a deploy that was done is reported done (then the failed
    follow-up and the command that finishes it, exit 1); an interrupted upload or deploy is kept
    to resume; anything else removes what the run built, so only an interrupted run leaves
    something to reuse."""
    if outcome.stage == "deployed":
        raise CliError(
            f"deployed {plan.name}:{plan.version} ({artifact.kind} sha256:"
            f"{outcome.sha256[:12]}); {outcome.step} failed: {_message(error)}\n"
            f"  to finish: {outcome.then}"
        ) from None
    if not _is_interruption(error):
        artifact.forget()
    elif outcome.stage in ("uploading", "deploying"):
        click.echo("\ninterrupted: run the same command again to resume", err=True)


def _message(error: BaseException) -> str:
    """The message of the one expected error inside ``error`` (a group's only leaf)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BusError):
        return error.message
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}"


async def _deploy_v2(client: BusClient, plan: _Plan, url: str, model: str) -> dict[str, Any]:
    """A version served by an Open Inference Protocol server: nothing to upload."""
    async with client as bus:
        service = ServiceClient(bus, plan.service_uri)
        await service.check_alive()
        key = (plan.name, plan.version)
        await service.deploy_v2(
            *key,
            plan.input_type,
            url=url,
            model=model,
            labels=plan.labels,
            metadata=plan.metadata,
            batch_size=plan.batch_size,
        )
        if plan.wait:
            await service.wait_ready(*key, timeout_s=plan.ready_timeout_s)
        if plan.link_app and plan.name not in await service.get_linked_models(plan.link_app):
            await service.link_model_to_app(plan.link_app, plan.name)
        return await service.get_model_info(*key)


def _is_interruption(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(_is_interruption(inner) for inner in error.exceptions)
    return isinstance(error, KeyboardInterrupt | TransportError | RequestTimeout)


def _metadata(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"not a JSON object or @FILE: {exc}", param_hint="--metadata"
        ) from None
    if not isinstance(value, dict):
        raise click.BadParameter("the metadata is a JSON object", param_hint="--metadata")
    return value


def _checked_metadata(text: str | None, meta_file: Path | None) -> dict[str, Any]:
    if text is not None and meta_file is not None:
        raise click.UsageError("give --metadata or --meta, not both")
    value = _metadata(text if meta_file is None else f"@{meta_file}")
    try:
        check_metadata(value)
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message, param_hint="--meta/--metadata") from None
    return value


@click.command()
@click.argument("name")
@click.argument("version")
@click.option(
    "--service",
    "service",
    envvar="MODELBUS_SERVICE",
    required=True,
    metavar="NS[/PATH]",
    help=f"The service: its namespace (key or alias), with PATH {DEFAULT_SERVICE_PATH} by "
    "default.  [env: MODELBUS_SERVICE]",
)
@click.option("--function", "function_spec", metavar="FILE.py:FUNC", help="Deploy FUNC(inputs).")
@click.option(
    "--image-tar",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Deploy the image in this 'docker save' tarball.",
)
@click.option(
    "--image",
    metavar="REF",
    help="Deploy this image from your engine (with --image-tar: the tarball's image).",
)
@click.option(
    "--v2-url",
    metavar="URL",
    help="Serve the version from this Open Inference Protocol (V2) server, e.g. "
    "http://host:8080 (MLServer, Triton, KServe); with --v2-model.",
)
@click.option("--v2-model", metavar="NAME", help="The V2 server's name for the model.")
@click.option("--input-type", type=click.Choice(INPUT_TYPES), default="doubles", show_default=True)
@click.option("--replicas", type=click.IntRange(0, 64), default=1, show_default=True)
@click.option("--batch-size", type=int, default=-1, show_default=True, help="-1: adaptive.")
@click.option("--label", "labels", multiple=True, help="A label of the version; repeatable.")
@click.option("--metadata", metavar="JSON|@FILE", help="Model metadata for the chooser.")
@click.option(
    "--meta",
    "meta_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model metadata from a JSON file; with a 'type' key the model serves forecasts "
    "(PROTOCOL §17.8) and the metadata is checked before uploading.",
)
@click.option("--link", "link_app", metavar="APP", help="Link the model to application APP.")
@click.option("--wait/--no-wait", default=True, help="Wait for a ready replica.  [default: wait]")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MODELBUS_CACHE",
    help="Where built artifacts wait for their deploy.  [env: MODELBUS_CACHE; default: "
    "$XDG_CACHE_HOME/modelbus/deploy]",
)
@pass_settings
def deploy(
    settings: Settings,
    name: str,
    version: str,
    service: str,
    function_spec: str | None,
    image_tar: Path | None,
    image: str | None,
    v2_url: str | None,
    v2_model: str | None,
    input_type: str,
    replicas: int,
    batch_size: int,
    labels: tuple[str, ...],
    metadata: str | None,
    meta_file: Path | None,
    link_app: str | None,
    wait: bool,
    ready_timeout: float,
    cache_dir: Path | None,
) -> None:
    """Deploy NAME:VERSION from a Python function or a container image, or as served by an
    Open Inference Protocol server (--v2-url, --v2-model)."""
    sources = (function_spec is not None, image_tar is not None, image_tar is None and bool(image))
    remote = v2_url is not None or v2_model is not None
    if remote and (any(sources) or v2_url is None or v2_model is None):
        raise click.UsageError("--v2-url and --v2-model go together, and with no other source")
    if not remote and sum(sources) != 1:
        raise click.UsageError(
            "give exactly one of --function, --image-tar or --image (or --v2-url and --v2-model)"
        )
    client = BusClient(
        open_transport(settings.bus_url),
        settings.entity(),
        proofs=settings.proofs(),
        verifier=settings.verifier(),
    )
    plan = _Plan(
        name=name,
        version=version,
        service_uri=service_uri(settings, service),
        input_type=input_type,
        replicas=replicas,
        batch_size=batch_size,
        labels=list(labels),
        metadata=_checked_metadata(metadata, meta_file),
        link_app=link_app,
        wait=wait,
        ready_timeout_s=ready_timeout,
        service=service,
    )
    asking(plan.service_uri)
    if v2_url is not None and v2_model is not None:
        runner.run(_deploy_v2, client, plan, v2_url, v2_model)
        click.echo(f"deployed {name}:{version} (served by {v2_url}, model {v2_model})")
        return
    spool = (cache_dir or default_cache_dir()) / f"{name}-{version}"
    if function_spec is not None:
        artifact = function_artifact(function_spec, spool)
    elif image_tar is not None:
        artifact = tarball_artifact(image_tar, image)
    else:
        assert image is not None
        artifact = image_artifact(image, spool)
    outcome = _Outcome()
    with contextlib.ExitStack() as stack:
        progress = _Progress(stack, f"uploading {name}:{version}")
        try:
            info = runner.run(_deploy, client, plan, artifact, progress, outcome)
        except BaseException as exc:
            _failed(exc, plan, artifact, outcome)
            raise
    sha256 = outcome.sha256
    ready = "" if not (wait and replicas) else f"; {replicas} replica(s), ready"
    click.echo(f"deployed {name}:{version} ({artifact.kind} sha256:{sha256[:12]}){ready}")
    if link_app:
        click.echo(f"linked to application {link_app}")
    if info.get("metadata"):
        click.echo(f"metadata: {json.dumps(info['metadata'], sort_keys=True)}")
