"""Uploads shared by several proxies: chunks in the artifact store, their receipt in the registry.

With a shared artifact store (``--artifacts file:///shared/path`` or ``s3://bucket/prefix``)
an upload is not tied to the proxy that opened it: a client whose requests are spread over
several instances (MQTT shared subscriptions), or that resumes after one instance died, goes on
through any other. So nothing of an upload stays on one machine:

- each checked chunk is written to the store (``<store>/.uploads/<upload id>/<index>``,
  :meth:`proxy.uploads.store.ArtifactStore.put_chunk`) *before* it is recorded;
- then recorded in the registry in one transaction (:meth:`proxy.registry.uploads.UploadStore.
  receive_chunk`): the received ranges are the contiguous prefix ``next_index`` plus the chunks
  received beyond it, so every instance answers ``begin`` (resume) and ``chunk`` with the same
  ``next_index``, and an acknowledged chunk is durable wherever the client goes next;
- ``commit``, on whichever instance gets it, reads the chunks back in order, hashes them as it
  writes the whole file next to the store (:attr:`~proxy.uploads.store.ArtifactStore.
  scratch_dir`), and only a file whose SHA-256 is the announced one is put into the store under
  that digest — verified before it becomes visible. A mismatch, or a chunk missing or of the
  wrong length in the store, discards the upload (its chunks deleted).

Two instances committing one upload at once both assemble it; the artifact is content-addressed,
so both put the same bytes, and the second to close the upload finds it gone (NotFound).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path

import anyio

from bus.errors import NotFound
from proxy.registry.records import Upload
from proxy.registry.registry import Registry
from proxy.registry.space import ensure_room
from proxy.uploads.requests import digest_mismatch
from proxy.uploads.store import ArtifactStore

__all__ = ["SharedChunks"]

logger = logging.getLogger(__name__)

READ_AHEAD = 8
"""Chunks read from the store at once while a commit assembles the file (8 MiB chunks: 64 MiB)."""


class SharedChunks:
    """The chunk side of shared uploads (the sessions module keeps the protocol's rules)."""

    def __init__(self, registry: Registry, store: ArtifactStore, reserve_bytes: int) -> None:
        self.registry = registry
        self.store = store
        self.reserve_bytes = reserve_bytes

    def spool_location(self, upload_id: str) -> str:
        return self.store.chunks_location(upload_id)

    async def store_chunk(self, upload: Upload, index: int, data: bytes) -> Upload:
        """Write a checked chunk to the store, then record it; the upload as recorded."""
        await self.store.put_chunk(upload.upload_id, index, data)
        return await self.registry.receive_chunk(upload.upload_id, index)

    async def commit(self, upload: Upload) -> None:
        """Assemble the chunks, verify the whole digest and put the artifact in the store;
        InvalidRequest when the bytes are not what was announced (the caller discards it)."""
        scratch = self.store.scratch_dir
        await anyio.to_thread.run_sync(
            lambda: ensure_room(
                scratch, upload.size, self.reserve_bytes, what=f"committing {upload.upload_id}"
            )
        )
        assembled = scratch / f".incoming-{uuid.uuid4().hex}"
        try:
            actual = await self._assemble(upload, assembled)
            if actual != upload.sha256 and await self.store.has(upload.sha256):
                return  # another instance committed it meanwhile (a re-sent commit): it is whole
            if actual != upload.sha256:
                raise digest_mismatch(upload.sha256, actual)
            await self.store.put(assembled, upload.sha256)
        finally:
            assembled.unlink(missing_ok=True)
        await self.store.drop_chunks(upload.upload_id)

    async def _assemble(self, upload: Upload, target: Path) -> str:
        """Write chunks ``0 .. chunk_count - 1`` from the store to ``target``, reading up to
        READ_AHEAD of them at once; their SHA-256 (``"missing: …"`` or ``"short: …"`` when a
        chunk is not in the store as recorded)."""
        digest = hashlib.sha256()
        with target.open("xb") as file:
            for start in range(0, upload.chunk_count, READ_AHEAD):
                indexes = range(start, min(start + READ_AHEAD, upload.chunk_count))
                read: dict[int, bytes | None] = {}
                async with anyio.create_task_group() as group:
                    for index in indexes:
                        group.start_soon(self._read, upload.upload_id, index, read)
                for index in indexes:
                    data = read[index]
                    if data is None:
                        logger.warning("upload %s: chunk %d is missing", upload.upload_id, index)
                        return f"missing: chunk {index} is not in the store"
                    expected = min(upload.chunk_size, upload.size - index * upload.chunk_size)
                    if len(data) != expected:
                        return f"short: chunk {index} has {len(data)} bytes, not {expected}"

                    def write(data: bytes = data) -> None:
                        digest.update(data)
                        file.write(data)

                    await anyio.to_thread.run_sync(write)
        return digest.hexdigest()

    async def _read(self, upload_id: str, index: int, into: dict[int, bytes | None]) -> None:
        try:
            into[index] = await self.store.read_chunk(upload_id, index)
        except NotFound:
            into[index] = None

    async def discard(self, upload: Upload) -> None:
        await self.store.drop_chunks(upload.upload_id)
