"""The artifact store in a directory: ``<root>/<sha256>``, content-addressed.

By default the root is ``<data dir>/artifacts``. ``modelbus serve --artifacts
file:///shared/path`` (or a plain path) puts it on a filesystem several proxies share (NFS, a
Kubernetes ReadWriteMany volume), mounted at the same path on each, so any instance can start
replicas of a version deployed through another: the registry records the artifact's path.

Content addressing makes sharing safe without locks: a file appears under its digest only
whole and verified, by an atomic rename inside the root, and two instances committing the same
bytes at once rename the same content over each other. A spool file on the same filesystem is
renamed into place; from another filesystem it is copied to ``<root>/.incoming-…``, hashed again
(what the copy wrote is what becomes visible), then renamed. Nothing is ever modified in place.

The chunks of a shared upload (:mod:`proxy.uploads.shared`) are files
``<root>/.uploads/<upload id>/<index>``, each written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Set
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio

from bus.errors import InternalError, InvalidRequest, NotFound
from bus.transfer import file_sha256
from proxy.uploads.collect import collect_artifacts

__all__ = ["FileStore", "artifact_root", "copy_file"]

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def artifact_root(location: str | Path) -> Path:
    """The directory named by ``file:///path`` or a plain path; InvalidRequest for other URLs."""
    text = str(location)
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidRequest(
            f"artifacts must be a directory, a file:/// URL or an s3://bucket/prefix URL, not "
            f"{parts.scheme}://{parts.netloc}…"
        )
    return Path(unquote(parts.path))


class FileStore:
    """The :class:`proxy.uploads.store.ArtifactStore` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def scratch_dir(self) -> Path:
        return self.root

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    async def check(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise InternalError(f"the artifact directory {self.root} is not writable here")

    def location_of(self, sha256: str) -> str:
        return str(self.path(sha256))

    async def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def touch(self, sha256: str) -> bool:
        try:
            os.utime(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    async def local(self, sha256: str) -> Path:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not in {self.root}", artifact=sha256)
        return path

    async def local_at(self, location: str) -> Path:
        path = Path(location)
        if not path.is_file():
            raise NotFound(f"artifact {location} is missing", artifact=path.name)
        return path

    async def collect(self, referenced: Set[str], unused_for_s: float) -> list[str]:
        return await anyio.to_thread.run_sync(
            lambda: collect_artifacts(self.root, referenced, unused_for_s=unused_for_s)
        )

    async def put(self, path: Path, sha256: str) -> None:
        """Make the verified file ``path`` visible as ``sha256`` (moving it)."""
        target = self.path(sha256)
        try:
            os.replace(path, target)
            return
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: another filesystem
                raise InternalError(f"cannot store artifact {sha256}: {exc.strerror}") from exc
        incoming = self.root / f".incoming-{uuid.uuid4().hex}"
        try:
            await anyio.to_thread.run_sync(copy_file, path, incoming)
            copied = await anyio.to_thread.run_sync(file_sha256, incoming)
            if copied != sha256:
                raise InternalError(f"artifact {sha256} changed while being copied to the store")
            os.replace(incoming, target)
        finally:
            incoming.unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    # --- chunks of shared uploads -------------------------------------------------------------

    def chunks_location(self, upload_id: str) -> str:
        return str(self._chunk_dir(upload_id))

    def _chunk_dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise InvalidRequest(f"not an upload id: {upload_id[:40]!r}")
        return self.root / ".uploads" / upload_id

    async def put_chunk(self, upload_id: str, index: int, data: bytes) -> None:
        directory = self._chunk_dir(upload_id)
        await anyio.to_thread.run_sync(_write_new, directory, str(index), data)

    async def read_chunk(self, upload_id: str, index: int) -> bytes:
        path = self._chunk_dir(upload_id) / str(index)
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(
                f"chunk {index} of upload {upload_id} is not in {self.root}", index=index
            ) from None

    async def drop_chunks(self, upload_id: str) -> None:
        directory = self._chunk_dir(upload_id)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))


def _write_new(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` whole: to a temporary name first, then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{name}.{uuid.uuid4().hex}"
    try:
        with temporary.open("xb") as file:
            file.write(data)
        os.replace(temporary, directory / name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``, flushed to the disk."""
    with source.open("rb") as reading, target.open("xb") as writing:
        shutil.copyfileobj(reading, writing, 1024 * 1024)
        writing.flush()
        os.fsync(writing.fileno())
