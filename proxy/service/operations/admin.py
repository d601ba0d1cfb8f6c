"""The ``slot/admin`` operations: Clipper's management surface over the bus.

Answers use Clipper's shapes (``to_clipper()`` of the registry records), so the container
manager can hand them to ``clipper_admin`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pydantic import Field

from bus.errors import LimitExceeded, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.records import AppName, InputType, ModelName, ModelVersion
from proxy.registry.registry import Registry
from proxy.service.operations.deploy import MAX_REPLICAS
from proxy.service.quotas import MAX_TEXT_CHARS, SenderQuota
from proxy.service.slots import AnyBody, Body, Op
from proxy.service.versions import VersionRouter, is_running

__all__ = ["AdminOps"]

MAX_WAIT_READY_S = 300.0


class AppBody(Body):
    name: AppName
    input_type: InputType = "doubles"
    default_output: str = Field(default="None", max_length=MAX_TEXT_CHARS)
    latency_slo_micros: int = Field(default=100_000, gt=0)
    description: str = Field(default="", max_length=MAX_TEXT_CHARS)


class NameBody(Body):
    name: str


class ListBody(Body):
    verbose: bool = False
    name: str | None = None


class LinkBody(Body):
    app: AppName
    model: ModelName


class VersionBody(Body):
    name: ModelName
    version: ModelName


class SetVersionBody(Body):
    name: ModelName
    version: ModelName
    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)


class ReplicasBody(Body):
    name: ModelName
    version: ModelName | None = None
    count: int = Field(default=1, ge=0, le=MAX_REPLICAS)


class StopBody(Body):
    versions: dict[ModelName, list[ModelName]] = {}
    names: list[ModelName] = []


class WaitBody(Body):
    name: ModelName
    version: ModelName
    timeout_s: float = Field(default=60.0, gt=0, le=MAX_WAIT_READY_S)


class LogsBody(Body):
    name: ModelName
    version: ModelName
    replica: int = Field(default=0, ge=0)
    tail: int = Field(default=200, gt=0, le=10_000)


class AdminOps:
    def __init__(
        self,
        registry: Registry,
        backend: EmbeddedBackend,
        router: VersionRouter,
        status: Callable[[], dict[str, Any]],
        *,
        max_applications: int = 1000,
        max_waiting_ready: int = 8,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.router = router
        self.status = status
        self.max_applications = max_applications
        self._waiters = SenderQuota(max_waiting_ready, "model.wait_ready calls")

    def table(self) -> dict[str, Op[Any]]:
        return {
            "app.register": Op(AppBody, self.register_app),
            "app.delete": Op(NameBody, self.delete_app),
            "app.list": Op(ListBody, self.list_apps),
            "app.info": Op(NameBody, self.app_info),
            "app.link": Op(LinkBody, self.link),
            "app.unlink": Op(LinkBody, self.unlink),
            "app.linked": Op(NameBody, self.linked),
            "model.list": Op(ListBody, self.list_models),
            "model.info": Op(VersionBody, self.model_info),
            "model.current": Op(NameBody, self.current_version),
            "model.set_version": Op(SetVersionBody, self.set_version),
            "model.rollback": Op(NameBody, self.rollback),
            "model.replicas": Op(ReplicasBody, self.replicas),
            "model.replicas.set": Op(ReplicasBody, self.set_replicas),
            "model.stop": Op(StopBody, self.stop),
            "model.stop_inactive": Op(StopBody, self.stop_inactive),
            "model.stop_all": Op(Body, self.stop_all),
            "model.logs": Op(LogsBody, self.logs),
            "model.wait_ready": Op(WaitBody, self.wait_ready),
            "status": Op(AnyBody, self.service_status),
        }

    async def register_app(self, sender: str, app: AppBody) -> dict[str, Any]:
        if (count := len(await self.registry.list_applications())) >= self.max_applications:
            raise LimitExceeded(
                f"this service holds {count} applications, the most it keeps: delete one first",
                limit=self.max_applications,
            )
        created = await self.registry.register_application(
            app.name,
            app.input_type,
            app.default_output,
            app.latency_slo_micros,
            app.description,
        )
        return created.to_clipper()

    async def delete_app(self, sender: str, body: NameBody) -> dict[str, Any]:
        return (await self.registry.delete_application(body.name)).to_clipper()

    async def list_apps(self, sender: str, body: ListBody) -> list[Any]:
        apps = await self.registry.list_applications()
        return [app.to_clipper() if body.verbose else app.key for app in apps]

    async def app_info(self, sender: str, body: NameBody) -> dict[str, Any]:
        return (await self.registry.get_application(body.name)).to_clipper()

    async def link(self, sender: str, link: LinkBody) -> dict[str, Any]:
        return (await self.registry.link_model(link.app, link.model)).to_clipper()

    async def unlink(self, sender: str, link: LinkBody) -> dict[str, Any]:
        return (await self.registry.unlink_model(link.app, link.model)).to_clipper()

    async def linked(self, sender: str, body: NameBody) -> list[str]:
        return await self.registry.linked_models(body.name)

    async def list_models(self, sender: str, query: ListBody) -> list[Any]:
        models = await self.registry.list_models(query.name)
        return [self._model_view(m) if query.verbose else m.key for m in models]

    def _model_view(self, model: ModelVersion) -> dict[str, Any]:
        view = model.to_clipper()
        view["metadata"] = model.metadata
        view["artifact_kind"] = model.artifact_kind
        view["is_stopped"] = model.is_stopped
        view["is_serving"] = self.router.serving(model.name) == model.version
        view["ready"] = self.backend.is_ready(model.name, model.version)
        return view

    async def model_info(self, sender: str, ref: VersionBody) -> dict[str, Any]:
        return self._model_view(await self.registry.get_model(ref.name, ref.version))

    async def current_version(self, sender: str, body: NameBody) -> str:
        return (await self.registry.current_version(body.name)).version

    async def set_version(self, sender: str, ref: SetVersionBody) -> dict[str, Any]:
        model = await self.registry.get_model(ref.name, ref.version)
        await self._ensure_running(model, ref.replicas)
        model = await self.registry.set_current(ref.name, ref.version)
        self.router.switch(ref.name, ref.version)
        return self._model_view(model)

    async def rollback(self, sender: str, body: NameBody) -> dict[str, Any]:
        model = await self.registry.rollback(body.name)
        await self._ensure_running(model, None)
        self.router.switch(model.name, model.version)
        return self._model_view(model)

    async def _ensure_running(self, model: ModelVersion, replicas: int | None) -> None:
        count = replicas if replicas is not None else max(1, model.desired_replicas)
        if model.is_stopped:
            await self.registry.unstop_version(model.name, model.version)
        if replicas is not None or not is_running(self.backend, model.name, model.version):
            model = await self.registry.set_desired_replicas(model.name, model.version, count)
            await self.router.start(model, count)

    async def replicas(self, sender: str, query: ReplicasBody) -> list[dict[str, Any]]:
        version = await self.router.version_for(query.name, query.version)
        return [asdict(state) for state in self.backend.replicas(query.name, version)]

    async def set_replicas(self, sender: str, query: ReplicasBody) -> dict[str, Any]:
        version = await self.router.version_for(query.name, query.version)
        model = await self.registry.set_desired_replicas(query.name, version, query.count)
        await self.router.start(model, query.count)
        return {"name": query.name, "version": version, "replicas": query.count}

    async def _stopped(self, models: list[ModelVersion]) -> list[str]:
        for model in models:
            if is_running(self.backend, model.name, model.version):
                await self.backend.stop_version(model.name, model.version)
            self.router.forget(model.name, model.version)
        return [model.key for model in models]

    async def stop(self, sender: str, query: StopBody) -> list[str]:
        for name, versions in query.versions.items():  # all or nothing: check before stopping
            for version in versions:
                await self.registry.get_model(name, version)
        for name in query.names:
            if not await self.registry.list_models(name):
                raise NotFound(f"no model named {name!r} is registered", model=name)
        stopped = await self.registry.stop_versions(query.versions) if query.versions else []
        if query.names:
            stopped += await self.registry.stop_models(query.names)
        return await self._stopped(stopped)

    async def stop_inactive(self, sender: str, query: StopBody) -> list[str]:
        names = query.names or sorted({m.name for m in await self.registry.list_models(None)})
        return await self._stopped(await self.registry.stop_inactive_versions(names))

    async def stop_all(self, sender: str, body: Body) -> list[str]:
        return await self._stopped(await self.registry.stop_all_versions())

    async def logs(self, sender: str, query: LogsBody) -> str:
        if not is_running(self.backend, query.name, query.version):
            raise NotFound(f"{query.name}:{query.version} has no running replicas")
        return await self.backend.logs(query.name, query.version, query.replica, tail=query.tail)

    async def wait_ready(self, sender: str, query: WaitBody) -> dict[str, Any]:
        """Return once a replica of the version is ready (RequestTimeout past ``timeout_s``)."""
        await self.registry.get_model(query.name, query.version)
        if not is_running(self.backend, query.name, query.version):
            raise NotFound(f"{query.name}:{query.version} has no replicas; set some first")
        with self._waiters.hold(""):  # service-wide: waiters never fill the admin slot
            await self.backend.wait_ready(query.name, query.version, timeout_s=query.timeout_s)
        return self._model_view(await self.registry.get_model(query.name, query.version))

    async def service_status(self, sender: str, body: AnyBody) -> dict[str, Any]:
        return self.status()
