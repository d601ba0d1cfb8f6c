"""Deploys in two steps, as Clipper makes them: staged by ``deploy_model``, done by ``add_model``.

``ClipperConnection.deploy_model`` first asks the container manager to start the model's
replicas, then registers the model with the management frontend (``add_model``, which brings the
labels and the batch size). A modelbus version is registered and started by one operation on the
service (``model.deploy``), so the manager's ``deploy_model`` uploads the artifact and *stages*
the deploy, and the ``add_model`` that follows deploys it — then waits for a ready replica, so a
prediction right after ``deploy_model`` is answered by the model, not by the default output.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from bus.errors import InvalidRequest
from container_manager.rest import AddModel
from container_manager.service import ServiceClient

__all__ = ["Deployer", "StagedDeploy"]


@dataclass(frozen=True, slots=True)
class StagedDeploy:
    """What ``deploy_model`` uploaded, waiting for Clipper's ``add_model``."""

    input_type: str
    kind: str
    artifact: str
    image: str | None
    replicas: int
    metadata: dict[str, Any]


class Deployer:
    """Deploys staged by ``deploy_model``, completed by Clipper's ``add_model`` (thread-safe)."""

    def __init__(self, service: ServiceClient, ready_timeout_s: float) -> None:
        self.service = service
        self.ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        self._staged: dict[tuple[str, str], StagedDeploy] = {}

    def stage(self, name: str, version: str, staged: StagedDeploy) -> None:
        with self._lock:
            self._staged[(name, version)] = staged

    async def add_model(self, request: AddModel) -> None:
        key = (request.model_name, request.model_version)
        with self._lock:
            staged = self._staged.pop(key, None)
        if staged is None:
            raise InvalidRequest(
                f"nothing to register for {key[0]}:{key[1]}: modelbus registers a model by "
                "deploying it; use deploy_model (ClipperConnection.deploy_model or "
                "build_and_deploy_model) or deploy_python_closure",
                model=key[0],
                version=key[1],
            )
        if request.input_type != staged.input_type:
            raise InvalidRequest(
                f"{key[0]}:{key[1]} was deployed with input type {staged.input_type!r}, "
                f"not {request.input_type!r}"
            )
        await self.service.deploy_artifact(
            *key,
            staged.input_type,
            staged.artifact,
            kind=staged.kind,
            image=staged.image,
            labels=request.labels,
            metadata=staged.metadata,
            replicas=staged.replicas,
            batch_size=request.batch_size,
        )
        if staged.replicas > 0 and self.ready_timeout_s > 0:
            await self.service.wait_ready(*key, timeout_s=self.ready_timeout_s)
