"""What the registry stores, as frozen records: validated on the way in and on the way back out.

Each record also renders the dict Clipper's management frontend answers with
(``to_clipper()``), and its Clipper key for the non-verbose listings (``key``), so the proxy
answers ``get_all_apps``/``get_app_info``/``get_all_models``/``get_model_info``/
``get_all_model_replicas``/``get_model_replica_info`` without reshaping anything.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

__all__ = [
    "ADAPTIVE_BATCH_SIZE",
    "FIT_STATE_KEY",
    "AppName",
    "Application",
    "ArtifactKind",
    "InputType",
    "ModelKind",
    "ModelName",
    "ModelVersion",
    "Replica",
    "ReplicaState",
    "Sha256",
    "Upload",
    "UploadState",
]

InputType = Literal["integers", "floats", "doubles", "bytes", "strings"]
ArtifactKind = Literal["closure", "image"]
"""What an upload carries."""
ModelKind = Literal["closure", "image", "v2"]
"""How a version is served: a closure or an image run by replicas here, or ``v2``: by a remote
Open Inference Protocol (V2) server. A v2 version keeps the server's base URL in
``artifact_path``, the server's model name in ``image``, and in ``artifact_sha256`` the SHA-256
of ``"<url>\n<model>"``: its identity, as an artifact's digest is a closure's."""
ReplicaState = Literal["starting", "ready", "failed", "stopped"]
UploadState = Literal["open", "committed", "aborted"]

FIT_STATE_KEY = "fit_state"
"""The metadata key of a fitted image version's state: the SHA-256 of the state artifact. Only a
fit sets it (``model.deploy`` refuses it), so a version cannot be pointed at another artifact."""

ADAPTIVE_BATCH_SIZE = -1
"""Clipper's ``batch_size=-1``: the backend picks the batch size itself."""

# Clipper's rule for model names and versions (DNS-1123: lowercase alphanumerics and '-';
# its error message also allows '.', so we do): they end up in container names.
ModelName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
]
# Application names become bus URI segments: a safe subset of the segment characters.
AppName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Ns = Annotated[int, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Application(_Record):
    name: AppName
    input_type: InputType
    default_output: str
    latency_slo_micros: Annotated[int, Field(gt=0)]
    description: str
    created_ns: Ns
    linked_model: ModelName | None
    """The one model linked to the application (Clipper allows one), or None."""

    @property
    def key(self) -> str:
        return self.name

    def to_clipper(self) -> dict[str, Any]:
        """Clipper's ``get_app_info`` answer."""
        return {
            "name": self.name,
            "input_type": self.input_type,
            "default_output": self.default_output,
            "latency_slo_micros": self.latency_slo_micros,
            "linked_models": [self.linked_model] if self.linked_model else [],
        }


class ModelVersion(_Record):
    name: ModelName
    version: ModelName
    input_type: InputType
    labels: tuple[str, ...]
    metadata: dict[str, JsonValue]
    """Free JSON: the chooser's metadata (type, context, ranges, training streams…)."""
    artifact_kind: ModelKind
    artifact_sha256: Sha256
    artifact_path: Text
    image: Text | None
    """The image reference the docker runtime runs, or a v2 version's remote model name; set
    exactly when ``artifact_kind`` is image or v2."""
    batch_size: int
    desired_replicas: Annotated[int, Field(ge=0)]
    is_current: bool
    stopped_ns: Ns | None
    created_ns: Ns

    @model_validator(mode="after")
    def _consistent(self) -> ModelVersion:
        if (self.artifact_kind != "closure") != (self.image is not None):
            raise ValueError("image is required for an image or v2 version and only for one")
        if self.batch_size != ADAPTIVE_BATCH_SIZE and self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive or {ADAPTIVE_BATCH_SIZE} (adaptive)")
        return self

    @property
    def is_stopped(self) -> bool:
        return self.stopped_ns is not None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def state_sha256(self) -> str | None:
        """A fitted image version's state artifact (:data:`FIT_STATE_KEY`), else None."""
        value = self.metadata.get(FIT_STATE_KEY)
        if self.artifact_kind != "image" or not isinstance(value, str):
            return None
        return value if re.fullmatch(r"[0-9a-f]{64}", value) else None

    @property
    def artifact_digests(self) -> set[str]:
        """The artifacts this version needs: its own, and a fitted image version's state."""
        state = self.state_sha256
        return {self.artifact_sha256} if state is None else {self.artifact_sha256, state}

    @property
    def container_name(self) -> str:
        if self.artifact_kind == "v2":
            return f"v2:{self.artifact_path}/v2/models/{self.image}"
        return self.image or f"closure@sha256:{self.artifact_sha256}"

    def to_clipper(self) -> dict[str, Any]:
        """Clipper's ``get_model_info`` answer (one item of ``get_all_models(verbose=True)``)."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "is_current_version": self.is_current,
            "input_type": self.input_type,
            "labels": list(self.labels),
            # Clipper refuses to resize "NO_CONTAINER" models, so closures get a name of their own.
            "container_name": self.container_name,
            "model_data_path": self.artifact_path,
            "batch_size": self.batch_size,
        }


class Replica(_Record):
    model_name: ModelName
    model_version: ModelName
    replica_id: Annotated[int, Field(ge=0)]
    state: ReplicaState
    handle: Text | None
    """The runtime's handle: a worker pid or a container id, as text."""
    input_type: InputType
    """The model version's input type (Clipper reports it per replica)."""
    updated_ns: Ns

    @property
    def key(self) -> str:
        return f"{self.model_name}:{self.model_version}:{self.replica_id}"

    def to_clipper(self) -> dict[str, Any]:
        """Clipper's ``get_model_replica_info`` answer."""
        return {
            "model_id": f"{self.model_name}:{self.model_version}",
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_replica_id": self.replica_id,
            "input_type": self.input_type,
        }


class Upload(_Record):
    upload_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    sender: Text
    """The sender's entity key, as text."""
    name: Text
    kind: ArtifactKind
    size: Annotated[int, Field(ge=0)]
    sha256: Sha256
    metadata: dict[str, JsonValue]
    chunk_size: Annotated[int, Field(gt=0)]
    next_index: Annotated[int, Field(ge=0)]
    """How many chunks from the start are acknowledged, contiguously."""
    spool_path: Text
    state: UploadState
    created_ns: Ns
    touched_ns: Ns

    @model_validator(mode="after")
    def _within_size(self) -> Upload:
        if self.next_index > self.chunk_count:
            raise ValueError(f"next_index is past the last of {self.chunk_count} chunks")
        return self

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    @property
    def is_complete(self) -> bool:
        return self.next_index == self.chunk_count
