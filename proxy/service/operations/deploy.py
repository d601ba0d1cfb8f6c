"""The ``slot/deploy`` operations: uploads of artifacts, and deploying a model version from one.

Nothing runs that a valid grant did not authorize: only requests verified on ``slot/deploy``
reach here, an artifact is only the bytes such a request uploaded (content-addressed by SHA-256),
and a closure is checked against this interpreter before it is registered.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field

from bus import artifact
from bus.errors import InvalidRequest, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.records import ADAPTIVE_BATCH_SIZE, InputType, ModelName, Sha256
from proxy.registry.registry import Registry
from proxy.service.forecast.metadata import check_metadata
from proxy.service.quotas import check_metadata as check_metadata_size
from proxy.service.slots import Body, Op
from proxy.service.versions import VersionRouter, start_model
from proxy.uploads import BeginRequest, ChunkRequest, UploadRef, Uploads

__all__ = ["MAX_REPLICAS", "DeployOps"]

logger = logging.getLogger(__name__)

MAX_REPLICAS = 64
"""Replicas one version may ask for (the backend's own limit is the same by default)."""


class DeployBody(Body):
    name: ModelName
    version: ModelName
    input_type: InputType
    artifact: Sha256
    kind: Literal["closure", "image"] = "closure"
    image: str | None = None
    labels: list[Annotated[str, Field(max_length=256)]] = Field(default=[], max_length=64)
    metadata: dict[str, Any] = {}
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    batch_size: int = ADAPTIVE_BATCH_SIZE
    make_current: bool = True


class DeployOps:
    def __init__(
        self,
        registry: Registry,
        uploads: Uploads,
        backend: EmbeddedBackend,
        router: VersionRouter,
    ) -> None:
        self.registry = registry
        self.uploads = uploads
        self.backend = backend
        self.router = router

    def table(self) -> dict[str, Op[Any]]:
        return {
            "upload.begin": Op(BeginRequest, self.begin),
            "upload.chunk": Op(ChunkRequest, self.uploads.chunk, attachment=True),
            "upload.commit": Op(UploadRef, self.uploads.commit),
            "upload.abort": Op(UploadRef, self.uploads.abort),
            "model.deploy": Op(DeployBody, self.deploy),
        }

    async def begin(self, sender: str, request: BeginRequest) -> dict[str, Any]:
        check_metadata_size(request.metadata, what="the upload's metadata")
        return await self.uploads.begin(sender, request)

    async def deploy(self, sender: str, request: DeployBody) -> dict[str, Any]:
        check_metadata_size(request.metadata, what="the version's metadata")
        self.backend.check_replica_budget(request.name, request.version, request.replicas)
        path = self.uploads.artifact_path(request.artifact)
        if not self.uploads.has_artifact(request.artifact):
            raise NotFound(
                f"artifact {request.artifact} is not on this service; upload it first",
                artifact=request.artifact,
            )
        check_metadata(request.metadata)  # a map declaring the range API must be valid
        if request.kind == "image" and not request.image:
            raise InvalidRequest("an image deploy names the image (repository:tag)")
        if request.batch_size > (limit := self.backend.settings.max_batch_size):
            raise InvalidRequest(
                f"batch_size {request.batch_size} is over this service's limit of {limit}",
                limit=limit,
            )
        # Check the artifact as the backend will, so a refused deploy registers nothing: an
        # image is loaded into the container engine now (a closure is checked against this
        # interpreter; an image's worker checks its own closure).
        if request.kind == "image":
            assert request.image is not None
            await self.backend.load_image(path, request.image)
        else:
            artifact.check_compatible(artifact.read_manifest(path))
        model = await self.registry.register_model(
            request.name,
            request.version,
            input_type=request.input_type,
            artifact_kind=request.kind,
            artifact_sha256=request.artifact,
            artifact_path=str(path),
            image=request.image if request.kind == "image" else None,
            labels=request.labels,
            metadata=request.metadata,
            batch_size=request.batch_size,
            desired_replicas=request.replicas,
            make_current=request.make_current,
        )
        logger.info(
            "deployed %s:%s (%s) for %s", model.name, model.version, model.artifact_kind, sender
        )
        await start_model(self.backend, model, request.replicas)
        if model.is_current:
            self.router.switch(model.name, model.version)
        return model.to_clipper() | {"replicas": request.replicas}
