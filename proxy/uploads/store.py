"""The artifact store seam: committed artifacts by digest, and the chunks of shared uploads.

Two implementations, picked by the ``--artifacts`` location from a closed table (the S3 one
imported lazily, so boto3 loads only where it is used):

- a directory (``/path`` or ``file:///path``, :class:`proxy.uploads.artifacts.FileStore`):
  ``<root>/<sha256>``, on a filesystem several proxies may share (NFS, a ReadWriteMany volume);
- an S3-compatible bucket (``s3://bucket/prefix``, :class:`proxy.uploads.s3.S3Store`):
  ``<prefix>/<sha256>``, with a local cache of verified copies under the data directory.

The contract, which ``tests/proxy/uploads/test_store.py`` runs over both:

- **content-addressed**: an artifact is named by the SHA-256 of its bytes, written once and
  never modified; :meth:`ArtifactStore.put` is put-if-absent (a second put of the same digest
  changes nothing), and takes a file already verified against that digest;
- **visible only whole**: a reader never sees part of an artifact (a rename inside the
  directory; an S3 object appears only when its upload completes);
- **verified where used**: :meth:`ArtifactStore.local` gives a local file whose bytes hash to
  the digest — the S3 store hashes every copy it downloads before it is used;
- **chunks of uploads** (:mod:`proxy.uploads.shared`): ``put_chunk``/``read_chunk``/
  ``drop_chunks`` keep an upload's chunks where every instance reaches them, so an upload begun
  through one proxy can be finished through another.

Errors: a missing artifact or chunk is NotFound; a store that cannot be reached or written is an
InternalError naming the location (never its credentials).
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bus.errors import InvalidRequest
from proxy.uploads.artifacts import FileStore, artifact_root

__all__ = ["ArtifactStore", "open_store"]


class ArtifactStore(Protocol):
    """Where committed artifacts (and the chunks of shared uploads) live."""

    @property
    def location(self) -> str:
        """The store, for logs and errors: a directory or ``s3://bucket/prefix``."""
        ...

    @property
    def scratch_dir(self) -> Path:
        """A local directory on which a file to :meth:`put` is best assembled (a rename away)."""
        ...

    async def check(self) -> None:
        """InternalError, naming the location, unless the store can be reached and listed (a
        service checks at start, so a wrong bucket or key stops it rather than its first
        upload)."""
        ...

    def location_of(self, sha256: str) -> str:
        """Where the artifact is, as a version records it (``model_data_path``)."""
        ...

    async def has(self, sha256: str) -> bool: ...

    async def touch(self, sha256: str) -> bool:
        """Mark the artifact as in use now (it is not collected for a while); False if absent."""
        ...

    async def put(self, path: Path, sha256: str) -> None:
        """Store the file ``path``, already verified to hash to ``sha256``, under that digest
        (the file is consumed). Put-if-absent: an artifact already held is kept as it is."""
        ...

    async def local(self, sha256: str) -> Path:
        """A local file holding the artifact, verified against its digest; NotFound if absent."""
        ...

    async def local_at(self, location: str) -> Path:
        """:meth:`local` for a version's recorded location (:meth:`location_of`)."""
        ...

    async def collect(self, referenced: Set[str], unused_for_s: float) -> list[str]:
        """Delete the artifacts not in ``referenced`` unused for ``unused_for_s``; their digests."""
        ...

    def chunks_location(self, upload_id: str) -> str:
        """Where a shared upload's chunks are kept (recorded as its spool path)."""
        ...

    async def put_chunk(self, upload_id: str, index: int, data: bytes) -> None: ...

    async def read_chunk(self, upload_id: str, index: int) -> bytes: ...

    async def drop_chunks(self, upload_id: str) -> None:
        """Delete every chunk of the upload (none left is fine)."""
        ...


def open_store(location: str | Path, cache_dir: Path) -> ArtifactStore:
    """The store at ``location``: a directory, ``file:///path`` or ``s3://bucket/prefix``
    (``cache_dir`` holds the S3 store's verified local copies). InvalidRequest for anything else.
    """
    text = str(location)
    if text.startswith("s3://"):
        from proxy.uploads.s3 import S3Store  # boto3 only where an S3 store is used

        parts = urlsplit(text)
        if "@" in parts.netloc or ":" in parts.netloc:  # never repeat what may be a secret
            raise InvalidRequest(
                "an S3 artifact store is s3://bucket/prefix with no user, password or port in "
                "it: the endpoint and credentials come from the AWS_* environment variables"
            )
        if not parts.netloc or parts.query or parts.fragment:
            raise InvalidRequest(
                f"an S3 artifact store is s3://bucket/prefix, not {text!r} (the endpoint and "
                "credentials come from the AWS_* environment variables)"
            )
        return S3Store(parts.netloc, parts.path.strip("/"), cache_dir)
    return FileStore(artifact_root(text))
