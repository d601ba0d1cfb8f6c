"""The bodies of the upload operations (``upload.begin``, ``upload.chunk``, ``upload.commit``,
``upload.abort`` on ``slot/deploy``), validated at the slot before :class:`Uploads` sees them;
and a chunk request's bytes (its attachment or its ``data``) and their SHA-256."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bus import PayloadObject
from bus.errors import InvalidRequest

__all__ = [
    "BeginRequest",
    "ChunkRequest",
    "UploadRef",
    "UploadRequest",
    "chunk_bytes",
    "chunk_sha256",
    "digest_mismatch",
]

HASH_ON_LOOP_MAX = 64 * 1024
"""Inline chunk data up to this size is hashed on the event loop (a thread hop costs more)."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class UploadRequest(BaseModel):
    """Base of the upload bodies: untrusted, so frozen and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: str = ""


class BeginRequest(UploadRequest):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kind: Literal["closure", "image"]
    size: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex
    chunk_size: Annotated[int, Field(gt=0)]
    metadata: dict[str, Any] = {}


class ChunkRequest(UploadRequest):
    upload_id: str
    index: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex
    data: bytes | None = None


class UploadRef(UploadRequest):
    upload_id: str


def digest_mismatch(expected: str, actual: str) -> InvalidRequest:
    """The commit's refusal: the assembled bytes are not what ``upload.begin`` announced."""
    return InvalidRequest(
        f"the uploaded bytes hash to {actual}, not the announced {expected}; "
        "the upload was discarded — upload again",
        expected=expected,
        actual=actual,
    )


def chunk_bytes(request: ChunkRequest, attachment: PayloadObject | None) -> bytes:
    if attachment is not None and request.data is None:
        return attachment.data
    if attachment is None and request.data is not None:
        return request.data
    raise InvalidRequest(
        f"chunk {request.index} carries its bytes either as the request's attachment or as "
        "the body's data: exactly one of the two",
        index=request.index,
    )


async def chunk_sha256(data: bytes, attachment: PayloadObject | None) -> str:
    """A chunk's SHA-256: a detached attachment's was checked against the signed envelope."""
    if attachment is not None and attachment.sha256 is not None:
        return attachment.sha256.hex()
    if len(data) <= HASH_ON_LOOP_MAX:
        return hashlib.sha256(data).hexdigest()
    return await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
