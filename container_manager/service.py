"""The Python client of a modelbus service: deploy models, manage them, predict — over the bus.

    async with BusClient(open_transport(url), entity, proofs=[chain]) as bus:
        service = ServiceClient(bus, service_uri)
        await service.check_alive()
        await service.register_application("thermal", "doubles", "0.0", 100_000)
        await service.deploy_function("thermal", "1", predict_fn, "doubles")
        await service.link_model_to_app("thermal", "thermal")
        print(await service.predict(app="thermal", input=[21.5, 0.3]))

Every call is a signed request on one of the service's slots (``predict``, ``admin``,
``deploy``); the service's typed errors are raised here as the same classes.

Replies and liveness count only when signed by the **service's key** (protocol §11, §13):
``service_key`` when given (the key text ``modelbus serve`` prints, or its bytes); otherwise
learnt once, before the first call, as the signer of the service's persisted
``S/!meta/state`` (or ``S/!meta/lastalive`` for a service served by named instances, which
publish no ``S/!meta/state``) — a namespace-rooted chain lets only the service (and the
namespace owner) publish there when the owner gives users the narrow grants of §17.1; failing
that (the client may not read ``!meta``, or nothing is announced yet), the namespace's own key,
the case of a service that owns its namespace.
Routing and selection policies' calls come from :class:`container_manager.routes.RouteCalls`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from bus import BusClient, service_states
from bus import uri as uris
from bus.artifact import build_closure_archive
from bus.entity import key_from_text, key_to_text
from bus.errors import DecodeError, InvalidUri, NotFound, TransportError, VerificationError
from bus.liveness.heartbeat import LASTALIVE, STALE_AFTER_S, STATE
from bus.liveness.monitor import ServiceState
from bus.transfer import UploadProgress, upload_file
from container_manager.forecasts import ForecastCalls
from container_manager.jobs import FitsAndSchedules
from container_manager.routes import RouteCalls

__all__ = ["DEFAULT_SERVICE_PATH", "ServiceClient"]

DEFAULT_SERVICE_PATH = "s.modelbus/_"


class ServiceClient(RouteCalls, FitsAndSchedules, ForecastCalls):
    """Talks to the service at ``service_uri`` (``<namespace>/s.modelbus/_`` by default).
    Fits and schedules: :class:`container_manager.jobs.FitsAndSchedules`."""

    def __init__(
        self,
        bus: BusClient,
        service_uri: str,
        *,
        timeout_s: float = 30.0,
        service_key: bytes | str | None = None,
    ) -> None:
        self.bus = bus
        self.service_uri = service_uri
        self.interface_uri = f"{service_uri}/i.modelbus"
        self.timeout_s = timeout_s
        self._service_key: bytes | None = None
        if service_key is not None:
            self._pin(key_from_text(service_key) if isinstance(service_key, str) else service_key)

    def slot(self, name: str) -> str:
        return f"{self.interface_uri}/slot/{name}"

    def _pin(self, key: bytes) -> None:
        self._service_key = key
        self.bus.expect_replies_from(self.slot("predict"), key)

    async def service_key(self) -> bytes:
        """The key whose replies and liveness count (module docstring): configured, or learnt."""
        if self._service_key is not None:
            return self._service_key
        try:
            announced = await self.bus.query(f"{self.service_uri}/{STATE}")
            if not announced:  # served by named instances: each refreshes the lastalive
                announced = await self.bus.query(f"{self.service_uri}/{LASTALIVE}")
        except (VerificationError, InvalidUri):  # may not read !meta: fall back below
            announced = []
        if announced:
            learnt: bytes = announced[0].origin
            self._pin(learnt)
            return learnt
        namespace = uris.namespace_of(self.bus.verifier.canonical(self.service_uri))
        try:
            owner = key_from_text(namespace)
        except DecodeError:
            raise NotFound(
                f"cannot tell the key of the service at {self.service_uri}: it announces no "
                "state and its namespace is no key; configure it (service_key=…)",
                service=self.service_uri,
            ) from None
        self.bus.expect_replies_from(self.slot("predict"), owner)  # not kept: learn it later
        return owner

    async def call(
        self, slot: str, op: str, *, reply_timeout_s: float | None = None, **body: Any
    ) -> Any:
        """Send operation ``op`` with ``body`` to a slot; the reply's result or a typed error."""
        await self.service_key()
        return await self.bus.request(
            self.slot(slot), {"op": op, **body}, timeout_s=reply_timeout_s or self.timeout_s
        )

    # -- liveness ---------------------------------------------------------------------------

    async def liveness(self) -> ServiceState:
        """The service's liveness, from the messages its own key signed."""
        key = await self.service_key()
        states = await service_states(self.bus, self.service_uri, origin=key)
        found = [state for state in states if state.service == self.service_uri]
        if not found:
            raise NotFound(
                f"no modelbus service announces itself at {self.service_uri} (signed by "
                f"{key_to_text(key)}); is `modelbus serve` running on this bus and namespace, "
                "with that key?",
                service=self.service_uri,
            )
        return found[0]

    async def check_alive(self, *, stale_after_s: float = STALE_AFTER_S) -> ServiceState:
        """Raise unless the service's heartbeat is fresh (younger than ``stale_after_s``)."""
        state = await self.liveness()
        if not state.is_alive:
            raise TransportError(
                f"the modelbus service at {self.service_uri} is not alive ({_why_dead(state)})",
                service=self.service_uri,
                reason=state.reason,
            )
        return state

    # -- applications -----------------------------------------------------------------------

    async def register_application(
        self,
        name: str,
        input_type: str,
        default_output: str,
        slo_micros: int,
        description: str = "",
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "admin",
                "app.register",
                name=name,
                input_type=input_type,
                default_output=default_output,
                latency_slo_micros=slo_micros,
                description=description,
            )
        )

    async def delete_application(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "app.delete", name=name))

    async def get_all_apps(self, verbose: bool = False) -> list[Any]:
        return list(await self.call("admin", "app.list", verbose=verbose))

    async def get_app_info(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "app.info", name=name))

    async def link_model_to_app(self, app_name: str, model_name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "app.link", app=app_name, model=model_name))

    async def unlink_model_from_app(self, app_name: str, model_name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "app.unlink", app=app_name, model=model_name))

    async def get_linked_models(self, app_name: str) -> list[str]:
        return list(await self.call("admin", "app.linked", name=app_name))

    # -- models -----------------------------------------------------------------------------

    async def upload_artifact(
        self,
        path: str | Path,
        *,
        name: str,
        kind: str,
        progress: Callable[[UploadProgress], None] | None = None,
        chunk_size: int = 1024 * 1024,
        window: int = 16,
    ) -> str:
        """Upload a file in chunks (resuming after interruptions); return its SHA-256."""
        await self.service_key()
        committed = await upload_file(
            self.bus,
            self.slot("deploy"),
            path,
            name=name,
            kind=kind,
            chunk_size=chunk_size,
            window=window,
            timeout_s=self.timeout_s,
            progress=progress,
        )
        return str(committed["artifact"])

    async def deploy_artifact(
        self,
        name: str,
        version: str,
        input_type: str,
        artifact: str,
        *,
        kind: str = "closure",
        image: str | None = None,
        labels: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        replicas: int = 1,
        batch_size: int = -1,
        make_current: bool = True,
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "deploy",
                "model.deploy",
                name=name,
                version=version,
                input_type=input_type,
                artifact=artifact,
                kind=kind,
                image=image,
                labels=labels or [],
                metadata=metadata or {},
                replicas=replicas,
                batch_size=batch_size,
                make_current=make_current,
            )
        )

    async def deploy_v2(
        self,
        name: str,
        version: str,
        input_type: str,
        *,
        url: str,
        model: str,
        labels: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        batch_size: int = -1,
        make_current: bool = True,
    ) -> dict[str, Any]:
        """Deploy ``name:version`` as served by an Open Inference Protocol (V2) server: the
        service forwards its predictions to ``{url}/v2/models/{model}/infer``."""
        return dict(
            await self.call(
                "deploy",
                "model.deploy",
                name=name,
                version=version,
                input_type=input_type,
                kind="v2",
                v2_url=url,
                v2_model=model,
                labels=labels or [],
                metadata=metadata or {},
                batch_size=batch_size,
                make_current=make_current,
            )
        )

    async def deploy_function(
        self,
        name: str,
        version: str,
        func: Callable[[list[Any]], list[Any]],
        input_type: str,
        *,
        labels: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        replicas: int = 1,
        batch_size: int = -1,
        packages: dict[str, str] | None = None,
        progress: Callable[[UploadProgress], None] | None = None,
    ) -> dict[str, Any]:
        """Deploy a Python function ``func(inputs: list) -> list`` as ``name:version``: it is
        cloudpickled into a closure archive, uploaded in chunks and run by worker processes."""
        with tempfile.TemporaryDirectory(prefix="modelbus-closure-") as tmp:
            archive = Path(tmp) / f"{name}-{version}.closure"
            data = build_closure_archive(func, packages=packages)
            await anyio.to_thread.run_sync(archive.write_bytes, data)
            artifact = await self.upload_artifact(
                archive, name=f"{name}:{version}", kind="closure", progress=progress
            )
        return await self.deploy_artifact(
            name,
            version,
            input_type,
            artifact,
            labels=labels,
            metadata=metadata,
            replicas=replicas,
            batch_size=batch_size,
        )

    async def get_all_models(self, verbose: bool = False, name: str | None = None) -> list[Any]:
        return list(await self.call("admin", "model.list", verbose=verbose, name=name))

    async def get_model_info(self, name: str, version: str) -> dict[str, Any]:
        return dict(await self.call("admin", "model.info", name=name, version=version))

    async def get_current_model_version(self, name: str) -> str:
        return str(await self.call("admin", "model.current", name=name))

    async def set_model_version(
        self, name: str, version: str, num_replicas: int | None = None
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "admin", "model.set_version", name=name, version=version, replicas=num_replicas
            )
        )

    async def rollback(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "model.rollback", name=name))

    async def set_num_replicas(
        self, name: str, num_replicas: int, version: str | None = None
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "admin", "model.replicas.set", name=name, version=version, count=num_replicas
            )
        )

    async def get_replicas(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        return list(await self.call("admin", "model.replicas", name=name, version=version))

    async def wait_ready(self, name: str, version: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Return once a replica of ``name:version`` is ready to predict."""
        return dict(
            await self.call(
                "admin",
                "model.wait_ready",
                reply_timeout_s=timeout_s + 5,
                name=name,
                version=version,
                timeout_s=timeout_s,
            )
        )

    async def get_logs(self, name: str, version: str, replica: int = 0, tail: int = 200) -> str:
        return str(
            await self.call(
                "admin", "model.logs", name=name, version=version, replica=replica, tail=tail
            )
        )

    async def stop_models(self, names: list[str]) -> list[str]:
        return list(await self.call("admin", "model.stop", names=names))

    async def stop_versioned_models(self, versions: dict[str, list[str]]) -> list[str]:
        return list(await self.call("admin", "model.stop", versions=versions))

    async def stop(
        self, names: list[str] | None = None, versions: dict[str, list[str]] | None = None
    ) -> list[str]:
        """Stop every version of each of ``names`` and the ``versions`` named (all or none)."""
        return list(
            await self.call("admin", "model.stop", names=names or [], versions=versions or {})
        )

    async def stop_inactive_model_versions(self, names: list[str]) -> list[str]:
        return list(await self.call("admin", "model.stop_inactive", names=names))

    async def stop_all_model_containers(self) -> list[str]:
        return list(await self.call("admin", "model.stop_all"))

    async def status(self) -> dict[str, Any]:
        return dict(await self.call("admin", "status"))

    # -- containers (the part of the Docker API the service proxies, on slot/deploy) ---------

    async def list_containers(self, labels: Mapping[str, str] | None = None) -> list[Any]:
        """This service's containers whose labels include all of ``labels``."""
        return list(await self.call("deploy", "container.list", labels=dict(labels or {})))

    async def run_container(
        self,
        image: str,
        name: str,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start a container named ``name`` from an image the service's engine holds."""
        return dict(
            await self.call(
                "deploy",
                "container.run",
                image=image,
                name=name,
                env=dict(env or {}),
                labels=dict(labels or {}),
            )
        )

    # -- predictions ------------------------------------------------------------------------

    async def predict(
        self,
        *,
        app: str | None = None,
        model: str | None = None,
        version: str | None = None,
        input: Any = None,
        inputs: list[Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """One prediction (``input``) or a batch (``inputs``) for an application or a model,
        optionally pinned to ``version``; Clipper's response shape plus model and version."""
        body: dict[str, Any] = {"app": app, "model": model, "version": version}
        if inputs is not None:
            body["inputs"] = inputs
        else:
            body["input"] = input
        return dict(
            await self.call(
                "predict",
                "predict",
                reply_timeout_s=timeout_s,
                **{k: v for k, v in body.items() if v is not None},
            )
        )


def _why_dead(state: ServiceState) -> str:
    """The reason a service reads as dead, with what else is known when that may mislead: a
    broker publishes each client's Will when the broker itself goes down, so right after a
    broker restart a service still beating reads "died" until it announces itself again. Such a
    Will was signed when the service connected, before its last heartbeat."""
    age_s = state.age_s(time.time_ns())
    is_old_will = (
        state.died_ns is not None
        and state.last_alive_ns is not None
        and state.died_ns < state.last_alive_ns
    )
    if state.reason != "died" or not is_old_will or age_s is None or age_s > STALE_AFTER_S:
        return state.reason
    return (
        f"its last state is offline, yet it beat {age_s:.0f} s ago: if the broker just "
        "restarted, it published the service's Will and the service announces itself again "
        "once reconnected — retry in a few seconds"
    )
