"""Chunked uploads, the receiving side: sessions spooled to disk, resumable, digest-checked.

Door: it uses the registry (upload rows); not the service or the backend. The operations' bodies
(:mod:`proxy.uploads.requests`) are validated by the deploy slot before they reach it.
"""

from proxy.uploads.artifacts import ArtifactStore, artifact_root
from proxy.uploads.requests import BeginRequest, ChunkRequest, UploadRef
from proxy.uploads.sessions import UploadLimits, Uploads

__all__ = [
    "ArtifactStore",
    "BeginRequest",
    "ChunkRequest",
    "UploadLimits",
    "UploadRef",
    "Uploads",
    "artifact_root",
]
