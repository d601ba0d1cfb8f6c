"""Container images for the docker runtime: what a saved image holds and how its worker starts.
No engine calls here (those are :mod:`proxy.backend.docker`'s).

**Saved images.** A model image arrives as a ``docker save`` tarball (Docker's or Podman's
docker-archive, or Docker 25's OCI layout, which keeps the same ``manifest.json``).
:func:`find_saved_image` reads only its manifest and the named image's config, so a deploy naming
an image the tarball lacks is refused before anything is loaded. An image's id is the SHA-256 of
its config: the engine shows the same id once it is loaded, so a version is run by id and a tag
moved later cannot change what it runs.

**The worker inside.** The image's entrypoint runs ``python -m proxy.backend.worker`` (the base
images'
do; an image without an entrypoint gets that one), and the runtime passes the worker's arguments
as the command. Where the model is comes from the image label ``modelbus.entry``:
``closure:/model/model.closure`` (a closure archive: the base images' default) or
``function:/model/func.pkl`` (a plain cloudpickled function, Clipper's layout). The base images
are built by ``deploy/base-image/`` (no registry needed) or ``deploy/Dockerfile``.

**Fits.** An image that can be fitted says how in the label ``modelbus.fit``: its fit program as
a JSON array of strings (exec form), run in a one-shot container by :mod:`proxy.fitting.images`
(bus/PROTOCOL.md §18.9). A fitted version runs the same image with its state mounted read-only at
:data:`STATE_PATH` and ``--state STATE_PATH`` after the worker's arguments.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bus.errors import DecodeError, InvalidRequest
from proxy.backend.image_tarball import check_single_image, open_tarball

__all__ = [
    "BASE_LABEL",
    "ENTRY_LABEL",
    "FIT_COMMAND",
    "FIT_LABEL",
    "MODEL_CLOSURE_PATH",
    "STATE_PATH",
    "WORKER_COMMAND",
    "Entry",
    "SavedImage",
    "check_saved_image",
    "find_saved_image",
    "parse_entry",
    "parse_fit_command",
    "read_saved_images",
]

ENTRY_LABEL = "modelbus.entry"
BASE_LABEL = "modelbus.base"
MODEL_CLOSURE_PATH = "/model/model.closure"
WORKER_COMMAND = ("python3", "-m", "proxy.backend.worker")
FIT_LABEL = "modelbus.fit"
FIT_COMMAND = ("python3", "-m", "proxy.fitting.worker")
"""The base images' fit program (their ``modelbus.fit``)."""
STATE_PATH = "/run/modelbus-state/state"
"""Where a fitted version's replicas find its state (a read-only file)."""

_MAX_JSON_BYTES = 4 * 1024 * 1024


# --- saved images -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """Where the model is inside an image, from its ``modelbus.entry`` label."""

    kind: Literal["closure", "function"]
    path: str

    def worker_args(self) -> list[str]:
        return ["--artifact" if self.kind == "closure" else "--function", self.path]


@dataclass(frozen=True, slots=True)
class SavedImage:
    id: str  # sha256:<hex of the config>
    tags: tuple[str, ...]
    labels: dict[str, str]
    has_entrypoint: bool

    @property
    def entry(self) -> Entry:
        return parse_entry(self.labels.get(ENTRY_LABEL), self.tags[0] if self.tags else self.id)

    @property
    def fit_command(self) -> list[str] | None:
        """The image's fit program (``modelbus.fit``), or None if it declares none."""
        name = self.tags[0] if self.tags else self.id
        return parse_fit_command(self.labels.get(FIT_LABEL), name)


def parse_entry(value: str | None, image: str) -> Entry:
    kind, _, path = (value or "").partition(":")
    if kind not in ("closure", "function") or not path.startswith("/"):
        raise InvalidRequest(
            f"image {image} has no usable {ENTRY_LABEL} label (found {value!r}); build it FROM "
            f"the modelbus base image, or add LABEL {ENTRY_LABEL}=closure:{MODEL_CLOSURE_PATH} "
            f"(a closure archive) or {ENTRY_LABEL}=function:/model/func.pkl (a cloudpickled "
            "function)",
            image=image,
        )
    return Entry(kind, path)  # type: ignore[arg-type]


def parse_fit_command(value: str | None, image: str) -> list[str] | None:
    """``modelbus.fit``'s program: None without the label or with an empty one (how an image
    built FROM one that has a fit program opts out), InvalidRequest if it is not a JSON array of
    1 to 64 non-empty strings."""
    if not value:
        return None
    try:
        command = json.loads(value)
    except (ValueError, RecursionError):  # a deployer's label: "[[[[…" nests past the stack
        command = None
    if (
        not isinstance(command, list)
        or not 0 < len(command) <= 64
        or not all(isinstance(arg, str) and 0 < len(arg) <= 4096 for arg in command)
    ):
        raise InvalidRequest(
            f"image {image}'s {FIT_LABEL} label is not its fit program as a JSON array of "
            f"strings (found {value[:200]!r}); e.g. LABEL {FIT_LABEL}="
            f"'{json.dumps(list(FIT_COMMAND))}'",
            image=image,
        )
    return command


def read_saved_images(path: str | Path) -> list[SavedImage]:
    """The images a ``docker save`` tarball holds; DecodeError if it is not one, LimitExceeded
    if it is compressed and unpacks to too much (:mod:`proxy.backend.image_tarball`)."""
    try:
        with open_tarball(Path(path)) as archive:
            manifest = _read_json(archive, "manifest.json", path)
            if not isinstance(manifest, list):
                raise DecodeError(f"{path}: manifest.json is not a list of images")
            return [_saved_image(archive, item, path) for item in manifest]
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DecodeError(
            f"the artifact is not a `docker save` tarball: {exc}", path=str(path)
        ) from exc


def check_saved_image(path: str | Path, ref: str) -> SavedImage:
    """The image ``ref`` in the tarball, if a modelbus replica can run it: it holds that image
    and no other, under at most one tag, and the image says where its model is. DecodeError,
    InvalidRequest or LimitExceeded otherwise."""
    images = read_saved_images(path)
    check_single_image(len(images), sum(len(i.tags) for i in images), Path(path))
    image = _find(images, ref)
    image.entry  # noqa: B018 (raises InvalidRequest for an image without a usable entry)
    return image


def find_saved_image(path: str | Path, ref: str) -> SavedImage:
    """The image ``ref`` (``name[:tag]``, or an id) in the tarball; InvalidRequest if absent."""
    return _find(read_saved_images(path), ref)


def _find(images: list[SavedImage], ref: str) -> SavedImage:
    wanted = _normalize(ref)
    for image in images:
        if _matches_id(ref, image.id) or wanted in {_normalize(tag) for tag in image.tags}:
            return image
    held = ", ".join(tag for image in images for tag in image.tags) or "untagged images only"
    raise InvalidRequest(
        f"the uploaded tarball does not contain image {ref!r} (it holds: {held}); save the image "
        "you deploy, e.g. `docker save -o model.tar NAME:TAG`",
        image=ref,
    )


def _saved_image(archive: tarfile.TarFile, item: Any, path: str | Path) -> SavedImage:
    if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
        raise DecodeError(f"{path}: a manifest.json entry has no Config")
    raw = _read_member(archive, item["Config"], path)
    config = json.loads(raw).get("config") or {}
    tags = item.get("RepoTags") or []
    return SavedImage(
        id=f"sha256:{hashlib.sha256(raw).hexdigest()}",
        tags=tuple(str(tag) for tag in tags),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        has_entrypoint=bool(config.get("Entrypoint")),
    )


def _read_json(archive: tarfile.TarFile, name: str, path: str | Path) -> Any:
    try:
        return json.loads(_read_member(archive, name, path))
    except ValueError as exc:
        raise DecodeError(f"{path}: {name} is not JSON: {exc}") from exc


def _read_member(archive: tarfile.TarFile, name: str, path: str | Path) -> bytes:
    try:
        member = archive.getmember(name)
    except KeyError:
        raise DecodeError(
            f"the artifact is not a `docker save` tarball: it has no {name}", path=str(path)
        ) from None
    if not member.isfile() or member.size > _MAX_JSON_BYTES:
        raise DecodeError(f"{path}: {name} is not a file of at most {_MAX_JSON_BYTES} bytes")
    extracted = archive.extractfile(member)
    assert extracted is not None  # a regular file
    return extracted.read()


def _normalize(ref: str) -> str:
    """``thermal`` → ``thermal:latest``; the default registries' prefixes dropped."""
    name, at, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if not at and ":" not in last:
        name += ":latest"
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name + at + digest


def _matches_id(ref: str, image_id: str) -> bool:
    hex_part = ref.removeprefix("sha256:")
    return (
        len(hex_part) >= 12
        and re.fullmatch(r"[0-9a-f]+", hex_part) is not None
        and (image_id.removeprefix("sha256:").startswith(hex_part))
    )
