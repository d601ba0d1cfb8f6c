"""Chunked transfer, the sending side: move a large file to a service over request/response.

The service answers four operations on one slot (each a request body with an ``op``):

    upload.begin  {name, kind, size, sha256 (hex), chunk_size, metadata}
                  → {upload_id, next_index, chunk_size, chunk_count, window, complete, artifact}
    upload.chunk  {upload_id, index, sha256 (hex of this chunk)} + attachment → {next_index}
    upload.commit {upload_id} → {artifact (sha256 hex), size, kind}
    upload.abort  {upload_id} → {}

A chunk's bytes travel as the request's *attachment* (:mod:`bus.rpc`): a ``1.0.0.0`` binary PO
right after the request PO, not msgpack-encoded into the body. Over 64 KiB it is detached, so the
envelope's signed digest of it is the chunk's SHA-256: the service checks the bytes against the
signed digest when it verifies the envelope and compares that digest with the body's
``sha256``, no second hash. A chunk may instead carry its bytes in the body as ``data`` (bin)
with no attachment — simpler for other clients; the service then hashes them. Both, or neither,
is ``invalid_request``.

This side hashes the file before ``begin``, and every chunk at the same time in a second worker
thread (the service is idle then); sealing a chunk reuses its digest. A file changed after that
makes its chunks fail the service's digest check — they time out, and the upload stops with a
``conflict`` saying the file changed.

``begin`` with the same sender, name, size, digest and chunk size as an open upload *resumes* it:
the reply's ``next_index`` is the first chunk the service has not acknowledged contiguously. If
the service already holds the artifact, the reply is just ``{complete: true, artifact}`` and
nothing is sent. Up to ``window`` chunks are
in flight at once; the file is read chunk by chunk, never whole.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio

from bus.errors import (
    BusError,
    Conflict,
    DecodeError,
    Overloaded,
    RequestTimeout,
    TransportError,
)
from bus.po import PayloadObject

if TYPE_CHECKING:
    from bus.client import BusClient

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_WINDOW",
    "UploadProgress",
    "chunk_sha256s",
    "file_sha256",
    "upload_file",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1024 * 1024
DEFAULT_WINDOW = 16


@dataclass(frozen=True, slots=True)
class UploadProgress:
    name: str
    acked_bytes: int
    total_bytes: int
    chunks_acked: int
    chunk_count: int
    resumed_from: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_bytes == 0 else self.acked_bytes / self.total_bytes


def file_sha256(path: Path, *, block: int = 4 * 1024 * 1024) -> str:
    """SHA-256 of a file, read in blocks (call through a worker thread for big files)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while data := file.read(block):
            digest.update(data)
    return digest.hexdigest()


def chunk_sha256s(path: Path, chunk_size: int) -> list[bytes]:
    """The SHA-256 of each ``chunk_size`` piece of a file, read into one reused buffer (call
    through a worker thread)."""
    digests: list[bytes] = []
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while length := file.readinto(buffer):
            digests.append(hashlib.sha256(view[:length]).digest())
    return digests


async def _digests(source: Path, chunk_size: int) -> tuple[str, list[bytes]]:
    """The file's SHA-256 and its chunks', in two worker threads at once."""
    whole: list[str] = []

    async def hash_whole() -> None:
        whole.append(await anyio.to_thread.run_sync(file_sha256, source))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(hash_whole)
        chunks = await anyio.to_thread.run_sync(chunk_sha256s, source, chunk_size)
    return whole[0], chunks


async def upload_file(
    client: BusClient,
    slot_uri: str,
    path: str | Path,
    *,
    name: str,
    kind: str,
    metadata: dict[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    window: int = DEFAULT_WINDOW,
    timeout_s: float = 30.0,
    retries: int = 5,
    progress: Callable[[UploadProgress], None] | None = None,
) -> dict[str, Any]:
    """Upload ``path`` and commit it; return the commit reply (``artifact`` is its SHA-256).
    A lost connection, a timed-out chunk or an ``overloaded`` answer (after a short pause)
    resumes from the service's acknowledged prefix, up to ``retries`` times."""
    source = Path(path)
    stamp = _stamp(source)
    size = stamp[0]
    digest, chunk_digests = await _digests(source, chunk_size)
    begin = {
        "op": "upload.begin",
        "name": name,
        "kind": kind,
        "size": size,
        "sha256": digest,
        "chunk_size": chunk_size,
        "metadata": metadata or {},
    }
    started = time.monotonic()
    for attempt in range(retries + 1):
        try:
            opened = await client.request(slot_uri, begin, timeout_s=timeout_s)
            if opened.get("complete"):
                return {"artifact": digest, "size": size, "kind": kind, "already_present": True}
            sender = _ChunkSender(client, slot_uri, source, opened, timeout_s, progress, name)
            sender.check_layout(chunk_size, chunk_digests)
            await sender.send_all(min(window, int(opened.get("window", window))), started)
            return dict(
                await client.request(
                    slot_uri,
                    {"op": "upload.commit", "upload_id": opened["upload_id"]},
                    timeout_s=max(timeout_s, size / 50e6),
                )
            )
        except (RequestTimeout, TransportError, Overloaded) as error:
            if _stamp(source) != stamp:
                raise Conflict(
                    f"{source} changed while it was being uploaded; upload it again",
                    path=str(source),
                ) from error
            if attempt == retries:
                raise
            logger.warning("upload of %s interrupted (%s); resuming", name, error.message)
            if isinstance(error, Overloaded):  # the service is busy (or we hold our share)
                await anyio.sleep(OVERLOADED_BACKOFF_S * (attempt + 1))
    raise AssertionError("unreachable")


OVERLOADED_BACKOFF_S = 0.5


def _stamp(source: Path) -> tuple[int, int]:
    """What tells a changed file: its size and modification time."""
    status = source.stat()
    return status.st_size, status.st_mtime_ns


def _read_chunk(file: BinaryIO, offset: int, size: int, digest: bytes) -> PayloadObject:
    """A chunk as a binary PO with the SHA-256 hashed before ``begin``, off the event loop;
    sealing it reuses the digest."""
    file.seek(offset)
    return PayloadObject.binary(file.read(size), sha256=digest)


class _ChunkSender:
    def __init__(
        self,
        client: BusClient,
        slot_uri: str,
        source: Path,
        opened: dict[str, Any],
        timeout_s: float,
        progress: Callable[[UploadProgress], None] | None,
        name: str,
    ) -> None:
        try:
            self.upload_id = str(opened["upload_id"])
            self.chunk_size = int(opened["chunk_size"])
            self.chunk_count = int(opened["chunk_count"])
            self.first = int(opened["next_index"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"the service's upload.begin reply is malformed: {exc}") from exc
        self.client = client
        self.slot_uri = slot_uri
        self.source = source
        self.timeout_s = timeout_s
        self.progress = progress
        self.name = name
        self.size = source.stat().st_size
        self.acked = 0
        self.digests: list[bytes] = []  # each chunk's SHA-256

    def check_layout(self, chunk_size: int, digests: list[bytes]) -> None:
        """The service cuts the file as it was asked to (the chunks hashed before ``begin``)."""
        if (self.chunk_size, self.chunk_count) != (chunk_size, len(digests)):
            raise DecodeError(
                f"the service's upload.begin reply has {self.chunk_count} chunks of "
                f"{self.chunk_size} bytes; this file is {len(digests)} chunks of {chunk_size}"
            )
        self.digests = digests

    async def send_all(self, window: int, started: float) -> None:
        limiter = anyio.Semaphore(max(1, window))
        try:
            with self.source.open("rb") as file:
                async with anyio.create_task_group() as task_group:
                    for index in range(self.first, self.chunk_count):
                        await limiter.acquire()
                        offset = index * self.chunk_size
                        chunk = await anyio.to_thread.run_sync(
                            _read_chunk, file, offset, self.chunk_size, self.digests[index]
                        )
                        task_group.start_soon(self._send, index, chunk, limiter, started)
        except BaseExceptionGroup as group:
            # A failed chunk cancels the others; raise its own error (a timeout to resume
            # from, or the service's typed refusal), not the task group's wrapper.
            failures, others = group.split(BusError)
            if failures is None or others is not None:
                raise
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    async def _send(
        self, index: int, chunk: PayloadObject, limiter: anyio.Semaphore, started: float
    ) -> None:
        assert chunk.sha256 is not None
        try:
            body = {
                "op": "upload.chunk",
                "upload_id": self.upload_id,
                "index": index,
                "sha256": chunk.sha256.hex(),
            }
            await self.client.request(
                self.slot_uri, body, timeout_s=self.timeout_s, attachment=chunk
            )
        finally:
            limiter.release()
        self.acked += 1
        if self.progress is not None:
            done = self.first + self.acked
            self.progress(
                UploadProgress(
                    name=self.name,
                    acked_bytes=min(self.size, done * self.chunk_size),
                    total_bytes=self.size,
                    chunks_acked=done,
                    chunk_count=self.chunk_count,
                    resumed_from=self.first,
                    elapsed_s=time.monotonic() - started,
                )
            )
