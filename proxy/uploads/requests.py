"""The bodies of the upload operations (``upload.begin``, ``upload.chunk``, ``upload.commit``,
``upload.abort`` on ``slot/deploy``), validated at the slot before :class:`Uploads` sees them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["BeginRequest", "ChunkRequest", "UploadRef", "UploadRequest"]

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
