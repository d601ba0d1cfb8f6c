"""``modelbus deploy``: deploy a Python function or a container image to a modelbus service.

    modelbus [--bus URL] [--entity FILE] [--proof FILE]... deploy NAME VERSION --service NS
        (--function FILE.py:FUNC | --image-tar FILE [--image REF] | --image REF)
        [--input-type doubles] [--replicas 1] [--batch-size -1] [--label L]...
        [--metadata JSON|@FILE] [--link APP] [--wait/--no-wait]

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
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from bus import BusClient, Conflict, RequestTimeout, TransportError, runner
from bus.artifact import build_closure_archive
from bus.transfer import UploadProgress
from container_manager import engine
from container_manager.clipper import CLOSURE_IMAGE_PREFIX
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from proxy.cli.root import Settings, pass_settings
from transports import open_transport

__all__ = ["deploy"]

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelbus" / "deploy"


@dataclass(frozen=True)
class Artifact:
    """The file to upload and deploy; ``spool`` is set when the command built it (kept in
    the cache until the deploy succeeds)."""

    path: Path
    kind: str
    image: str | None
    spool: Path | None = None

    def container_name(self, sha256: str) -> str:
        """How the service will name the version's containers (to recognise a done deploy)."""
        return self.image or f"{CLOSURE_IMAGE_PREFIX}{sha256}"

    def forget(self) -> None:
        if self.spool is not None:
            for path in (self.spool, _sidecar(self.spool)):
                path.unlink(missing_ok=True)


def _sidecar(spool: Path) -> Path:
    return spool.with_name(spool.name + ".json")


def _reusable(spool: Path, fingerprint: str) -> bool:
    try:
        return bool(json.loads(_sidecar(spool).read_text()) == {"source": fingerprint})
    except (OSError, ValueError):
        return False


def _spool(spool: Path, fingerprint: str, write: Callable[[Path], object]) -> Path:
    """``spool`` as built by ``write`` — or as kept from an interrupted run of the same source."""
    if spool.exists() and _reusable(spool, fingerprint):
        click.echo(f"reusing {spool} from an interrupted run", err=True)
        return spool
    spool.parent.mkdir(parents=True, exist_ok=True)
    partial = spool.with_name(spool.name + ".partial")
    write(partial)
    partial.replace(spool)
    _sidecar(spool).write_text(json.dumps({"source": fingerprint}))
    return spool


# ---- building the artifact ---------------------------------------------------------------------


def _load_function(spec: str) -> tuple[Callable[..., Any], list[ModuleType]]:
    """``FILE.py:FUNC`` → the function and the modules to ship with it, by value: the file's
    own and those it imported from its directory (and its subdirectories)."""
    file_name, sep, func_name = spec.rpartition(":")
    path = Path(file_name)
    if not sep or not func_name.isidentifier() or path.suffix != ".py":
        raise click.BadParameter(f"{spec!r} is not FILE.py:FUNCTION", param_hint="--function")
    if not path.is_file():
        raise click.BadParameter(f"no file {file_name}", param_hint="--function")
    directory = path.resolve().parent
    module_name = f"modelbus_deploy_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    before = set(sys.modules)
    sys.modules[module_name] = module
    sys.path.insert(0, str(directory))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise click.ClickException(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(directory))
    func = getattr(module, func_name, None)
    if not callable(func):
        raise click.BadParameter(f"{path} has no function {func_name!r}", param_hint="--function")
    # What the file imported from under its directory, and modules of that directory itself
    # imported earlier (by an earlier load in this process).
    siblings = [
        loaded
        for name, loaded in sorted(sys.modules.items())
        if name != module_name and _is_under(loaded, directory, deep=name not in before)
    ]
    return func, [module, *siblings]


def _is_under(module: ModuleType, directory: Path, *, deep: bool) -> bool:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    where = Path(file).resolve()
    return where.is_relative_to(directory) if deep else where.parent == directory


def _function_artifact(spec: str, spool: Path) -> Artifact:
    func, modules = _load_function(spec)
    digest = hashlib.sha256(f"{spec.rpartition(':')[2]}|{sys.version_info[:2]}".encode())
    for module in modules:
        digest.update(Path(str(module.__file__)).read_bytes())
    by_value = modules[1:]
    path = _spool(
        spool.with_name(spool.name + ".closure"),
        digest.hexdigest(),
        lambda out: out.write_bytes(build_closure_archive(func, by_value=by_value)),
    )
    return Artifact(path, "closure", None, spool=path)


def _image_artifact(image: str, spool: Path) -> Artifact:
    image_id = engine.image_id(image)
    click.echo(f"exporting {image} ({image_id[:19]}) from your container engine", err=True)
    path = _spool(spool.with_name(spool.name + ".tar"), image_id, lambda out: _export(image, out))
    return Artifact(path, "image", image, spool=path)


def _export(image: str, out: Path) -> None:
    engine.export_image(image, out)


def _tarball_artifact(tarball: Path, image: str | None) -> Artifact:
    named = engine.image_references(tarball)
    if image is None and not named:
        raise click.UsageError(f"{tarball} names no image: give its reference with --image")
    return Artifact(tarball, "image", image or named[0])


# ---- progress ----------------------------------------------------------------------------------


class _Progress:
    """A progress bar on stderr, opened on the first acknowledged chunk."""

    def __init__(self, stack: contextlib.ExitStack, label: str) -> None:
        self.stack = stack
        self.label = label
        self.bar: Any = None
        self.shown = 0

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


async def _deploy(
    client: BusClient, plan: _Plan, artifact: Artifact, progress: _Progress
) -> tuple[dict[str, Any], str]:
    async with client as bus:
        service = ServiceClient(bus, plan.service_uri)
        await service.check_alive()
        key = (plan.name, plan.version)
        sha256 = await service.upload_artifact(
            artifact.path,
            name=f"{plan.name}:{plan.version}",
            kind=artifact.kind,
            progress=progress,
        )
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
        if plan.wait and plan.replicas > 0:
            await service.wait_ready(*key, timeout_s=plan.ready_timeout_s)
        if plan.link_app and plan.name not in await service.get_linked_models(plan.link_app):
            await service.link_model_to_app(plan.link_app, plan.name)
        return await service.get_model_info(*key), sha256


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
    canonical = settings.canonical(service.strip("/"))
    plan = _Plan(
        name=name,
        version=version,
        service_uri=canonical if "/" in canonical else f"{canonical}/{DEFAULT_SERVICE_PATH}",
        input_type=input_type,
        replicas=replicas,
        batch_size=batch_size,
        labels=list(labels),
        metadata=_metadata(metadata),
        link_app=link_app,
        wait=wait,
        ready_timeout_s=ready_timeout,
    )
    if v2_url is not None and v2_model is not None:
        runner.run(_deploy_v2, client, plan, v2_url, v2_model)
        click.echo(f"deployed {name}:{version} (served by {v2_url}, model {v2_model})")
        return
    spool = (cache_dir or default_cache_dir()) / f"{name}-{version}"
    if function_spec is not None:
        artifact = _function_artifact(function_spec, spool)
    elif image_tar is not None:
        artifact = _tarball_artifact(image_tar, image)
    else:
        assert image is not None
        artifact = _image_artifact(image, spool)
    with contextlib.ExitStack() as stack:
        progress = _Progress(stack, f"uploading {name}:{version}")
        try:
            info, sha256 = runner.run(_deploy, client, plan, artifact, progress)
        except BaseException as exc:
            if _is_interruption(exc):
                click.echo("\ninterrupted: run the same command again to resume", err=True)
            raise
    artifact.forget()
    ready = "" if not (wait and replicas) else f"; {replicas} replica(s), ready"
    click.echo(f"deployed {name}:{version} ({artifact.kind} sha256:{sha256[:12]}){ready}")
    if link_app:
        click.echo(f"linked to application {link_app}")
    if info.get("metadata"):
        click.echo(f"metadata: {json.dumps(info['metadata'], sort_keys=True)}")
