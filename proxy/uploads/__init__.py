"""Chunked uploads, the receiving side: sessions spooled to disk (or, shared by several proxies,
to the artifact store), resumable, digest-checked; and the artifact stores themselves.

Door: it uses the registry (upload rows); not the service or the backend. The operations' bodies
(:mod:`proxy.uploads.requests`) are validated by the deploy slot before they reach it.
"""

from proxy.uploads.artifacts import FileStore, artifact_root
from proxy.uploads.requests import BeginRequest, ChunkRequest, UploadRef
from proxy.uploads.sessions import UploadLimits, Uploads
from proxy.uploads.store import ArtifactStore, open_store

__all__ = [
    "ArtifactStore",
    "BeginRequest",
    "ChunkRequest",
    "FileStore",
    "UploadLimits",
    "UploadRef",
    "Uploads",
    "artifact_root",
    "open_store",
]
