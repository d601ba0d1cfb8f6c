"""What ``modelbus deploy`` uploads, built before the upload: a closure archive of a function, a
``docker save`` tarball, or an image exported from the local engine — kept in the cache
directory (with a fingerprint beside it) until the deploy succeeds, so an interrupted run resumes
its upload instead of building again.
"""

from __future__ import annotations

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

from bus.artifact import build_closure_archive
from container_manager import engine
from container_manager.clipper import CLOSURE_IMAGE_PREFIX

__all__ = [
    "Artifact",
    "default_cache_dir",
    "function_artifact",
    "image_artifact",
    "tarball_artifact",
]


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


def function_artifact(spec: str, spool: Path) -> Artifact:
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


def image_artifact(image: str, spool: Path) -> Artifact:
    image_id = engine.image_id(image)
    click.echo(f"exporting {image} ({image_id[:19]}) from your container engine", err=True)
    path = _spool(spool.with_name(spool.name + ".tar"), image_id, lambda out: _export(image, out))
    return Artifact(path, "image", image, spool=path)


def _export(image: str, out: Path) -> None:
    engine.export_image(image, out)


def tarball_artifact(tarball: Path, image: str | None) -> Artifact:
    named = engine.image_references(tarball)
    if image is None and not named:
        raise click.UsageError(f"{tarball} names no image: give its reference with --image")
    return Artifact(tarball, "image", image or named[0])


# ---- progress ----------------------------------------------------------------------------------
