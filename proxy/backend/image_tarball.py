"""Reading ``docker save`` tarballs safely: bounded decompression, and only the requested image.

A tarball comes from a deployer, so two things in it must not reach the engine:

- **other images and tags.** ``docker load`` applies every ``RepoTags`` entry of the manifest, so
  a tarball could re-point any tag on the engine (the host's, another tenant's, a base image).
  :func:`check_single_image` refuses a tarball whose manifest holds more than one image or more
  than one tag, and :func:`untagged_copy` writes the copy that is actually loaded: the one image,
  with no tag at all (``RepoTags: []``, no ``repositories``, no OCI ``index.json``), so the engine
  knows it only by its id until the runtime tags it ``modelbus/<name>:<version>``.
- **a decompression bomb.** A compressed tarball (gzip, bzip2, xz) is decompressed while it is
  read; :func:`open_tarball` stops with :class:`~bus.errors.LimitExceeded` once the decompressed
  position passes ``max(64 MiB, 32 times the compressed size)`` or :data:`MAX_UNPACKED_BYTES`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bus.errors import DecodeError, InvalidRequest, LimitExceeded

__all__ = [
    "MAX_RATIO",
    "MAX_UNPACKED_BYTES",
    "check_single_image",
    "open_tarball",
    "untagged_copy",
]

MAX_UNPACKED_BYTES = 16 * 1024**3
MAX_RATIO = 32  # decompressed / compressed bytes
_FLOOR_BYTES = 64 * 1024 * 1024
_DROPPED = frozenset({"manifest.json", "repositories", "index.json", "oci-layout"})
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class _Capped(io.RawIOBase):
    """A decompressing file whose position may not pass ``limit`` (read or seek)."""

    def __init__(self, inner: IO[bytes], limit: int, path: Path) -> None:
        self._inner = inner
        self._limit = limit
        self._path = path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self._check()
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            raise OSError("cannot seek from the end of a compressed tarball")
        target = offset if whence == io.SEEK_SET else self._inner.tell() + offset
        if target > self._limit:
            self._refuse()
        return self._inner.seek(target)

    def tell(self) -> int:
        return self._inner.tell()

    def _check(self) -> None:
        if self._inner.tell() > self._limit:
            self._refuse()

    def _refuse(self) -> None:
        raise LimitExceeded(
            f"the compressed tarball {self._path.name} unpacks to more than {self._limit} bytes; "
            "upload it uncompressed (`docker save -o model.tar NAME:TAG`)",
            limit=self._limit,
        )


@contextlib.contextmanager
def open_tarball(path: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> Iterator[tarfile.TarFile]:
    """The tarball at ``path`` (plain, gzip, bzip2 or xz), its decompression bounded."""
    with path.open("rb") as raw:
        magic = raw.read(6)
    opener = _decompressor(magic)
    if opener is None:
        with tarfile.open(path, "r:") as archive:
            yield archive
        return
    limit = min(max_bytes, max(_FLOOR_BYTES, MAX_RATIO * path.stat().st_size))
    with opener(path) as inner, tarfile.open(fileobj=_Capped(inner, limit, path), mode="r:") as tar:
        yield tar


def _decompressor(magic: bytes) -> Any:
    if magic.startswith(b"\x1f\x8b"):
        return lambda p: gzip.open(p, "rb")
    if magic.startswith(b"BZh"):
        return lambda p: bz2.open(p, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lambda p: lzma.open(p, "rb")
    return None


def check_single_image(images: int, tags: int, path: Path) -> None:
    """InvalidRequest unless the tarball holds exactly one image with at most one tag."""
    if images != 1:
        raise InvalidRequest(
            f"the tarball {path.name} holds {images} images; a model tarball holds exactly one "
            "(`docker save -o model.tar NAME:TAG` of the one image you deploy)",
            images=images,
        )
    if tags > 1:
        raise InvalidRequest(
            f"the tarball {path.name} gives its image {tags} tags; save it under one "
            "(`docker save -o model.tar NAME:TAG`)",
            tags=tags,
        )


def untagged_copy(source: Path, dest: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Write to ``dest`` an uncompressed copy of the single-image tarball ``source`` whose image
    has no tag (see the module docstring). DecodeError, InvalidRequest or LimitExceeded."""
    try:
        with open_tarball(source, max_bytes=max_bytes) as archive:
            manifest = _manifest(archive, source)
            if not isinstance(manifest, list) or not all(isinstance(i, dict) for i in manifest):
                raise DecodeError(f"{source.name}: manifest.json is not a list of images")
            tags = manifest[0].get("RepoTags") if manifest else None
            check_single_image(len(manifest), len(tags) if isinstance(tags, list) else 0, source)
            manifest[0]["RepoTags"] = []
            with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
                for member in archive:
                    if member.name.lstrip("./") in _DROPPED:
                        continue
                    data = archive.extractfile(member) if member.isfile() else None
                    out.addfile(member, data)
                body = json.dumps(manifest).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(body)
                out.addfile(info, io.BytesIO(body))
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        dest.unlink(missing_ok=True)
        raise DecodeError(f"the artifact is not a `docker save` tarball: {exc}") from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _manifest(archive: tarfile.TarFile, path: Path) -> Any:
    try:
        member = archive.getmember("manifest.json")
    except KeyError:
        raise DecodeError(
            f"the artifact {path.name} is not a `docker save` tarball: it has no manifest.json"
        ) from None
    extracted = archive.extractfile(member)
    if extracted is None or member.size > _MAX_MANIFEST_BYTES:
        raise DecodeError(f"{path.name}: manifest.json is not a small regular file")
    try:
        return json.loads(extracted.read())
    except ValueError as exc:
        raise DecodeError(f"{path.name}: manifest.json is not JSON: {exc}") from exc
