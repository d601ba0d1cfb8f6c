"""Chunked transfer, the receiving side: upload sessions spooled to disk, resumable, verified.

Each upload is a sparse spool file written chunk by chunk at its offset. The registry keeps the
session; how many chunks from the start are acknowledged is written, before each
acknowledgement, to a small progress file beside the spool file (and to the registry every half
second and at the end), so a proxy restart resumes from exactly the last acknowledged chunk.
A chunk's bytes come as the request's attachment (its digest already checked against the
envelope's signature, so it is not hashed again) or inline in the body (hashed in a worker
thread). The whole file's SHA-256 is computed as the acknowledged prefix advances
(:mod:`proxy.uploads.digest`); an acknowledged chunk is never written again. ``commit`` compares
that digest — or, for an upload resumed after a restart, a hash of the whole spool file — with
the announced one and moves the file into the artifact store (:mod:`proxy.uploads.artifacts`,
``<data dir>/artifacts/<sha256>`` or a shared directory): content-addressed, so a second
upload of the same bytes is skipped. Limits: total size, chunk size, open uploads per sender,
idle time, and room on the disk: an upload that would leave less than the registry's reserve
free (:mod:`proxy.registry.space`) is refused at ``begin``, and at a chunk it is refused and
discarded — its spool file deleted at once, so what it wrote is free again. The wire operations
are described in :mod:`bus.transfer`.

With a shared artifact store (``shared=True``: several proxies) the chunks go to the store and
their receipt to the registry instead of the spool file, so an upload continues through any
instance (:mod:`proxy.uploads.shared`); the rules above are unchanged, but the room checks are
made at commit, where the whole file is assembled next to the store.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bus import PayloadObject
from bus.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from bus.transfer import file_sha256
from proxy.registry.records import Upload
from proxy.registry.registry import Registry
from proxy.registry.space import DEFAULT_RESERVE_BYTES, disk_full, ensure_room, is_disk_full
from proxy.uploads.artifacts import FileStore
from proxy.uploads.digest import PrefixDigest, write_at
from proxy.uploads.requests import (
    BeginRequest,
    ChunkRequest,
    UploadRef,
    chunk_bytes,
    chunk_sha256,
    digest_mismatch,
)
from proxy.uploads.shared import SharedChunks
from proxy.uploads.spool import (
    make_sparse,
    progress_path,
    unfilled_bytes,
    with_progress,
    write_progress,
)
from proxy.uploads.store import ArtifactStore

__all__ = ["UploadLimits", "Uploads"]

logger = logging.getLogger(__name__)


REGISTRY_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_bytes: int = 8 * 1024**3
    max_chunk_bytes: int = 8 * 1024 * 1024
    max_open_per_sender: int = 4
    idle_timeout_s: float = 3600.0
    window: int = 16
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    """Free space kept on the data directory's disk for the registry."""


class Uploads:
    def __init__(
        self,
        registry: Registry,
        data_dir: Path,
        limits: UploadLimits,
        artifacts: ArtifactStore | None = None,
        *,
        shared: bool = False,
    ) -> None:
        """With ``shared``, uploads keep their chunks in ``artifacts`` and their received
        ranges in the registry, so any proxy sharing both continues them
        (:mod:`proxy.uploads.shared`); else in this proxy's spool directory."""
        self.registry = registry
        self.limits = limits
        self.spool_dir = data_dir / "spool"
        self.artifacts = artifacts or FileStore(data_dir / "artifacts")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._shared = (
            SharedChunks(registry, self.artifacts, limits.reserve_bytes) if shared else None
        )
        self._received: dict[str, set[int]] = {}
        self._open: dict[str, Upload] = {}  # open uploads, acknowledged prefix up to date
        self._written: dict[str, tuple[int, float]] = {}  # prefix in the registry, and when
        self._locks: dict[str, anyio.Lock] = {}
        self._digests: dict[str, PrefixDigest] = {}  # uploads opened by this process

    def in_progress(self) -> list[dict[str, Any]]:
        """The open uploads of this process, for the status: name, bytes received, size."""
        return [
            {
                "name": upload.name,
                "received_bytes": min(upload.size, upload.next_index * upload.chunk_size),
                "size": upload.size,
            }
            for upload in self._open.values()
        ]

    def artifact_location(self, sha256: str) -> str:
        """Where a committed artifact is, as a version records it."""
        return self.artifacts.location_of(sha256)

    async def has_artifact(self, sha256: str) -> bool:
        return await self.artifacts.has(sha256)

    async def local_artifact(self, sha256: str) -> Path:
        """A verified local copy of a committed artifact (fetched from a remote store)."""
        return await self.artifacts.local(sha256)

    async def keep_artifact(self, data: bytes) -> str:
        """Store bytes made by the service itself (a fit's archive); their digest."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not await self.artifacts.has(sha256):
            spool = self.artifacts.scratch_dir / f".incoming-{uuid.uuid4().hex}"
            try:
                await anyio.to_thread.run_sync(spool.write_bytes, data)
                await self.artifacts.put(spool, sha256)
            finally:
                spool.unlink(missing_ok=True)
        return sha256

    async def collect(self, referenced: set[str], unused_for_s: float) -> list[str]:
        """Delete the artifacts no version refers to, unused for ``unused_for_s``."""
        return await self.artifacts.collect(referenced, unused_for_s)

    async def begin(self, sender: str, request: BeginRequest) -> dict[str, Any]:
        if await self.artifacts.touch(request.sha256):  # in use: not collected for a while
            return {"complete": True, "artifact": request.sha256}
        self._check_limits(request)
        for upload in await self.registry.list_open_uploads(sender):
            if (upload.name, upload.sha256, upload.size, upload.chunk_size) == (
                request.name,
                request.sha256,
                request.size,
                request.chunk_size,
            ):
                logger.info(
                    "resuming upload %s of %s at chunk %d",
                    upload.upload_id,
                    upload.name,
                    upload.next_index,
                )
                return self._opened(await self._touch(upload))
        upload_id = uuid.uuid4().hex
        if self._shared is not None:
            spool_path = self._shared.spool_location(upload_id)
        else:
            await anyio.to_thread.run_sync(self._ensure_room_for, request)
            spool_path = str(self.spool_dir / upload_id)
        upload = await self.registry.create_upload(
            upload_id,
            sender=sender,
            name=request.name,
            kind=request.kind,
            size=request.size,
            sha256=request.sha256,
            chunk_size=request.chunk_size,
            spool_path=spool_path,
            metadata=request.metadata,
            max_open_per_sender=self.limits.max_open_per_sender,
        )
        if self._shared is None:
            spool = Path(spool_path)
            await anyio.to_thread.run_sync(make_sparse, spool, request.size)
            self._digests[upload_id] = PrefixDigest(spool, request.chunk_size, self.limits.window)
        logger.info(
            "upload %s of %s (%d bytes) opened by %s", upload_id, request.name, request.size, sender
        )
        return self._opened(upload)

    def _check_limits(self, request: BeginRequest) -> None:
        if request.size > self.limits.max_bytes:
            raise LimitExceeded(
                f"{request.size} bytes is over this service's upload limit of "
                f"{self.limits.max_bytes} bytes",
                size=request.size,
                limit=self.limits.max_bytes,
            )
        if request.chunk_size > self.limits.max_chunk_bytes:
            raise LimitExceeded(
                f"chunks of {request.chunk_size} bytes are over the limit of "
                f"{self.limits.max_chunk_bytes}",
                limit=self.limits.max_chunk_bytes,
            )

    def _ensure_room_for(self, request: BeginRequest) -> None:
        """Refuse a new upload the disk has no room for, counting what the open uploads' sparse
        spool files have yet to fill."""
        ensure_room(
            self.spool_dir,
            request.size + unfilled_bytes(self.spool_dir),
            self.limits.reserve_bytes,
            what=f"an upload of {request.size} bytes (with the open uploads' rest)",
        )

    def _opened(self, upload: Upload) -> dict[str, Any]:
        return {
            "complete": False,
            "upload_id": upload.upload_id,
            "next_index": upload.next_index,
            "chunk_size": upload.chunk_size,
            "chunk_count": upload.chunk_count,
            "window": self.limits.window,
        }

    async def _open_upload(self, sender: str, upload_id: str) -> Upload:
        upload = self._open.get(upload_id) if self._shared is None else None
        if upload is None:
            try:
                upload = await self.registry.get_upload(upload_id)
            except NotFound:
                upload = None
            if upload is not None and upload.state == "open":
                shared = self._shared is not None  # no progress file: the registry has it all
                upload = self._open[upload_id] = upload if shared else with_progress(upload)
        if upload is None or upload.sender != sender or upload.state != "open":
            raise NotFound(
                f"no open upload {upload_id!r} of yours; begin (or resume) it again",
                upload_id=upload_id,
            )
        return upload

    async def chunk(
        self, sender: str, request: ChunkRequest, attachment: PayloadObject | None = None
    ) -> dict[str, Any]:
        """Check a chunk — its bytes are the attachment or the body's ``data`` — write it, and
        acknowledge it with the new contiguous prefix."""
        data = chunk_bytes(request, attachment)
        upload = await self._open_upload(sender, request.upload_id)
        if request.index >= upload.chunk_count:
            raise InvalidRequest(
                f"chunk {request.index} is past the last chunk ({upload.chunk_count - 1})"
            )
        expected = min(upload.chunk_size, upload.size - request.index * upload.chunk_size)
        if len(data) != expected:
            raise InvalidRequest(
                f"chunk {request.index} has {len(data)} bytes; expected {expected}"
            )
        if await chunk_sha256(data, attachment) != request.sha256:
            raise InvalidRequest(
                f"chunk {request.index} does not match its SHA-256 (corrupted); send it again",
                index=request.index,
            )
        if self._shared is not None:
            return {"next_index": await self._store_shared(upload, request.index, data)}
        try:
            ensure_room(
                self.spool_dir,
                len(data),
                self.limits.reserve_bytes,
                what=f"chunk {request.index} of upload {upload.upload_id}",
            )
            return {"next_index": await self._store(upload, request.index, data)}
        except (LimitExceeded, OSError) as exc:
            if not isinstance(exc, LimitExceeded) and not is_disk_full(exc):
                raise
            await self._discard(upload)
            refused = (
                exc
                if isinstance(exc, LimitExceeded)
                else disk_full(self.spool_dir, what=f"writing chunk {request.index}")
            )
            raise LimitExceeded(
                f"{refused.message}; upload {upload.upload_id} was discarded (its spool file "
                "deleted): begin it again once there is room",
                **refused.details,
                upload_id=upload.upload_id,
                discarded=True,
            ) from exc

    async def _store_shared(self, upload: Upload, index: int, data: bytes) -> int:
        assert self._shared is not None
        try:
            stored = await self._shared.store_chunk(upload, index, data)
        except (NotFound, Conflict):  # finished through another instance meanwhile
            self._forget(upload.upload_id)
            await self._shared.discard(upload)  # what this chunk just wrote, were it left
            raise NotFound(
                f"no open upload {upload.upload_id!r} of yours; begin (or resume) it again",
                upload_id=upload.upload_id,
            ) from None
        self._open[upload.upload_id] = stored
        return stored.next_index

    def _lock(self, upload_id: str) -> anyio.Lock:
        return self._locks.setdefault(upload_id, anyio.Lock())

    def _latest(self, upload: Upload) -> Upload:
        """The upload as last written by this service (a read may be older than that)."""
        cached = self._open.get(upload.upload_id)
        if cached is None or upload.next_index > cached.next_index:
            cached = self._open[upload.upload_id] = upload
        return cached

    async def _touch(self, upload: Upload) -> Upload:
        """Restart a resumed upload's idle time (a resumed upload is not idle)."""
        if self._shared is not None:  # the registry's record is every instance's
            return await self.registry.advance_upload(upload.upload_id, upload.next_index)
        async with self._lock(upload.upload_id):
            current = self._latest(with_progress(upload))
            touched = await self.registry.advance_upload(upload.upload_id, current.next_index)
            self._open[upload.upload_id] = touched
            self._written[upload.upload_id] = (touched.next_index, time.monotonic())
            return touched

    async def _store(self, upload: Upload, index: int, data: bytes) -> int:
        """Write a checked chunk, hash the prefix it completes and acknowledge it, one chunk of
        an upload at a time. A chunk already acknowledged is not written again: its bytes are
        hashed, and the spool file must stay what the digest says."""
        upload_id = upload.upload_id
        async with self._lock(upload_id):
            current = self._latest(upload)
            if index < current.next_index:
                return current.next_index
            received = self._received.setdefault(upload_id, set())
            next_index = current.next_index
            while next_index == index or next_index in received:
                next_index += 1
            await self._write(current, index, data, next_index)
            received.add(index)
            received.difference_update(range(current.next_index, next_index))
            if next_index != current.next_index:
                await self._record(current, next_index)
            return next_index

    async def _write(self, upload: Upload, index: int, data: bytes, next_index: int) -> None:
        upload_id = upload.upload_id
        digest = self._digests.get(upload_id)
        if digest is not None and digest.next_index != upload.next_index:
            logger.warning("upload %s: running digest out of step; hashing at commit", upload_id)
            digest = self._digests.pop(upload_id, None)
        spool = Path(upload.spool_path)
        if digest is None:
            await anyio.to_thread.run_sync(write_at, spool, index * upload.chunk_size, data)
            return
        try:
            await anyio.to_thread.run_sync(digest.store, index, data, next_index)
        except BaseException:
            self._digests.pop(upload_id, None)  # half-advanced: commit hashes the file
            raise

    async def _record(self, upload: Upload, next_index: int) -> None:
        """Make the acknowledged prefix durable before it is acknowledged: in the upload's
        progress file at once (8 bytes beside the spool file, so a restarted service resumes
        from exactly there), in the registry when the upload completes and at most every
        REGISTRY_EVERY_S otherwise (a registry transaction per chunk serialized the upload)."""
        write_progress(upload, next_index)
        updated = upload.model_copy(update={"next_index": next_index})
        now = time.monotonic()
        written_at = self._written.get(upload.upload_id, (0, 0.0))[1]
        if next_index == upload.chunk_count or now - written_at >= REGISTRY_EVERY_S:
            updated = await self.registry.advance_upload(upload.upload_id, next_index)
            self._written[upload.upload_id] = (next_index, now)
        self._open[upload.upload_id] = updated

    async def commit(self, sender: str, request: UploadRef) -> dict[str, Any]:
        upload = await self._open_upload(sender, request.upload_id)
        if upload.next_index < upload.chunk_count:
            raise InvalidRequest(
                f"upload {upload.upload_id} is missing chunks from {upload.next_index} of "
                f"{upload.chunk_count}; resume it before committing",
                next_index=upload.next_index,
            )
        if self._shared is not None:
            try:
                await self._shared.commit(upload)
            except InvalidRequest:
                await self._discard(upload)
                raise
        else:
            await self._commit_spool(upload)
        try:
            await self.registry.finish_upload(upload.upload_id, "committed")
        except NotFound:
            if self._shared is None:
                raise
            # shared: another instance committed it first (the artifact is verified and whole)
        self._forget(upload.upload_id)
        logger.info("upload %s committed as artifact %s", upload.upload_id, upload.sha256)
        return {"artifact": upload.sha256, "size": upload.size, "kind": upload.kind}

    async def _commit_spool(self, upload: Upload) -> None:
        spool = Path(upload.spool_path)
        actual = await self._file_digest(upload)
        if actual != upload.sha256:
            await self._discard(upload)
            raise digest_mismatch(upload.sha256, actual)
        await self.artifacts.put(spool, upload.sha256)
        progress_path(upload).unlink(missing_ok=True)

    async def _file_digest(self, upload: Upload) -> str:
        """The spool file's SHA-256: the running digest when this process saw every chunk,
        else (a resumed upload after a restart) a hash of the whole file."""
        async with self._lock(upload.upload_id):
            digest = self._digests.get(upload.upload_id)
            if digest is not None and digest.next_index == upload.chunk_count:
                return digest.hexdigest()
            logger.info("upload %s: hashing the spool file to commit", upload.upload_id)
            return await anyio.to_thread.run_sync(file_sha256, Path(upload.spool_path))

    async def abort(self, sender: str, request: UploadRef) -> dict[str, Any]:
        await self._discard(await self._open_upload(sender, request.upload_id))
        return {}

    async def expire_idle(self) -> int:
        """Abort uploads idle longer than the limit; returns how many."""
        horizon = time.time_ns() - int(self.limits.idle_timeout_s * 1e9)
        idle = await self.registry.list_idle_uploads(horizon)
        for upload in idle:
            logger.info("upload %s of %s idle too long; aborted", upload.upload_id, upload.name)
            await self._discard(upload)
        return len(idle)

    async def _discard(self, upload: Upload) -> None:
        # The files first: on a full disk, deleting them is what lets the registry write.
        if self._shared is not None:
            await self._shared.discard(upload)
        else:
            Path(upload.spool_path).unlink(missing_ok=True)
            progress_path(upload).unlink(missing_ok=True)
        self._forget(upload.upload_id)
        await self.registry.finish_upload(upload.upload_id, "aborted")

    def _forget(self, upload_id: str) -> None:
        self._open.pop(upload_id, None)
        self._written.pop(upload_id, None)
        self._received.pop(upload_id, None)
        self._locks.pop(upload_id, None)
        self._digests.pop(upload_id, None)
