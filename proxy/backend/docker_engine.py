"""A Docker-API engine (Docker, or Podman's ``podman system service``) through docker-py.

The only module that imports docker (docker-py). It talks to the engine at a base URL
(``unix:///run/podman/podman.sock``; ``tcp://…`` only with TLS: ``DOCKER_TLS_VERIFY=1`` and
``DOCKER_CERT_PATH``). docker-py blocks, so :class:`DockerEngine` is synchronous and its callers
run it on worker threads; docker's errors become modelbus errors in :func:`translated`.
:class:`ServiceContainers` is the proxied ``container.*`` surface, confined to this service's
containers (:class:`proxy.backend.containers.ContainerEngine`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import docker
import docker.errors
import docker.tls

from bus.errors import (
    BusError,
    Conflict,
    InternalError,
    InvalidRequest,
    NotFound,
    TransportError,
)
from proxy.backend.containers import ContainerInfo
from proxy.backend.sandbox import NOBODY, SandboxLimits

__all__ = [
    "MODEL_LABEL",
    "OWNER_LABEL",
    "REPLICA_LABEL",
    "REPLICA_USER",
    "VERSION_LABEL",
    "DockerEngine",
    "ServiceContainers",
    "translated",
]

logger = logging.getLogger(__name__)

REPLICA_USER = f"{NOBODY}:{NOBODY}"
MODEL_LABEL = "modelbus.model"
VERSION_LABEL = "modelbus.version"
REPLICA_LABEL = "modelbus.replica"
OWNER_LABEL = "modelbus.owner"

_P = ParamSpec("_P")
_T = TypeVar("_T")


class DockerEngine:
    """docker-py behind modelbus errors; blocking calls, safe to use from several threads.

    The client connects on first use (docker-py asks the engine its API version)."""

    def __init__(self, base_url: str, *, timeout_s: float = 600.0) -> None:
        self.base_url = base_url
        self._tls = _engine_tls(base_url)
        self._timeout_s = timeout_s
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                with translated(self.base_url, "connect"):
                    self._client = docker.DockerClient(
                        base_url=self.base_url,
                        timeout=int(self._timeout_s),
                        max_pool_size=64,
                        tls=self._tls or False,
                    )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- images -----------------------------------------------------------------------------------

    def has_image(self, ref: str) -> bool:
        try:
            with translated(self.base_url, f"inspect image {ref}"):
                self.client.images.get(ref)
        except NotFound:
            return False
        return True

    def image_id(self, ref: str) -> str:
        with translated(self.base_url, f"inspect image {ref}"):
            return str(self.client.images.get(ref).id)

    def load(self, tarball: Path) -> None:
        """``docker load`` the tarball, streamed from the file."""
        with translated(self.base_url, f"load {tarball.name}"), tarball.open("rb") as data:
            for chunk in self.client.api.load_image(data):
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise InvalidRequest(f"the engine could not load the image: {chunk['error']}")

    def tag(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        with translated(self.base_url, f"tag {image_id} as {ref}"):
            self.client.api.tag(image_id, repository, tag)

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with contextlib.suppress(NotFound), translated(self.base_url, f"remove image {ref}"):
            self.client.images.remove(ref, force=force)

    def build(self, context: Path, tag: str, *, buildargs: dict[str, str] | None = None) -> str:
        """Build ``context`` (a directory with a Dockerfile) as ``tag``; the image id."""
        with translated(self.base_url, f"build {tag}"):
            image, _ = self.client.images.build(
                path=str(context), tag=tag, buildargs=buildargs or {}, rm=True, forcerm=True
            )
            return str(image.id)

    def save(self, ref: str, path: Path) -> None:
        """``docker save`` one image with its tag into ``path``, streamed."""
        with translated(self.base_url, f"save {ref}"):
            image = self.client.images.get(ref)
            with path.open("wb") as file:
                for chunk in image.save(chunk_size=1024 * 1024, named=True):
                    file.write(chunk)

    # --- containers -------------------------------------------------------------------------------

    def run(
        self,
        image_id: str,
        *,
        name: str,
        command: list[str],
        entrypoint: list[str] | None,
        environment: dict[str, str],
        labels: dict[str, str],
        volumes: Mapping[Path, tuple[str, str]],
        limits: SandboxLimits,
    ) -> tuple[str, int | None]:
        """Start a detached, confined container (see :data:`REPLICA_USER` and the module
        docstring) with ``volumes`` (host path: container path, ``ro`` or ``rw``) bound in (a
        replica's: its channel directory at ``/run/modelbus``); its id and main pid. Memory
        is capped without swap, so a container over ``limits.memory_bytes`` is OOM-killed."""
        with translated(self.base_url, f"run {name}"):
            container = self.client.containers.run(
                image_id,
                command=command,
                entrypoint=entrypoint,
                name=name,
                detach=True,
                environment=environment,
                labels=labels,
                init=True,
                network_mode="none",
                volumes={
                    str(host): {"bind": bind, "mode": mode}
                    for host, (bind, mode) in volumes.items()
                },
                user=REPLICA_USER,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},
                mem_limit=limits.memory_bytes or None,
                memswap_limit=limits.memory_bytes or None,
                pids_limit=limits.processes or None,
                nano_cpus=round(limits.cpus * 1e9),
            )
            container.reload()
            pid = container.attrs.get("State", {}).get("Pid") or None
            return str(container.id), pid

    def wait(self, container_id: str) -> int:
        """Block until the container exits; its exit code."""
        with translated(self.base_url, f"wait for {container_id[:12]}"):
            result = self.client.api.wait(container_id, timeout=None)
            return int(result.get("StatusCode", -1))

    def exit_state(self, container_id: str) -> tuple[int, bool]:
        """An exited container's exit code, and whether the kernel OOM-killed it."""
        with translated(self.base_url, f"inspect {container_id[:12]}"):
            state = self.client.api.inspect_container(container_id).get("State") or {}
            return int(state.get("ExitCode", -1)), bool(state.get("OOMKilled", False))

    def stop(self, container_id: str, *, grace_s: float) -> None:
        with contextlib.suppress(NotFound), translated(self.base_url, "stop a container"):
            self.client.api.stop(container_id, timeout=max(1, round(grace_s)))

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound), translated(self.base_url, "remove a container"):
            self.client.api.remove_container(container_id, force=True)

    def logs(self, container_id: str, *, tail: int) -> str:
        try:
            with translated(self.base_url, "read a container's log"):
                data = self.client.api.logs(container_id, tail=max(0, tail))
        except NotFound:
            return ""
        return bytes(data).decode("utf-8", errors="replace")

    def containers(self, **filters: Any) -> list[str]:
        """Ids of containers, running or not, matching docker's ``filters``."""
        with translated(self.base_url, "list containers"):
            found = self.client.api.containers(all=True, filters=filters)
            return [str(item["Id"]) for item in found]


class ServiceContainers:
    """The proxied part of the Docker API
    (:class:`proxy.service.operations.containers.ContainerEngine`), confined
    to this service's containers: it lists only containers with the service's owner label and
    runs containers from images the engine already holds (never pulling) with no network, no
    mounts, every capability dropped and no new privileges."""

    def __init__(self, engine: DockerEngine, owner: str) -> None:
        self.engine = engine
        self.owner = owner

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        wanted = [f"{OWNER_LABEL}={self.owner}", *(f"{k}={v}" for k, v in labels.items())]
        return await anyio.to_thread.run_sync(self._list, wanted)

    def _list(self, wanted: list[str]) -> list[ContainerInfo]:
        with translated(self.engine.base_url, "list containers"):
            found = self.engine.client.containers.list(all=True, filters={"label": wanted})
            return [_info(container) for container in found]

    async def run_container(
        self, image: str, name: str, env: Mapping[str, str], labels: Mapping[str, str]
    ) -> ContainerInfo:
        return await anyio.to_thread.run_sync(self._run, image, name, dict(env), dict(labels))

    def _run(
        self, image: str, name: str, env: dict[str, str], labels: dict[str, str]
    ) -> ContainerInfo:
        if not self.engine.has_image(image):
            raise NotFound(
                f"the image {image!r} is not on this service's engine (it never pulls); "
                "upload and deploy it first",
                image=image,
            )
        if self._exists(name):  # Podman answers a taken name with 500, Docker with 409
            raise Conflict(f"a container named {name!r} already exists", name=name)
        with translated(self.engine.base_url, f"run {name}"):
            container = self.engine.client.containers.run(
                image,
                name=name,
                detach=True,
                environment=env,
                labels={**labels, OWNER_LABEL: self.owner},
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=512,
            )
            container.reload()
            return _info(container)

    def _exists(self, name: str) -> bool:
        try:
            with translated(self.engine.base_url, f"inspect container {name}"):
                self.engine.client.containers.get(name)
        except NotFound:
            return False
        return True


def _info(container: Any) -> ContainerInfo:
    tags = container.image.tags if container.image is not None else []
    return ContainerInfo(
        id=str(container.id),
        name=str(container.name),
        image=str(tags[0] if tags else container.attrs.get("Image", "")),
        state=str(container.status),
        labels={str(k): str(v) for k, v in (container.labels or {}).items()},
    )


@contextlib.contextmanager
def translated(base_url: str, doing: str) -> Iterator[None]:
    """docker-py's errors (and the requests errors it lets through) as modelbus errors."""
    try:
        yield
    except BusError:
        raise
    except docker.errors.NotFound as exc:
        raise NotFound(f"the container engine cannot {doing}: {_explanation(exc)}") from exc
    except docker.errors.BuildError as exc:
        log = "".join(str(item.get("stream", "")) for item in exc.build_log or [])
        raise InvalidRequest(f"cannot {doing}: {exc.msg}\n{log[-4000:]}") from exc
    except docker.errors.APIError as exc:
        message = f"the container engine cannot {doing}: {_explanation(exc)}"
        if exc.status_code == 409:
            raise Conflict(message) from exc
        if exc.is_client_error():
            raise InvalidRequest(message) from exc
        raise InternalError(message) from exc
    except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
        raise TransportError(
            f"cannot reach the container engine at {base_url} to {doing}: {exc}",
            docker_url=base_url,
        ) from exc


def _engine_tls(base_url: str) -> docker.tls.TLSConfig | None:
    """TLS for an engine URL on TCP, from ``DOCKER_CERT_PATH`` (``ca.pem``, ``cert.pem``,
    ``key.pem``, as docker's own client reads them); None for a local socket. An engine API on
    plain TCP gives whoever reaches the port root on the host: refused (InvalidRequest)."""
    scheme = base_url.partition("://")[0].lower()
    if scheme in ("unix", "npipe", "ssh", "http+unix"):
        return None
    cert_path = os.environ.get("DOCKER_CERT_PATH")
    if (
        scheme not in ("tcp", "https")
        or not cert_path
        or os.environ.get("DOCKER_TLS_VERIFY") != "1"
    ):
        raise InvalidRequest(
            f"refusing the container engine at {base_url}: an engine API on plain TCP lets "
            "anyone who reaches it run containers as root; use its unix socket "
            "(unix:///run/podman/podman.sock) or TLS with client certificates "
            "(DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH holding ca.pem, cert.pem, key.pem)",
            docker_url=base_url,
        )
    certs = Path(cert_path)
    return docker.tls.TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
        ca_cert=str(certs / "ca.pem"),
        verify=True,
    )


def _explanation(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)[:2000]
