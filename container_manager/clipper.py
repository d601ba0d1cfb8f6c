"""Clipper's container manager over the bus: ``ClipperConnection(BusContainerManager(...))``.

    from clipper_admin import ClipperConnection
    from container_manager import BusContainerManager, deploy_python_closure

    manager = BusContainerManager(bus_url, "me.key", ["me.grant"], f"{namespace}/s.modelbus/_")
    clipper = ClipperConnection(manager)
    clipper.connect()       # a bus session, a liveness check, the local REST endpoint
    clipper.register_application("thermal", "doubles", "0.0", 100_000)
    deploy_python_closure(clipper, "thermal", 1, "doubles", predict)     # no container engine
    clipper.link_model_to_app("thermal", "thermal")
    requests.post(f"http://{clipper.get_query_addr()}/thermal/predict", json={"input": [21.5]})

:class:`BusContainerManager` has the methods of clipper_admin's ``ContainerManager`` (without
importing clipper_admin) and its ``cluster_identifier``. ``connect`` (and ``start_clipper``,
which starts nothing: the cluster is the service) opens a session on the bus as the user's
entity, raises unless the service's heartbeat is younger than 30 s, and starts the loopback
endpoint that ``ClipperConnection`` sends its REST calls to (:mod:`container_manager.rest`).

``deploy_model`` uploads the artifact and stages the deploy; Clipper's ``add_model``, which
``ClipperConnection.deploy_model`` sends next with the labels and batch size, deploys it and
waits for a ready replica. The ``image`` is either an image on the user's container engine
(exported and shipped as a tarball; the service needs its docker runtime to run it), or the
``closure@sha256:…`` name that :meth:`BusContainerManager.build_closure` returns for a Python
function — which runs in the service's worker processes, no container engine anywhere.

Synchronous, like ClipperConnection: the session runs on an event loop in a daemon thread of
its own, and each method runs its requests there and waits for them.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bus import Entity, Grant, Verifier, decode_chain
from bus.artifact import build_closure_archive
from bus.errors import InvalidRequest, NotFound, TransportError
from bus.grants import load_chain
from bus.transfer import UploadProgress
from container_manager import engine
from container_manager.loopback import LocalAuth
from container_manager.rest import AddModel
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient
from container_manager.session import Session
from container_manager.staging import StagedDeploy

__all__ = ["CLOSURE_IMAGE_PREFIX", "BusContainerManager"]

logger = logging.getLogger(__name__)

CLOSURE_IMAGE_PREFIX = "closure@sha256:"
"""The "image" of a closure: the service names closure models' containers this way too."""
LOG_TAIL_LINES = 10_000
_RUNNING = ("starting", "ready")


def _chain(proof: Sequence[Grant] | str | Path | bytes) -> tuple[Grant, ...]:
    if isinstance(proof, bytes):
        return decode_chain(proof)
    if isinstance(proof, str | Path):
        return load_chain(proof)
    return tuple(proof)


class BusContainerManager:
    """Clipper's ``ContainerManager`` for a modelbus service reached over the bus.

    ``entity`` signs (an :class:`bus.Entity` or its file); ``proofs`` are the grant chains it
    presents (chains, or chain files); ``service_uri`` is ``<namespace>/s.modelbus/_`` or just
    the namespace, which may be one of ``aliases``. ``ready_timeout_s`` bounds the wait for a
    deployed version's first ready replica (0: don't wait); ``progress`` sees each upload.
    ``local_auth`` picks how the loopback endpoint keeps other users out besides its secret
    path prefix, which it always requires (see :mod:`container_manager.loopback`; by default
    also the connection's owner, on Linux). ``service_key`` (the key text ``modelbus serve``
    prints) pins whose replies and liveness count; by default it is learnt from the service's
    announced state (:class:`container_manager.ServiceClient`).
    """

    def __init__(
        self,
        bus_url: str,
        entity: Entity | str | Path,
        proofs: Sequence[Sequence[Grant] | str | Path | bytes],
        service_uri: str,
        *,
        cluster_name: str = "default-cluster",
        image_namespace: str | None = "localhost",
        aliases: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        ready_timeout_s: float = 60.0,
        progress: Callable[[UploadProgress], None] | None = None,
        local_auth: LocalAuth | None = None,
        service_key: str | None = None,
    ) -> None:
        self.bus_url = bus_url
        self.entity = entity if isinstance(entity, Entity) else Entity.load(entity)
        self.proofs = [_chain(proof) for proof in proofs]
        self.aliases = dict(aliases or {})
        canonical = Verifier(aliases=self.aliases).canonical(service_uri.strip("/"))
        self.service_uri = canonical if "/" in canonical else f"{canonical}/{DEFAULT_SERVICE_PATH}"
        self.cluster_name = cluster_name
        self.image_namespace = image_namespace
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.progress = progress
        self.local_auth = local_auth
        self.service_key = service_key
        self._session: Session | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()
        self._images: dict[str, str] = {}
        self._metadata: dict[tuple[str, str | None], dict[str, Any]] = {}

    @property
    def cluster_identifier(self) -> str:
        """What ClipperConnection logs, and names the images it builds after
        (``<cluster_identifier>-<name>:<version>``): under ``image_namespace`` (``localhost``
        by default), so that the push ``build_model`` always attempts stays on this machine."""
        prefix = f"{self.image_namespace}/" if self.image_namespace else ""
        return f"{prefix}{self.cluster_name}"

    # -- the session ------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the session (once): raises unless the service is alive."""
        with self._lock:
            if self._session is not None:
                return
            session = Session(
                bus_url=self.bus_url,
                entity=self.entity,
                proofs=self.proofs,
                verifier=Verifier(aliases=self.aliases),
                service_uri=self.service_uri,
                timeout_s=self.timeout_s,
                ready_timeout_s=self.ready_timeout_s,
                auth=self.local_auth,
                service_key=self.service_key,
            )
            self._session = session
            # An unclosed manager still ends its session: when collected, or at exit.
            self._finalizer = weakref.finalize(self, session.close)

    def start_clipper(self, *args: Any, **kwargs: Any) -> None:
        """Starts nothing (the service runs already): connects and checks it is alive."""
        self.connect()

    def close(self) -> None:
        """End the session and the loopback endpoint (idempotent)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            assert self._finalizer is not None
            self._finalizer()  # session.close(), once

    def __enter__(self) -> BusContainerManager:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_connected(self) -> bool:
        return self._session is not None

    def _connected(self) -> Session:
        session = self._session
        if session is None:
            raise TransportError("the container manager is not connected: call connect() first")
        return session

    @property
    def service(self) -> ServiceClient:
        """The async client of the session (run its coroutines with :meth:`call`)."""
        return self._connected().service

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` (e.g. a ServiceClient method) on the session's loop and wait."""
        return self._connected().call(function, *args, **kwargs)

    # -- addresses --------------------------------------------------------------------------

    def get_admin_addr(self) -> str:
        server = self._connected().server
        assert server is not None
        return server.address

    def get_query_addr(self) -> str:
        return self.get_admin_addr()

    def get_metric_addr(self) -> str:
        """The same endpoint: ``GET /metrics`` answers the service's status as JSON."""
        return self.get_admin_addr()

    # -- deploying --------------------------------------------------------------------------

    def _check_may_deploy(self) -> None:
        service = self.service
        self.call(service.bus.proof_for, service.slot("deploy"), "P")

    def build_closure(
        self, func: Callable[..., Any], *, packages: Mapping[str, str] | None = None
    ) -> str:
        """Upload ``func(inputs: list) -> list`` as a closure archive; its "image" name."""
        self._check_may_deploy()
        data = build_closure_archive(func, packages=packages)
        with tempfile.TemporaryDirectory(prefix="modelbus-closure-") as tmp:
            archive = Path(tmp) / "model.closure"
            archive.write_bytes(data)
            sha256 = self.call(
                self.service.upload_artifact,
                archive,
                name=f"closure:{getattr(func, '__qualname__', 'function')}",
                kind="closure",
                progress=self.progress,
            )
        return f"{CLOSURE_IMAGE_PREFIX}{sha256}"

    def upload_image(self, image: str | None = None, *, tarball: str | Path | None = None) -> str:
        """Ship an image — a ``docker save`` ``tarball``, or ``image`` exported from your
        container engine — to the service; the image reference to deploy it by."""
        self._check_may_deploy()
        if tarball is not None:
            named = engine.image_references(Path(tarball))
            image = image or (named[0] if named else None)
            if image is None:
                raise InvalidRequest(f"{tarball} names no image; pass the image reference too")
            self._images[image] = self._upload(Path(tarball), image)
            return image
        if image is None:
            raise InvalidRequest("name the image to ship, or its tarball")
        with tempfile.TemporaryDirectory(prefix="modelbus-image-") as tmp:
            exported = engine.export_image(image, Path(tmp) / "image.tar")
            self._images[image] = self._upload(exported, image)
        return image

    def _upload(self, path: Path, image: str) -> str:
        return str(
            self.call(
                self.service.upload_artifact,
                path,
                name=f"image:{image}",
                kind="image",
                progress=self.progress,
            )
        )

    def set_model_metadata(
        self, name: str, metadata: Mapping[str, Any], version: str | None = None
    ) -> None:
        """Model metadata (DESIGN §6: type, context, ranges, training streams…) to register
        with the next deploys of ``name`` (or only of ``name:version``)."""
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"model metadata must be JSON: {exc}") from exc
        self._metadata[(name, version)] = dict(metadata)

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        num_replicas: int = 1,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Stage ``name:version`` from ``image`` (see the module docstring); Clipper's
        ``add_model`` completes it. ``metadata`` overrides :meth:`set_model_metadata`'s."""
        version = str(version)
        self._check_may_deploy()
        if image.startswith(CLOSURE_IMAGE_PREFIX):
            kind, artifact, image_ref = "closure", image[len(CLOSURE_IMAGE_PREFIX) :], None
        else:
            # Shipped by upload_image, or now: an engine's tag may move, so it is not kept.
            artifact = self._images.pop(image, "") or self._images.pop(self.upload_image(image))
            kind, image_ref = "image", image
        if metadata is None:
            metadata = self._metadata.get((name, version), self._metadata.get((name, None), {}))
        staged = StagedDeploy(input_type, kind, artifact, image_ref, num_replicas, dict(metadata))
        self._connected().deployer.stage(name, version, staged)

    def deploy_python_closure(
        self,
        name: str,
        version: str,
        input_type: str,
        func: Callable[..., Any],
        labels: Sequence[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        *,
        metadata: Mapping[str, Any] | None = None,
        packages: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Deploy a Python function without ClipperConnection; its model info."""
        version = str(version)
        image = self.build_closure(func, packages=packages)
        self.deploy_model(name, version, input_type, image, num_replicas, metadata=metadata)
        request = AddModel(
            model_name=name,
            model_version=version,
            input_type=input_type,
            container_name=image,
            labels=list(labels or []),
            batch_size=batch_size,
        )
        self.call(self._connected().deployer.add_model, request)
        return dict(self.call(self.service.get_model_info, name, version))

    # -- replicas ---------------------------------------------------------------------------

    def _replicas(self, name: str, version: str) -> list[dict[str, Any]]:
        return list(self.call(self.service.get_replicas, name, str(version)))

    def get_num_replicas(self, name: str, version: str) -> int:
        return sum(replica["state"] in _RUNNING for replica in self._replicas(name, version))

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int
    ) -> None:
        self.call(self.service.set_num_replicas, name, num_replicas, str(version))

    def get_logs(self, logging_dir: str | Path) -> list[str]:
        """Write each running replica's log to ``logging_dir``; the files' paths."""
        directory = Path(logging_dir)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for model in self.call(self.service.get_all_models, True):
            if model.get("is_stopped"):
                continue
            name, version = model["model_name"], model["model_version"]
            try:
                for replica in self._replicas(name, version):
                    text = self.call(
                        self.service.get_logs, name, version, replica["index"], LOG_TAIL_LINES
                    )
                    path = directory / f"{name}_{version}-replica{replica['index']}.log"
                    path.write_text(text)
                    written.append(str(path))
            except NotFound:  # stopped meanwhile
                continue
        return written

    def stop_models(self, models: Mapping[str, Sequence[str]]) -> None:
        """Stop every replica of the listed versions: ``{name: [version, ...]}``."""
        versions = {name: [str(v) for v in listed] for name, listed in models.items() if listed}
        if versions:
            self.call(self.service.stop_versioned_models, versions)

    def stop_all_model_containers(self) -> None:
        self.call(self.service.stop_all_model_containers)

    def stop_all(self, graceful: bool = True) -> None:
        """Stop every model version, then end the session (the service keeps running)."""
        try:
            self.stop_all_model_containers()
        finally:
            self.close()

    # -- the part of the Docker API the service proxies ------------------------------------

    def list_containers(self, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The service's containers carrying all of ``labels``."""
        return list(self.call(self.service.list_containers, labels))

    def run_container(
        self,
        image: str,
        name: str,
        environment: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start a container named ``name`` from ``image`` (which the service's engine holds)."""
        return dict(self.call(self.service.run_container, image, name, environment, labels))
