"""The service's settings: one typed object, built by the CLI and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from proxy.backend.sandbox import SandboxLimits

__all__ = ["DEFAULT_BUS", "DEFAULT_SERVICE_PATH", "ProxySettings", "default_data_dir"]

DEFAULT_BUS = "zmq://127.0.0.1:7700"
DEFAULT_SERVICE_PATH = "s.modelbus/_"


def default_data_dir() -> Path:
    """``$MODELBUS_DATA``, else ``$XDG_DATA_HOME/modelbus``, else ``~/.local/share/modelbus``."""
    if env := os.environ.get("MODELBUS_DATA"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "modelbus"


class ProxySettings(BaseModel):
    """``namespace`` None means the proxy's own key is the namespace (it owns it); otherwise the
    proxy needs ``proofs`` granting it P on ``<service URI>/*`` (replies and heartbeats)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bus_url: str = DEFAULT_BUS
    embed_bus: bool = True
    """Start the ZeroMQ forwarder in-process when ``bus_url`` is zmq:// and none answers."""
    data_dir: Path = Field(default_factory=default_data_dir)
    registry: Annotated[str, Field(pattern=r"^postgres(ql)?://")] | Path | None = None
    """The registry: a ``postgresql://`` URL (shared by several proxies) or a SQLite file;
    None: ``<data_dir>/registry.sqlite3``."""
    entity_path: Path | None = None
    """None: ``<data_dir>/proxy.key``, created on first start."""
    namespace: str | None = None
    service_path: str = DEFAULT_SERVICE_PATH
    proof_paths: tuple[Path, ...] = ()
    aliases: dict[str, str] = {}
    max_concurrency: Annotated[int, Field(gt=0)] = 64
    max_in_flight_per_sender: Annotated[int, Field(gt=0)] = 16
    """Requests of one sender handled at once per slot (PROTOCOL.md §17.7)."""
    max_inputs_per_sender: Annotated[int, Field(gt=0)] = 2500
    """Inputs of one sender waiting for predictions at once."""
    max_replicas_total: Annotated[int, Field(gt=0)] = 64
    max_waiting_ready: Annotated[int, Field(gt=0)] = 8
    """``model.wait_ready`` calls waiting at once, service-wide."""
    max_applications: Annotated[int, Field(gt=0)] = 1000
    heartbeat_interval_s: Annotated[float, Field(gt=0)] = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None  # None: no /metrics
    predict_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_upload_bytes: Annotated[int, Field(gt=0)] = 8 * 1024**3
    max_open_uploads_per_sender: Annotated[int, Field(gt=0)] = 4
    upload_idle_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    disk_reserve_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    """Free space uploads leave on the data directory's disk, for the registry; 0: no check."""
    drain_timeout_s: Annotated[float, Field(ge=0)] = 10.0
    forecast_call_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """How long a forecast waits for one model's answer to one segment before falling back."""
    forecast_deadline_s: Annotated[float, Field(gt=0)] = 20.0
    """How long a forecast's model calls may take in all, fallbacks included."""
    can_predict_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    """How long a model's ``can_predict`` may run in its worker before it counts as "cannot"."""
    brick_path: Path | None = None
    """A Brick model (Turtle) of the building: its places' tree, for the forecast."""
    docker_url: str | None = Field(default_factory=lambda: os.environ.get("DOCKER_HOST") or None)
    """The container engine's API (Docker, or ``podman system service``) for image deploys;
    None: this service runs closures only."""
    sandbox_limits: SandboxLimits = SandboxLimits()
    """Resource limits of each sandboxed closure replica (see proxy.backend.sandbox)."""
    unsafe_no_sandbox: bool = False
    """Run closures unconfined where bubblewrap is missing (with a warning), instead of refusing
    to start. Only for a service whose every deployer is trusted."""

    instance: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] | None = None
    """This proxy's name among several serving one service URI (on MQTT, with a shared
    registry and artifact store); None: the only proxy of its service."""
    artifacts: Annotated[str, Field(pattern=r"^(file:///|/|s3://)")] | None = None
    """Where committed artifacts live, shared by several proxies: an absolute directory or
    ``file:///path`` (mounted at the same path on each) or ``s3://bucket/prefix`` (endpoint and
    credentials from the AWS_* environment); uploads then keep their chunks there too, so any
    proxy continues them. None: ``<data_dir>/artifacts``, uploads spooled locally."""

    @property
    def registry_target(self) -> str | Path:
        """What :meth:`proxy.registry.Registry.open` opens."""
        return self.registry or self.data_dir / "registry.sqlite3"

    @property
    def entity_file(self) -> Path:
        return self.entity_path or self.data_dir / "proxy.key"
