"""Which version of a model takes traffic.

A model's *current* version (in the registry) changes at once when an operator sets it; the
version that *serves* changes only when one of its replicas is ready, so the previous version
keeps answering meanwhile and no request fails during a switch.

Several proxies sharing a PostgreSQL registry hear each other's switches (deploys, set current,
rollbacks): the registry calls :meth:`VersionRouter.follow` with the model's name, and this
instance starts the new current version if it does not run it yet (its artifact in the shared
store) and switches to it by the same rule.

A version's artifact is found through ``fetch_artifact`` (the artifact store's
:meth:`~proxy.uploads.store.ArtifactStore.local_at`): given the location the version recorded,
a local, verified file — downloaded first when the store is an S3 bucket; a fitted image's
state through ``fetch_state`` (the store's ``local``), by its digest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from bus.errors import BusError, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.backend.remote_v2 import V2Endpoint
from proxy.registry.records import Application, InputType, ModelVersion
from proxy.registry.registry import Registry

__all__ = ["DEFAULT_BATCH_SIZE", "VersionRouter", "is_running", "start_model"]

logger = logging.getLogger(__name__)

READY_WAIT_S = 600.0
DEFAULT_BATCH_SIZE = 64
"""The batch cap for Clipper's adaptive batch size (-1): batches still only grow under load."""


def is_running(backend: EmbeddedBackend, name: str, version: str) -> bool:
    return (name, version) in backend.versions()


FetchArtifact = Callable[[str], Awaitable[Path]]


async def start_model(
    backend: EmbeddedBackend,
    model: ModelVersion,
    replicas: int,
    fetch_artifact: FetchArtifact,
    fetch_state: FetchArtifact,
) -> None:
    """Start ``replicas`` replicas of a registered version (or resize it if it runs); its
    artifact is the local file ``fetch_artifact`` gives for its recorded location, a fitted
    image's state the one ``fetch_state`` gives for its digest (the store's own lookup)."""
    if is_running(backend, model.name, model.version):
        await backend.set_replicas(model.name, model.version, replicas)
        return
    remote = None
    if model.artifact_kind == "v2":  # served by a V2 server: artifact_path is its URL
        assert model.image is not None
        remote = V2Endpoint(model.artifact_path, model.image, model.input_type)
    if replicas > 0:
        batch_size = model.batch_size if model.batch_size > 0 else DEFAULT_BATCH_SIZE
        await backend.start_version(
            model.name,
            model.version,
            model.artifact_path if remote else await fetch_artifact(model.artifact_path),
            replicas=replicas,
            batch_size=batch_size,
            image=None if remote else model.image,
            remote=remote,
            state_file=await _state_file(model, fetch_state),
        )


async def _state_file(model: ModelVersion, fetch_state: FetchArtifact) -> Path | None:
    """A fitted image version's state file, found by its digest in the store (where the fit
    kept it), readable by the replica's user (it is mounted)."""
    sha = model.state_sha256
    if sha is None:
        return None
    path = await fetch_state(sha)
    await anyio.to_thread.run_sync(os.chmod, path, 0o644)  # the container's user 65534 reads it
    return path


class VersionRouter:
    def __init__(
        self,
        registry: Registry,
        backend: EmbeddedBackend,
        task_group: TaskGroup,
        *,
        on_switch: Callable[[], None] | None = None,
        fetch_artifact: FetchArtifact,
        fetch_state: FetchArtifact,
    ):
        self._on_switch = on_switch
        self._fetch_artifact = fetch_artifact
        self._fetch_state = fetch_state
        self._registry = registry
        self._backend = backend
        self._task_group = task_group
        self._serving: dict[str, str] = {}
        self._apps: dict[str, tuple[int, Application]] = {}
        self._input_types: dict[tuple[str, str], InputType] = {}
        self._starting: dict[tuple[str, str], anyio.Lock] = {}

    async def application(self, name: str) -> Application:
        """The application, from memory while the registry's applications are unchanged."""
        generation = self._registry.apps_generation
        cached = self._apps.get(name)
        if cached is not None and cached[0] == generation:
            return cached[1]
        app = await self._registry.get_application(name)
        self._apps[name] = (generation, app)
        return app

    async def input_type(self, name: str, version: str) -> InputType:
        """A version's input type (versions are immutable, so it is read once)."""
        key = (name, version)
        if key not in self._input_types:
            self._input_types[key] = (await self._registry.get_model(name, version)).input_type
        return self._input_types[key]

    async def start(self, model: ModelVersion, replicas: int) -> None:
        """Start (or resize) a registered version here, its artifact fetched as needed. One
        start of a version at a time: a deploy and the follower woken by its own commit's
        notification (a postgresql:// registry) would otherwise both find it not running, and
        the second start would fail the deploy with "already started"."""
        lock = self._starting.setdefault((model.name, model.version), anyio.Lock())
        async with lock:  # kept: one small lock per version started in this process
            await start_model(
                self._backend, model, replicas, self._fetch_artifact, self._fetch_state
            )

    def serving(self, name: str) -> str | None:
        return self._serving.get(name)

    async def version_for(self, name: str, version: str | None) -> str:
        """The asked version, or the serving one, or (before any is ready) the current one."""
        if version is not None:
            return version
        serving = self._serving.get(name)
        if serving is not None:
            return serving
        try:
            return (await self._registry.current_version(name)).version
        except NotFound:
            raise NotFound(f"no model named {name!r} is registered", model=name) from None

    def switch(self, name: str, version: str) -> None:
        """Serve ``version`` as soon as one of its replicas is ready."""
        if self._backend.is_ready(name, version) or name not in self._serving:
            self._serving[name] = version
        if not self._backend.is_ready(name, version):
            self._task_group.start_soon(self._switch_when_ready, name, version)

    def follow(self, name: str | None) -> None:
        """Another instance changed ``name``'s current version (None: perhaps any model's):
        start it here if needed, then switch to it once ready."""
        self._task_group.start_soon(self._follow, name)

    async def _follow(self, name: str | None) -> None:
        try:
            models = (
                [await self._registry.current_version(name)]
                if name is not None
                else await self._registry.list_models(current_only=True)
            )
        except BusError as error:
            logger.warning("cannot follow the current version of %s: %s", name, error.message)
            return
        for model in models:
            if model.is_stopped or model.desired_replicas == 0:
                continue
            try:
                if not is_running(self._backend, model.name, model.version):
                    await self.start(model, model.desired_replicas)
            except BusError as error:
                logger.warning("cannot start %s here: %s", model.key, error.message)
                continue
            except OSError as error:  # its artifact unreadable here: the others still follow
                logger.warning("cannot start %s here: %s", model.key, error)
                continue
            if self._serving.get(model.name) != model.version:
                logger.info("%s is current (switched by another instance)", model.key)
                self.switch(model.name, model.version)

    def forget(self, name: str, version: str) -> None:
        if self._serving.get(name) == version:
            del self._serving[name]

    async def _switch_when_ready(self, name: str, version: str) -> None:
        try:
            await self._backend.wait_ready(name, version, timeout_s=READY_WAIT_S)
        except BusError as error:
            logger.warning("%s:%s never became ready: %s", name, version, error.message)
            return
        try:
            current = await self._registry.current_version(name)
        except NotFound:
            return
        if current.version == version:
            logger.info("%s:%s is ready and now serves", name, version)
            self._serving[name] = version
            if self._on_switch is not None:
                self._on_switch()
