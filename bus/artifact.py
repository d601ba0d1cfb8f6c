"""Closure archives: a model function shipped as a file, and the checks made before running it.

The only module that imports cloudpickle. It lives in ``bus`` because the client library makes
archives and the service reads them.

An archive is a zip file with exactly two members::

    manifest.json   {"format": 1, "kind": "closure", "python": "3.11", "python_full": "3.11.7",
                     "packages": {"numpy": "1.26.4", "cloudpickle": "3.0.0"},
                     "created_ns": 1718000000000000000, "closure_sha256": "<64 hex digits>"}
    closure.pkl     cloudpickle.dumps(func)

``packages`` lists the distributions the function needs and the versions it was made with. The
function's own module is pickled *by value* unless it is installed (in site-packages or the
standard library), so a model written in a file on a laptop runs on a server that lacks that file;
anything it imports must be installed on the server.

Reading is bounded: the file, the manifest and the pickle each have a size limit, and any other
member name (``../x``, ``/etc/passwd``, a third file) is refused. ``read_manifest`` and
``check_compatible`` never unpickle; only ``load_closure`` does — and unpickling runs code, so only
a worker process calls it, with an archive whose sender was authorised to deploy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import platform
import re
import sys
import sysconfig
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any, Literal

import cloudpickle
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bus.errors import DecodeError, InvalidRequest

__all__ = [
    "CLOSURE_MEMBER",
    "FORMAT",
    "MANIFEST_MEMBER",
    "MAX_ARCHIVE_BYTES",
    "MAX_CLOSURE_BYTES",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "build_closure_archive",
    "check_archive",
    "check_compatible",
    "detect_packages",
    "load_closure",
    "read_manifest",
]

FORMAT = 1
MANIFEST_MEMBER = "manifest.json"
CLOSURE_MEMBER = "closure.pkl"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_CLOSURE_BYTES = 256 * 1024 * 1024
MAX_ARCHIVE_BYTES = MAX_CLOSURE_BYTES + 1024 * 1024

_PACKAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_MAX_FUNCTIONS_WALKED = 200


class Manifest(BaseModel):
    """What ``manifest.json`` says about a closure archive (validated: it comes off the wire)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format: Literal[1]
    kind: Literal["closure"]
    python: str = Field(pattern=r"^[0-9]{1,3}\.[0-9]{1,3}$")
    python_full: str = Field(max_length=64)
    packages: dict[str, str] = Field(max_length=256)
    created_ns: int = Field(ge=0)
    closure_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("packages")
    @classmethod
    def _check_packages(cls, packages: dict[str, str]) -> dict[str, str]:
        for name, version in packages.items():
            if not re.match(_PACKAGE_NAME, name) or not 0 < len(version) <= 64:
                raise ValueError(f"bad package entry {name[:100]!r}: {version[:64]!r}")
        return packages


def build_closure_archive(
    func: Callable[..., Any],
    *,
    packages: Mapping[str, str] | None = None,
    by_value: Iterable[ModuleType] = (),
) -> bytes:
    """Pickle ``func`` with cloudpickle and wrap it with its manifest into a zip archive.

    ``packages`` (distribution name → version) replaces the detected list; cloudpickle's own
    version is always recorded. ``by_value`` names more of your modules to ship with the function.
    """
    if not callable(func):
        raise InvalidRequest(f"a model must be callable, got {type(func).__name__}")
    closure = _pickle(func, by_value)
    needed = dict(detect_packages(func) if packages is None else packages)
    needed["cloudpickle"] = cloudpickle.__version__
    manifest = {
        "format": FORMAT,
        "kind": "closure",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "python_full": platform.python_version(),
        "packages": dict(sorted(needed.items())),
        "created_ns": time.time_ns(),
        "closure_sha256": hashlib.sha256(closure).hexdigest(),
    }
    Manifest.model_validate(manifest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_MEMBER, json.dumps(manifest, indent=2))
        archive.writestr(CLOSURE_MEMBER, closure)
    return buffer.getvalue()


def read_manifest(
    path: str | Path,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_closure_bytes: int = MAX_CLOSURE_BYTES,
) -> Manifest:
    """Check the archive's structure and return its manifest; never unpickles anything."""
    with _open_archive(path, max_archive_bytes, max_closure_bytes) as archive:
        raw = _read_member(archive, MANIFEST_MEMBER, MAX_MANIFEST_BYTES, path)
    return _parse_manifest(raw, path)


def check_archive(
    path: str | Path,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_closure_bytes: int = MAX_CLOSURE_BYTES,
) -> Manifest:
    """All that can be checked of a closure archive without running it — its members and their
    sizes, every manifest key, and that ``closure.pkl`` is the bytes the manifest's digest names
    — before anything is registered. Every failure is one code, InvalidRequest. The pickle is
    never loaded here (that runs code): whether it holds a callable is the worker's to find."""
    try:
        with _open_archive(path, max_archive_bytes, max_closure_bytes) as archive:
            raw = _read_member(archive, MANIFEST_MEMBER, MAX_MANIFEST_BYTES, path)
            closure = _read_member(archive, CLOSURE_MEMBER, max_closure_bytes, path)
        manifest = _parse_manifest(raw, path)
    except DecodeError as error:
        raise InvalidRequest(error.message, **error.details) from None
    if hashlib.sha256(closure).hexdigest() != manifest.closure_sha256:
        raise InvalidRequest(
            f"{path}: closure.pkl does not match the digest in its manifest; rebuild the archive",
            path=str(path),
        )
    return manifest


def check_compatible(manifest: Manifest) -> None:
    """Raise InvalidRequest unless this interpreter can run the archive's closure."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest.python != here:
        raise InvalidRequest(
            f"the model was built with Python {manifest.python} ({manifest.python_full}) but this "
            f"server runs Python {platform.python_version()}; rebuild the archive with Python "
            f"{here}, or deploy the model as a container image",
            built_with=manifest.python_full,
            server=platform.python_version(),
        )
    for name, wanted in manifest.packages.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise InvalidRequest(
                f"the model needs package {name} {wanted}, which is not installed on this server; "
                f"install {name}=={wanted} here, or deploy the model as a container image",
                package=name,
                wanted=wanted,
            ) from None
        if _major(installed) != _major(wanted):
            raise InvalidRequest(
                f"the model was built with {name} {wanted} but this server has {name} "
                f"{installed} (a different major version); rebuild it with {name} "
                f"{_major(installed)}.x or install {name}=={wanted} here",
                package=name,
                wanted=wanted,
                installed=installed,
            )


def load_closure(
    path: str | Path,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_closure_bytes: int = MAX_CLOSURE_BYTES,
) -> Callable[..., Any]:
    """Unpickle the archive's function after checking its digest. Runs code: workers only."""
    with _open_archive(path, max_archive_bytes, max_closure_bytes) as archive:
        manifest = _parse_manifest(
            _read_member(archive, MANIFEST_MEMBER, MAX_MANIFEST_BYTES, path), path
        )
        closure = _read_member(archive, CLOSURE_MEMBER, max_closure_bytes, path)
    if hashlib.sha256(closure).hexdigest() != manifest.closure_sha256:
        raise DecodeError(
            f"{path}: closure.pkl does not match the digest in its manifest; the archive is "
            "corrupt, upload it again",
            path=str(path),
        )
    try:
        func = cloudpickle.loads(closure)
    except Exception as exc:
        raise InvalidRequest(
            f"the model function in {path} could not be loaded here: "
            f"{type(exc).__name__}: {exc}; install what it imports on the server, or pass its "
            "modules in by_value= when building the archive",
            path=str(path),
            exception=type(exc).__name__,
        ) from exc
    if not callable(func):
        raise InvalidRequest(
            f"{path} holds a {type(func).__name__}, not a callable model function",
            path=str(path),
        )
    result: Callable[..., Any] = func
    return result


def detect_packages(func: Callable[..., Any]) -> dict[str, str]:
    """Best effort: installed distributions (with versions) of the modules ``func`` refers to."""
    candidates = sorted(
        top
        for top in _referenced_top_modules(func)
        if top not in sys.stdlib_module_names and top not in ("builtins", "__main__")
    )
    if not candidates:
        return {}
    owners = _distributions_by_module()
    found: dict[str, str] = {}
    for top in candidates:
        for dist in owners.get(top, []):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


# --- building -------------------------------------------------------------------------------------


@functools.cache
def _distributions_by_module() -> Mapping[str, list[str]]:
    """Top-level module → installed distributions; scanning them is slow, so once per process."""
    try:
        return importlib.metadata.packages_distributions()
    except Exception:  # a broken installed distribution must not block deploying
        return {}


def _pickle(func: Callable[..., Any], by_value: Iterable[ModuleType]) -> bytes:
    modules = [*by_value]
    # A fittable model (bus.fittable) ships its predict and fit functions' modules too; modelbus's
    # own ``bus`` package is on every server, so it is pickled by name.
    for part in (func, getattr(func, "predict", None), getattr(func, "fit", None)):
        own = sys.modules.get(getattr(part, "__module__", None) or "")
        if own is None or own.__name__ == "__main__" or own.__name__.startswith("bus."):
            continue
        if not _is_installed(own) and own not in modules:
            modules.append(own)
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # already registered by the caller
                continue
            registered.append(module)
        try:
            data: bytes = cloudpickle.dumps(func)
        except Exception as exc:
            raise InvalidRequest(
                f"the model function cannot be pickled: {type(exc).__name__}: {exc}; a model "
                "may not capture open files, sockets, locks or other live resources",
                exception=type(exc).__name__,
            ) from exc
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
    return data


def _is_installed(module: ModuleType) -> bool:
    """Whether a module comes from the standard library or site-packages (pickled by name)."""
    filename = getattr(module, "__file__", None)
    if not filename:
        return True  # built-in or namespace package: cannot be shipped by value anyway
    where = Path(filename).resolve()
    roots = {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(root and where.is_relative_to(Path(root).resolve()) for root in roots)


def _referenced_top_modules(func: Callable[..., Any]) -> set[str]:
    tops: set[str] = set()
    pending: list[Any] = [func]
    seen: set[int] = set()
    while pending and len(seen) < _MAX_FUNCTIONS_WALKED:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if not isinstance(obj, FunctionType):
            tops.add(_top_module_of(type(obj)))
            continue
        tops.add(_top_module_of(obj))
        namespace = obj.__globals__
        referenced = [namespace[name] for name in _code_names(obj.__code__) if name in namespace]
        for cell in obj.__closure__ or ():
            try:
                referenced.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        for value in referenced:
            if isinstance(value, FunctionType):
                pending.append(value)  # follow helpers: their globals count too
            else:
                tops.add(_top_module_of(value))
    tops.discard("")
    return tops


def _top_module_of(value: Any) -> str:
    name: object = value.__name__ if isinstance(value, ModuleType) else None
    if name is None:
        name = getattr(value, "__module__", None) or getattr(type(value), "__module__", "")
    return str(name).partition(".")[0]


def _code_names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_names(const)


# --- reading --------------------------------------------------------------------------------------


def _open_archive(
    path: str | Path, max_archive_bytes: int, max_closure_bytes: int
) -> zipfile.ZipFile:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidRequest(f"model archive {path} cannot be read: {exc}", path=str(path)) from exc
    if size > max_archive_bytes:
        raise DecodeError(
            f"model archive {path} is {size} bytes, over the {max_archive_bytes}-byte limit",
            path=str(path),
            size=size,
        )
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # zipfile raises several types on hostile input
        raise DecodeError(
            f"{path} is not a closure archive (a zip file): {exc}", path=str(path)
        ) from exc
    try:
        _check_members(zf, path, max_closure_bytes)
    except BaseException:
        zf.close()
        raise
    return zf


def _check_members(zf: zipfile.ZipFile, path: Path, max_closure_bytes: int) -> None:
    limits = {MANIFEST_MEMBER: MAX_MANIFEST_BYTES, CLOSURE_MEMBER: max_closure_bytes}
    names = [info.filename for info in zf.infolist()]
    for info in zf.infolist():
        if info.filename not in limits:
            raise DecodeError(
                f"{path} has an unexpected member {info.filename[:200]!r}; a closure archive "
                f"holds only {MANIFEST_MEMBER} and {CLOSURE_MEMBER}",
                path=str(path),
            )
        if info.flag_bits & 0x1:
            raise DecodeError(f"{path}: {info.filename} is encrypted", path=str(path))
        if info.file_size > limits[info.filename]:
            raise DecodeError(
                f"{path}: {info.filename} is {info.file_size} bytes, over the "
                f"{limits[info.filename]}-byte limit",
                path=str(path),
            )
    for name in limits:
        if names.count(name) != 1:
            raise DecodeError(
                f"{path} must hold exactly one {name} (found {names.count(name)}); build it with "
                "bus.artifact.build_closure_archive",
                path=str(path),
            )


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, path: str | Path) -> bytes:
    try:
        with zf.open(name) as member:
            data = member.read(limit + 1)
    except Exception as exc:  # bad CRC, unsupported compression, truncated file
        raise DecodeError(f"{path}: {name} cannot be read: {exc}", path=str(path)) from exc
    if len(data) > limit:
        raise DecodeError(
            f"{path}: {name} expands past its {limit}-byte limit", path=str(path), limit=limit
        )
    return data


def _parse_manifest(raw: bytes, path: str | Path) -> Manifest:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"{path}: manifest.json is not JSON", path=str(path)) from exc
    if isinstance(document, dict) and document.get("format") != FORMAT:
        raise InvalidRequest(
            f"{path} uses another archive format; this server reads format {FORMAT}: rebuild "
            "the archive with a matching modelbus",
            path=str(path),
        )
    if isinstance(document, dict) and document.get("kind") != "closure":
        raise InvalidRequest(f"{path} is not a closure archive", path=str(path))
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise DecodeError(f"{path}: invalid manifest.json: {problems}", path=str(path)) from exc


def _major(version: str) -> str:
    match = re.match(r"\s*v?(\d+)", version)
    return match.group(1) if match else version
