"""The docker runtime: replicas as containers of a model image, on any Docker-API engine.

The only module that imports docker (docker-py). It talks to Docker, or to Podman's
``podman system service``, at a base URL (``unix:///run/podman/podman.sock``, ``tcp://…``).
docker-py blocks, so :class:`DockerEngine` (synchronous) is called on worker threads by
:class:`DockerRuntime`; docker's errors become modelbus errors in :func:`_translated`.

Images: :meth:`DockerRuntime.load` checks the tarball first (:mod:`proxy.images`: it holds the
image, which says where its model is) and loads it, streamed from the file, only if the engine
lacks the image's id — an untagged copy holding only that image (:mod:`proxy.image_tarball`), so
a tarball never re-points a tag. ``prepare`` (before a version starts; again after a restart of
the service, or of a version stopped earlier: its tarball is kept) loads it the same way and tags
it ``modelbus/<name>:<version>`` (its only tag). A version runs its image by id.

Containers are confined at least as ``container.run``'s are: no network (``network_mode=none``;
the worker reaches the backend through its unix socket, the channel directory mounted read-only
at ``/run/modelbus``, over ZeroMQ ``ipc://``), every capability dropped, ``no-new-privileges``,
user ``65534:65534``, a read-only root filesystem with a size-capped tmpfs ``/tmp``, and memory,
pids and CPU limits (:class:`~proxy.sandbox.SandboxLimits`). They run with
an init process (so ``stop`` reaches the worker), the start token in ``MODELBUS_REPLICA_TOKEN``,
labels ``modelbus.model``, ``modelbus.version``, ``modelbus.replica`` and ``modelbus.owner`` (this
service's data directory, hashed), and the name ``modelbus-<name>-<version>-r<i>-<token hash>``.
A container that exits has its log appended to ``<data_dir>/logs/`` and is removed; ``stop`` is
docker's stop (SIGTERM, SIGKILL after the grace), then remove. The first ``prepare`` removes
containers an earlier run of this service left behind.

Garbage collection: when a version is stopped (``release(remove_image=True)``) its containers go,
and its image too unless another started version — or any container at all — still uses it.
When the service stops, containers go but images stay, for its next start.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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
from proxy.channel import TOKEN_ENV
from proxy.containers import ContainerInfo
from proxy.image_tarball import untagged_copy
from proxy.images import WORKER_COMMAND, Entry, SavedImage, check_saved_image
from proxy.runtime import ReplicaHandle, ReplicaSpec, _safe, _tail
from proxy.sandbox import NOBODY, SANDBOX_CHANNEL_DIR, SandboxLimits, admit_channel

__all__ = ["DockerEngine", "DockerRuntime", "ServiceContainers"]

logger = logging.getLogger(__name__)

REPLICA_USER = f"{NOBODY}:{NOBODY}"
MODEL_LABEL = "modelbus.model"
VERSION_LABEL = "modelbus.version"
REPLICA_LABEL = "modelbus.replica"
OWNER_LABEL = "modelbus.owner"
_LOG_LINES_KEPT = 2_000  # of an exited container, appended to its replica's log file

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
                with _translated(self.base_url, "connect"):
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
            with _translated(self.base_url, f"inspect image {ref}"):
                self.client.images.get(ref)
        except NotFound:
            return False
        return True

    def image_id(self, ref: str) -> str:
        with _translated(self.base_url, f"inspect image {ref}"):
            return str(self.client.images.get(ref).id)

    def load(self, tarball: Path) -> None:
        """``docker load`` the tarball, streamed from the file."""
        with _translated(self.base_url, f"load {tarball.name}"), tarball.open("rb") as data:
            for chunk in self.client.api.load_image(data):
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise InvalidRequest(f"the engine could not load the image: {chunk['error']}")

    def tag(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        with _translated(self.base_url, f"tag {image_id} as {ref}"):
            self.client.api.tag(image_id, repository, tag)

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with contextlib.suppress(NotFound), _translated(self.base_url, f"remove image {ref}"):
            self.client.images.remove(ref, force=force)

    def build(self, context: Path, tag: str, *, buildargs: dict[str, str] | None = None) -> str:
        """Build ``context`` (a directory with a Dockerfile) as ``tag``; the image id."""
        with _translated(self.base_url, f"build {tag}"):
            image, _ = self.client.images.build(
                path=str(context), tag=tag, buildargs=buildargs or {}, rm=True, forcerm=True
            )
            return str(image.id)

    def save(self, ref: str, path: Path) -> None:
        """``docker save`` one image with its tag into ``path``, streamed."""
        with _translated(self.base_url, f"save {ref}"):
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
        channel_dir: Path,
        limits: SandboxLimits,
    ) -> tuple[str, int | None]:
        """Start a detached, confined container (see :data:`REPLICA_USER` and the module
        docstring) with ``channel_dir`` at ``/run/modelbus``; its id and main pid."""
        with _translated(self.base_url, f"run {name}"):
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
                volumes={str(channel_dir): {"bind": str(SANDBOX_CHANNEL_DIR), "mode": "ro"}},
                user=REPLICA_USER,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},
                mem_limit=limits.memory_bytes or None,
                pids_limit=limits.processes or None,
                nano_cpus=round(limits.cpus * 1e9),
            )
            container.reload()
            pid = container.attrs.get("State", {}).get("Pid") or None
            return str(container.id), pid

    def wait(self, container_id: str) -> int:
        """Block until the container exits; its exit code."""
        with _translated(self.base_url, f"wait for {container_id[:12]}"):
            result = self.client.api.wait(container_id, timeout=None)
            return int(result.get("StatusCode", -1))

    def stop(self, container_id: str, *, grace_s: float) -> None:
        with contextlib.suppress(NotFound), _translated(self.base_url, "stop a container"):
            self.client.api.stop(container_id, timeout=max(1, round(grace_s)))

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound), _translated(self.base_url, "remove a container"):
            self.client.api.remove_container(container_id, force=True)

    def logs(self, container_id: str, *, tail: int) -> str:
        try:
            with _translated(self.base_url, "read a container's log"):
                data = self.client.api.logs(container_id, tail=max(0, tail))
        except NotFound:
            return ""
        return bytes(data).decode("utf-8", errors="replace")

    def containers(self, **filters: Any) -> list[str]:
        """Ids of containers, running or not, matching docker's ``filters``."""
        with _translated(self.base_url, "list containers"):
            found = self.client.api.containers(all=True, filters=filters)
            return [str(item["Id"]) for item in found]


class ServiceContainers:
    """The proxied part of the Docker API (:class:`proxy.containers.ContainerEngine`), confined
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
        with _translated(self.engine.base_url, "list containers"):
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
        with _translated(self.engine.base_url, f"run {name}"):
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
            with _translated(self.engine.base_url, f"inspect container {name}"):
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


@dataclass(frozen=True, slots=True)
class _Prepared:
    image_id: str
    entry: Entry
    has_entrypoint: bool
    tag: str


class DockerRuntime:
    """Replicas of image versions as containers; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        data_dir: Path,
        *,
        engine: DockerEngine | None = None,
        limits: SandboxLimits | None = None,
    ) -> None:
        self.engine = engine or DockerEngine(base_url)
        self.limits = limits or SandboxLimits()
        self.log_dir = Path(data_dir) / "logs"
        self.owner = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        self._prepared: dict[tuple[str, str], _Prepared] = {}
        self._alive: set[str] = set()
        self._exit_codes: dict[str, int] = {}
        self._retired: dict[str, anyio.Event] = {}
        self._latest: dict[tuple[str, str, int], str] = {}  # each replica's latest container
        self._swept = False
        self._calls = anyio.CapacityLimiter(8)  # quick calls
        self._slow = anyio.CapacityLimiter(1_000)  # waits (one per container), stops, loads

    # --- images -----------------------------------------------------------------------------------

    async def load(self, tarball: Path, image: str) -> str:
        return (await self._load(tarball, image)).id

    async def prepare(self, name: str, version: str, tarball: Path, image: str) -> None:
        await self._sweep()
        saved = await self._load(tarball, image)
        tag = f"modelbus/{_repository(name)}:{_safe(version)}"
        await self._call(self.engine.tag, saved.id, tag)
        self._prepared[(name, version)] = _Prepared(
            saved.id, saved.entry, saved.has_entrypoint, tag
        )
        logger.info("%s:%s runs image %s (%s)", name, version, image, saved.id[:19])

    async def release(self, name: str, version: str, *, remove_image: bool) -> None:
        labels = [f"{MODEL_LABEL}={name}", f"{VERSION_LABEL}={version}", self._owner_label]
        for container_id in await self._call(self.engine.containers, label=labels):
            await self._call(self.engine.remove, container_id)
        for replica in [key for key in self._latest if key[:2] == (name, version)]:
            container_id = self._latest.pop(replica)
            self._retired.pop(container_id, None)
            self._exit_codes.pop(container_id, None)
        prepared = self._prepared.pop((name, version), None)
        if prepared is None or not remove_image:
            return
        if any(other.image_id == prepared.image_id for other in self._prepared.values()):
            await self._call(self.engine.remove_image, prepared.tag)  # untag only
            return
        users = await self._call(self.engine.containers, ancestor=prepared.image_id)
        if users:
            logger.info("keeping image %s: %d containers use it", prepared.image_id, len(users))
            return
        await self._call(self.engine.remove_image, prepared.image_id, force=True)
        logger.info("removed image %s of %s:%s", prepared.image_id[:19], name, version)

    async def _load(self, tarball: Path, image: str) -> SavedImage:
        saved = await anyio.to_thread.run_sync(check_saved_image, tarball, image)
        if not await self._call(self.engine.has_image, saved.id):
            started = time.monotonic()
            await anyio.to_thread.run_sync(self._load_untagged, tarball, limiter=self._slow)
            logger.info("loaded %s in %.1f s", image, time.monotonic() - started)
            if not await self._call(self.engine.has_image, saved.id):
                raise InternalError(
                    f"the engine loaded {image} but shows no image {saved.id}", image=image
                )
        return saved

    def _load_untagged(self, tarball: Path) -> None:
        """Load the tarball's one image without any tag (proxy.image_tarball): a tarball
        cannot re-point a tag on the engine."""
        copy = tarball.with_name(f".{tarball.name}.{uuid.uuid4().hex[:8]}.load.tar")
        try:
            untagged_copy(tarball, copy)
            self.engine.load(copy)
        finally:
            copy.unlink(missing_ok=True)

    # --- replicas (the Runtime protocol) ----------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        prepared = self._prepared.get((spec.name, spec.version))
        if prepared is None:
            raise InternalError(f"{spec.label}: its image was not prepared", replica=spec.replica)
        if spec.channel_socket is None:
            raise InternalError(f"{spec.label}: the backend has no unix socket for a container")
        channel_dir = spec.channel_socket.parent
        await anyio.to_thread.run_sync(admit_channel, channel_dir, NOBODY)
        backend = f"ipc://{SANDBOX_CHANNEL_DIR / spec.channel_socket.name}"
        command = [
            *("--backend", backend, "--name", spec.name, "--version", spec.version),
            *("--replica", str(spec.replica), "--batch-size", str(spec.batch_size)),
            *("--heartbeat-s", str(spec.heartbeat_s), *prepared.entry.worker_args()),
        ]
        container_id, pid = await self._call(
            self.engine.run,
            prepared.image_id,
            name=_container_name(spec),
            command=command,
            entrypoint=None if prepared.has_entrypoint else list(WORKER_COMMAND),
            environment={TOKEN_ENV: spec.token, "PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
            labels={
                MODEL_LABEL: spec.name,
                VERSION_LABEL: spec.version,
                REPLICA_LABEL: str(spec.replica),
                OWNER_LABEL: self.owner,
            },
            channel_dir=channel_dir,
            limits=self.limits,
        )
        self._alive.add(container_id)
        self._forget_previous((spec.name, spec.version, spec.replica), container_id)
        logger.info("started %s as container %s", spec.label, container_id[:12])
        return ReplicaHandle(spec=spec, ref=container_id, pid=pid)

    async def wait(self, handle: ReplicaHandle) -> int:
        if handle.ref in self._alive:
            try:
                code = await anyio.to_thread.run_sync(
                    self.engine.wait, handle.ref, limiter=self._slow, abandon_on_cancel=True
                )
            except NotFound:
                code = -1
            except BusError as error:  # the engine went away: make sure the worker goes too
                logger.error("lost track of %s: %s", handle.spec.label, error.message)
                await self.stop(handle, grace_s=0)
                code = -1
            self._alive.discard(handle.ref)
            self._exit_codes[handle.ref] = _exit_status(code)
            with anyio.CancelScope(shield=True):
                await self._retire(handle)
        return self._exit_codes.get(handle.ref, -1)

    def is_alive(self, handle: ReplicaHandle) -> bool:
        return handle.ref in self._alive

    async def stop(self, handle: ReplicaHandle, *, grace_s: float = 5.0) -> None:
        with anyio.CancelScope(shield=True):
            if handle.ref in self._alive:
                try:
                    await anyio.to_thread.run_sync(
                        functools.partial(self.engine.stop, handle.ref, grace_s=grace_s),
                        limiter=self._slow,
                    )
                except BusError as error:
                    logger.error("could not stop %s: %s", handle.spec.label, error.message)
                self._alive.discard(handle.ref)
            await self._retire(handle)

    async def logs(self, handle: ReplicaHandle, *, tail: int = 200) -> str:
        earlier = await anyio.to_thread.run_sync(_tail, self.log_path(handle.spec), tail)
        if handle.ref not in self._alive:
            return earlier
        current = await self._call(self.engine.logs, handle.ref, tail=tail)
        lines = [*earlier.splitlines(), *current.splitlines()]
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def log_path(self, spec: ReplicaSpec) -> Path:
        digest = hashlib.sha256(f"{spec.name}\0{spec.version}".encode()).hexdigest()[:8]
        stem = f"{_safe(spec.name)}-{_safe(spec.version)}-{digest}-r{spec.replica}"
        return self.log_dir / f"{stem}.log"

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def _owner_label(self) -> str:
        return f"{OWNER_LABEL}={self.owner}"

    async def _retire(self, handle: ReplicaHandle) -> None:
        """Keep an exited container's log, then remove it (once, whoever asks first)."""
        retired = self._retired.get(handle.ref)
        if retired is not None:
            await retired.wait()
            return
        retired = self._retired[handle.ref] = anyio.Event()
        try:
            text = await self._call(self.engine.logs, handle.ref, tail=_LOG_LINES_KEPT)
            await anyio.to_thread.run_sync(self._append_log, handle.spec, text)
            await self._call(self.engine.remove, handle.ref)
        except BusError as error:
            logger.warning(
                "could not remove the container of %s: %s", handle.spec.label, error.message
            )
        finally:
            retired.set()

    def _append_log(self, spec: ReplicaSpec, text: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log_path(spec).open("a", encoding="utf-8") as log:
            log.write(f"--- {stamp} {spec.label} exited; its container's log:\n{text}")
            if text and not text.endswith("\n"):
                log.write("\n")

    def _forget_previous(self, replica: tuple[str, str, int], container_id: str) -> None:
        """A replica's new container: forget its previous one, if that one is done with."""
        previous = self._latest.get(replica)
        self._latest[replica] = container_id
        retired = self._retired.get(previous or "")
        if previous is not None and previous not in self._alive and retired and retired.is_set():
            del self._retired[previous]
            self._exit_codes.pop(previous, None)

    async def _sweep(self) -> None:
        """Once: remove containers an earlier run of this service left (same owner label)."""
        if self._swept:
            return
        self._swept = True
        for container_id in await self._call(self.engine.containers, label=[self._owner_label]):
            logger.info("removing container %s left by an earlier run", container_id[:12])
            await self._call(self.engine.remove, container_id)

    async def _call(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await anyio.to_thread.run_sync(
            functools.partial(func, *args, **kwargs), limiter=self._calls
        )


def _exit_status(code: int) -> int:
    """Docker's 128+N for a container killed by signal N, as a negative status like Popen's."""
    return -(code - 128) if 128 < code < 128 + 65 else code


def _repository(name: str) -> str:
    """A model name as an image repository component (lowercase, no spaces)."""
    return _safe(name).lower().strip("._-") or "model"


def _container_name(spec: ReplicaSpec) -> str:
    """``modelbus-<name>-<version>-r<i>-<hash of the token>``: unique per start, not the secret."""
    token = hashlib.sha256(spec.token.encode()).hexdigest()[:8]
    return f"modelbus-{_safe(spec.name)}-{_safe(spec.version)}-r{spec.replica}-{token}"


@contextlib.contextmanager
def _translated(base_url: str, doing: str) -> Iterator[None]:
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
