"""The ``slot/deploy`` operations: uploads of artifacts, and deploying a model version from one.

Nothing runs that a valid grant did not authorize: only requests verified on ``slot/deploy``
reach here, an artifact is only the bytes such a request uploaded (content-addressed by SHA-256),
and a closure is checked against this interpreter before it is registered.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any, Literal

from pydantic import Field

from bus import artifact
from bus.errors import InvalidRequest, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.backend.remote_v2 import V2Endpoint
from proxy.registry.records import (
    ADAPTIVE_BATCH_SIZE,
    FIT_STATE_KEY,
    InputType,
    ModelName,
    ModelVersion,
    Sha256,
)
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
    artifact: Sha256 | None = None
    """The uploaded artifact; none for a v2 version."""
    kind: Literal["closure", "image", "v2"] = "closure"
    image: str | None = None
    v2_url: str | None = None
    """A v2 version: the Open Inference Protocol server's base URL (http or https)."""
    v2_model: str | None = None
    """A v2 version: the server's name for the model."""
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
        if FIT_STATE_KEY in request.metadata:
            raise InvalidRequest(
                f"the metadata key {FIT_STATE_KEY!r} is reserved: only a fit sets it",
                key=FIT_STATE_KEY,
            )
        if request.kind == "v2":
            return await self._deploy_v2(sender, request)
        if request.v2_url is not None or request.v2_model is not None:
            raise InvalidRequest("v2_url and v2_model are for a v2 deploy (kind 'v2') only")
        if request.artifact is None:
            raise InvalidRequest(f"a {request.kind} deploy names its uploaded artifact")
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
            artifact.check_compatible(artifact.check_archive(path))
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
        return await self._start(model, request.replicas)

    async def _deploy_v2(self, sender: str, request: DeployBody) -> dict[str, Any]:
        """A version served by an Open Inference Protocol server: nothing is uploaded; the
        server's URL and model name are checked, registered, and the backend forwards to it."""
        if request.artifact is not None or request.image is not None:
            raise InvalidRequest("a v2 deploy has no artifact or image: it names v2_url, v2_model")
        if request.v2_url is None or request.v2_model is None:
            raise InvalidRequest("a v2 deploy names the server (v2_url) and its model (v2_model)")
        endpoint = V2Endpoint(request.v2_url, request.v2_model, request.input_type)
        url = endpoint.url
        identity = hashlib.sha256(f"{url}\n{endpoint.model}".encode()).hexdigest()
        model = await self.registry.register_model(
            request.name,
            request.version,
            input_type=request.input_type,
            artifact_kind="v2",
            artifact_sha256=identity,
            artifact_path=url,
            image=endpoint.model,
            labels=request.labels,
            metadata=request.metadata,
            batch_size=request.batch_size,
            desired_replicas=1,
            make_current=request.make_current,
        )
        logger.info("deployed %s:%s (v2 at %s) for %s", model.name, model.version, url, sender)
        return await self._start(model, 1)

    async def _start(self, model: ModelVersion, replicas: int) -> dict[str, Any]:
        await start_model(self.backend, model, replicas)
        if model.is_current:
            self.router.switch(model.name, model.version)
        return model.to_clipper() | {"replicas": replicas}
