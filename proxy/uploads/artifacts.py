"""Where committed artifacts live: a content-addressed directory, ``<root>/<sha256>``.

By default the root is ``<data dir>/artifacts``. ``modelbus serve --artifacts
file:///shared/path`` (or a plain path) puts it on a filesystem several proxies share (NFS, a
Kubernetes ReadWriteMany volume), mounted at the same path on each, so any instance can start
replicas of a version deployed through another: the registry records the artifact's path.

Content addressing makes sharing safe without locks: a file appears under its digest only
whole and verified, by an atomic rename inside the root, and two instances committing the same
bytes at once rename the same content over each other. A spool file on the same filesystem is
renamed into place; from another filesystem it is copied to ``<root>/.incoming-…``, hashed again
(what the copy wrote is what becomes visible), then renamed. Nothing is ever modified in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio

from bus.errors import InternalError, InvalidRequest
from bus.transfer import file_sha256

__all__ = ["ArtifactStore", "artifact_root"]


def artifact_root(location: str | Path) -> Path:
    """The directory named by ``file:///path`` or a plain path; InvalidRequest for other URLs
    (``s3://`` is not implemented yet)."""
    text = str(location)
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidRequest(
            f"artifacts must be a directory or a file:/// URL, not a {parts.scheme}:// URL "
            "(an S3 store is not implemented yet)"
        )
    return Path(unquote(parts.path))


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put(self, spool: Path, sha256: str) -> Path:
        """Make the verified file ``spool`` visible as ``sha256`` (moving it); its path."""
        target = self.path(sha256)
        try:
            os.replace(spool, target)
            return target
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: another filesystem
                raise InternalError(f"cannot store artifact {sha256}: {exc.strerror}") from exc
        incoming = self.root / f".incoming-{uuid.uuid4().hex}"
        try:
            await anyio.to_thread.run_sync(_copy, spool, incoming)
            copied = await anyio.to_thread.run_sync(file_sha256, incoming)
            if copied != sha256:
                raise InternalError(f"artifact {sha256} changed while being copied to the store")
            os.replace(incoming, target)
        finally:
            incoming.unlink(missing_ok=True)
        spool.unlink(missing_ok=True)
        return target


def _copy(source: Path, target: Path) -> None:
    with source.open("rb") as reading, target.open("xb") as writing:
        shutil.copyfileobj(reading, writing, 1024 * 1024)
        writing.flush()
        os.fsync(writing.fileno())
