"""Clipper's REST API on loopback, carried over the bus: what ``ClipperConnection`` talks to.

``ClipperConnection`` speaks HTTP to ``get_admin_addr()`` (Clipper's management frontend), and
clients POST predictions to ``get_query_addr()`` (its query frontend). The container manager
serves both on one loopback port; each call becomes a request on the bus, signed by the user's
entity, and comes back in Clipper's shapes and status codes:

    POST /admin/add_app                 app.register            "Successfully added …"
    POST /admin/delete_app              app.delete
    POST /admin/add_model_links         app.link (one model, as Clipper)
    POST /admin/delete_model_links      app.unlink              "Success!"
    POST /admin/get_linked_models       app.linked              [model names]
    POST /admin/get_all_applications    app.list                [names] or [app info]
    POST /admin/get_application         app.info                app info, {} if none
    POST /admin/add_model               model.deploy of what deploy_model staged (see below)
    POST /admin/get_all_models          model.list              ["name:version"] or [model info]
    POST /admin/get_model               model.info              model info, {} if none
    POST /admin/set_model_version       model.set_version
    POST /admin/delete_versioned_model  model.stop (the version stays registered, stopped)
    POST /admin/get_all_containers      model.replicas of each running version
    POST /admin/get_container           one replica, {} if none
    GET  /admin/ping, /metrics          liveness, the service's status (JSON)
    POST /<app>/predict                 predict {"input": x} or {"input_batch": [x, …]}
                                        → {query_id, output, default[, default_explanation]}
                                          or {batch_predictions: […]}

Admin failures answer 400 with the message, as Clipper's frontend does; "no such application or
model" in the lookups answers ``{}`` (Clipper's "not registered"). Prediction failures answer
Clipper's ``{"error", "cause"}`` with 400 (a bad request), 403 (refused by grants), 404 (no such
application), 503/504 (overloaded, timed out) or 500. Inputs of ``bytes`` applications arrive
base64-encoded, as Clipper's query frontend takes them; byte outputs leave base64-encoded.

``add_model`` deploys what the manager's ``deploy_model`` staged (:mod:`container_manager.staging`);
a model cannot be registered without being deployed: modelbus runs what it registers.

:class:`ClipperRest` runs on the manager's event loop, in a thread of its own — never the
caller's, so a caller blocking on HTTP cannot starve it; :mod:`container_manager.loopback`
serves it on ``127.0.0.1`` to the user who started it only.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bus.errors import (
    BusError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RequestTimeout,
    VerificationError,
)
from container_manager.loopback import HttpReply
from container_manager.service import ServiceClient

__all__ = ["AddModel", "ClipperRest", "ModelRegistrar"]

logger = logging.getLogger(__name__)

_PREDICT = re.compile(r"^/(?P<app>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})/predict$")
_B = TypeVar("_B", bound=BaseModel)


# ---- request bodies (Clipper's JSON; unknown fields are ignored, as Clipper's frontend does) --


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _AddApp(_Body):
    name: str
    input_type: str
    default_output: str
    latency_slo_micros: int


class _AppName(_Body):
    name: str


class _Links(_Body):
    app_name: str
    model_names: list[str]


class _LinkedModels(_Body):
    app_name: str


class _Verbose(_Body):
    verbose: bool = False


class _ModelRef(_Body):
    model_name: str
    model_version: str


class _ContainerRef(_ModelRef):
    replica_id: int


class AddModel(_Body):
    """Clipper's ``add_model`` body."""

    model_name: str
    model_version: str
    input_type: str
    container_name: str
    labels: list[str] = []
    model_data_path: str = ""
    batch_size: int = -1


class ModelRegistrar(Protocol):
    """Completes Clipper's ``add_model``: deploys the artifact ``deploy_model`` staged."""

    async def add_model(self, request: AddModel) -> None: ...


class _ClientError(Exception):
    """A request Clipper's frontend would answer 400 before doing anything."""


def _parse(model: type[_B], body: bytes) -> _B:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise _ClientError(f"Error parsing JSON: {problems}") from None


# ---- the translation ---------------------------------------------------------------------------

_Admin = Callable[[bytes], Awaitable[Any]]


class ClipperRest:
    """Answers Clipper's REST calls with requests to the service; runs on the manager's loop."""

    def __init__(self, service: ServiceClient, registrar: ModelRegistrar) -> None:
        self.service = service
        self.registrar = registrar
        self._input_types: dict[str, str] = {}
        self._admin: dict[str, _Admin] = {
            "/admin/add_app": self._add_app,
            "/admin/delete_app": self._delete_app,
            "/admin/add_model_links": self._add_links,
            "/admin/delete_model_links": self._delete_links,
            "/admin/get_linked_models": self._linked_models,
            "/admin/get_all_applications": self._all_apps,
            "/admin/get_application": self._app,
            "/admin/add_model": self._add_model,
            "/admin/get_all_models": self._all_models,
            "/admin/get_model": self._model,
            "/admin/set_model_version": self._set_version,
            "/admin/delete_versioned_model": self._delete_version,
            "/admin/get_all_containers": self._all_containers,
            "/admin/get_container": self._container,
        }

    async def respond(self, method: str, path: str, body: bytes) -> HttpReply:
        if method == "GET" and path == "/admin/ping":
            return HttpReply.text("pong")
        if method == "GET" and path in ("/metrics", "/admin/metrics"):
            return await self._admin_call(self._metrics, body)
        if method == "POST" and path in self._admin:
            return await self._admin_call(self._admin[path], body)
        if method == "POST" and (match := _PREDICT.match(path)):
            return await self._predict(match["app"], body)
        return HttpReply.text(f"no {method} {path} here", 404)

    async def _admin_call(self, handler: _Admin, body: bytes) -> HttpReply:
        try:
            result = await handler(body)
        except _ClientError as error:
            return HttpReply.text(str(error), 400)
        except BusError as error:
            return HttpReply.text(f"{error.message} [{error.code}]", 400)
        return HttpReply.text(result) if isinstance(result, str) else HttpReply.json(result)

    # -- applications ---------------------------------------------------------------------------

    async def _add_app(self, body: bytes) -> str:
        app = _parse(_AddApp, body)
        self._input_types.pop(app.name, None)
        await self.service.register_application(
            app.name, app.input_type, app.default_output, app.latency_slo_micros
        )
        return f"Successfully added application with name '{app.name}'"

    async def _delete_app(self, body: bytes) -> str:
        name = _parse(_AppName, body).name
        self._input_types.pop(name, None)
        await self.service.delete_application(name)
        return f"Successfully deleted application with name '{name}'"

    async def _add_links(self, body: bytes) -> str:
        links = _parse(_Links, body)
        if len(links.model_names) != 1:
            raise _ClientError(
                "Applications must be linked with at most one model. "
                f"Attempted to add links to {len(links.model_names)} models."
            )
        await self.service.link_model_to_app(links.app_name, links.model_names[0])
        return (
            f"Successfully linked model with name '{links.model_names[0]}' "
            f"to application '{links.app_name}'"
        )

    async def _delete_links(self, body: bytes) -> str:
        links = _parse(_Links, body)
        for model in links.model_names:
            await self.service.unlink_model_from_app(links.app_name, model)
        return "Success!"

    async def _linked_models(self, body: bytes) -> list[str]:
        return await self.service.get_linked_models(_parse(_LinkedModels, body).app_name)

    async def _all_apps(self, body: bytes) -> list[Any]:
        return await self.service.get_all_apps(verbose=_parse(_Verbose, body).verbose)

    async def _app(self, body: bytes) -> dict[str, Any]:
        try:
            return await self.service.get_app_info(_parse(_AppName, body).name)
        except NotFound:
            return {}

    # -- models -------------------------------------------------------------------------------

    async def _add_model(self, body: bytes) -> str:
        request = _parse(AddModel, body)
        if request.batch_size <= 0 and request.batch_size != -1:
            raise _ClientError("The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1")
        await self.registrar.add_model(request)
        return (
            f"Successfully added model with name '{request.model_name}' "
            f"and input type '{request.input_type}'"
        )

    async def _all_models(self, body: bytes) -> list[Any]:
        return await self.service.get_all_models(verbose=_parse(_Verbose, body).verbose)

    async def _model(self, body: bytes) -> dict[str, Any]:
        ref = _parse(_ModelRef, body)
        try:
            return await self.service.get_model_info(ref.model_name, ref.model_version)
        except NotFound:
            return {}

    async def _set_version(self, body: bytes) -> str:
        ref = _parse(_ModelRef, body)
        await self.service.set_model_version(ref.model_name, ref.model_version)
        return (
            f"Successfully set model with name '{ref.model_name}' to version '{ref.model_version}'"
        )

    async def _delete_version(self, body: bytes) -> str:
        ref = _parse(_ModelRef, body)
        await self.service.get_model_info(ref.model_name, ref.model_version)  # NotFound → 400
        await self.service.stop_versioned_models({ref.model_name: [ref.model_version]})
        return (
            f"Successfully deleted model with name '{ref.model_name}' "
            f"and version '{ref.model_version}'"
        )

    # -- replicas ("containers" in Clipper) ------------------------------------------------

    async def _replicas(self) -> list[dict[str, Any]]:
        found = []
        for model in await self.service.get_all_models(verbose=True):
            if model.get("is_stopped"):
                continue
            name, version = model["model_name"], model["model_version"]
            try:
                replicas = await self.service.get_replicas(name, version)
            except NotFound:
                continue
            found += [
                {
                    "model_id": f"{name}:{version}",
                    "model_name": name,
                    "model_version": version,
                    "model_replica_id": replica["index"],
                    "input_type": model["input_type"],
                    "state": replica["state"],
                }
                for replica in replicas
            ]
        return found

    async def _all_containers(self, body: bytes) -> list[Any]:
        verbose = _parse(_Verbose, body).verbose
        replicas = await self._replicas()
        if verbose:
            return replicas
        return [f"{r['model_id']}:{r['model_replica_id']}" for r in replicas]

    async def _container(self, body: bytes) -> dict[str, Any]:
        ref = _parse(_ContainerRef, body)
        for replica in await self._replicas():
            if (replica["model_name"], replica["model_version"], replica["model_replica_id"]) == (
                ref.model_name,
                ref.model_version,
                ref.replica_id,
            ):
                return replica
        return {}

    async def _metrics(self, body: bytes) -> dict[str, Any]:
        return await self.service.status()

    # -- predictions --------------------------------------------------------------------------

    async def _predict(self, app: str, body: bytes) -> HttpReply:
        try:
            inputs, is_batch = self._inputs(body)
            if any(isinstance(value, str) for value in inputs) and (
                await self._input_type(app) == "bytes"
            ):
                inputs = [_unbase64(value) for value in inputs]
            if is_batch:
                result = await self.service.predict(app=app, inputs=inputs)
            else:
                result = await self.service.predict(app=app, input=inputs[0])
        except _ClientError as error:
            return _prediction_error(400, "Json error", str(error))
        except BusError as error:
            return _prediction_error(_status_of(error), "Query processing error", error.message)
        if is_batch:
            return HttpReply.json({"batch_predictions": result["batch_predictions"]})
        return HttpReply.json({key: result[key] for key in _PREDICTION_KEYS if key in result})

    @staticmethod
    def _inputs(body: bytes) -> tuple[list[Any], bool]:
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise _ClientError(f"Error parsing JSON: {exc}") from None
        if isinstance(request, dict) and "input" in request:
            return [request["input"]], False
        if isinstance(request, dict) and isinstance(request.get("input_batch"), list):
            return list(request["input_batch"]), True
        raise _ClientError('Error parsing JSON: expected {"input": ...} or {"input_batch": [...]}')

    async def _input_type(self, app: str) -> str:
        if app not in self._input_types:
            info = await self.service.get_app_info(app)
            self._input_types[app] = str(info["input_type"])
        return self._input_types[app]


_PREDICTION_KEYS = ("query_id", "output", "default", "default_explanation")


def _unbase64(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _ClientError("Error parsing JSON: a bytes input is a base64 string") from None


def _status_of(error: BusError) -> int:
    if isinstance(error, VerificationError):
        return 403
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, InvalidRequest):
        return 400
    if isinstance(error, Overloaded):
        return 503
    if isinstance(error, RequestTimeout):
        return 504
    return 500


def _prediction_error(status: int, error: str, cause: str) -> HttpReply:
    return HttpReply.json({"error": error, "cause": cause}, status)
