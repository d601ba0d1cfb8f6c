"""The ``slot/predict`` operation: predictions for an application or a model version.

For an application the linked model's serving version answers within the application's latency
SLO; past it (or if the model fails) the application's default output is returned, marked
``default: true`` with the reason, as Clipper does. Asking a model directly (optionally pinned
to a version) has no SLO and returns typed errors instead.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from pydantic import Field, model_validator

from bus.errors import BusError, InvalidRequest, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.records import AppName, InputType, ModelName
from proxy.registry.registry import Registry
from proxy.service.operations.routed import RoutedPredict
from proxy.service.quotas import SenderQuota
from proxy.service.slots import Body, Op
from proxy.service.status import ServiceStatus
from proxy.service.versions import VersionRouter

__all__ = ["PredictOps", "check_inputs"]

logger = logging.getLogger(__name__)

MAX_BATCH = 10_000


class PredictBody(Body):
    app: AppName | None = None
    model: ModelName | None = None
    version: ModelName | None = None
    input: Any = None
    inputs: list[Any] | None = Field(default=None, max_length=MAX_BATCH)
    user_id: str | None = Field(default=None, max_length=128)
    fields: dict[str, str | int | float] | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _one_target(self) -> PredictBody:
        if (self.app is None) == (self.model is None):
            raise ValueError("name exactly one of 'app' or 'model'")
        if self.app is not None and self.version is not None:
            raise ValueError("'version' pins a model; ask the model, not the application")
        if self.inputs is None and self.input is None:
            raise ValueError("give 'input' (one) or 'inputs' (a batch)")
        return self


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(input_type: InputType, value: Any) -> bool:
    if input_type == "integers":
        return isinstance(value, list) and all(_is_integer(x) for x in value)
    if input_type in ("floats", "doubles"):
        return isinstance(value, list) and all(_is_number(x) for x in value)
    if input_type == "bytes":
        return isinstance(value, bytes)
    return isinstance(value, str)


def check_inputs(input_type: InputType, inputs: list[Any]) -> None:
    """Clipper's input types: integers/floats/doubles are lists of numbers, bytes, strings."""
    for index, value in enumerate(inputs):
        if not _fits(input_type, value):
            raise InvalidRequest(
                f"input {index} is not of the model's input type {input_type!r}",
                input_type=input_type,
            )


class PredictOps:
    def __init__(
        self,
        registry: Registry,
        backend: EmbeddedBackend,
        router: VersionRouter,
        status: ServiceStatus,
        *,
        timeout_s: float,
        max_inputs_per_sender: int = 2500,
        routed: RoutedPredict | None = None,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.router = router
        self.timeout_s = timeout_s
        self._query_ids = itertools.count()
        self.status = status
        self.inputs = SenderQuota(max_inputs_per_sender, "inputs of this sender")
        self.routed = routed

    def table(self) -> dict[str, Op[Any]]:
        return {"predict": Op(PredictBody, self.predict)}

    async def predict(self, sender: str, request: PredictBody) -> dict[str, Any]:
        inputs = request.inputs if request.inputs is not None else [request.input]
        with self.inputs.hold(sender, len(inputs)):  # no sender takes a version's whole queue
            return await self._predict(sender, request, inputs)

    async def _predict(
        self, sender: str, request: PredictBody, inputs: list[Any]
    ) -> dict[str, Any]:
        if request.app is not None:
            return await self._for_app(
                request.app, inputs, request.inputs is not None, sender, request
            )
        assert request.model is not None
        version = await self.router.version_for(request.model, request.version)
        check_inputs(await self.router.input_type(request.model, version), inputs)
        outputs = await self.backend.predict(
            request.model, version, inputs, timeout_s=self.timeout_s
        )
        return self._answer(request.model, version, outputs, request.inputs is not None, None)

    async def _for_app(
        self, name: str, inputs: list[Any], is_batch: bool, sender: str, request: PredictBody
    ) -> dict[str, Any]:
        app = await self.router.application(name)
        if self.routed is not None and await self.routed.has_policy(app):
            check_inputs(app.input_type, inputs)  # a release contract or a selection decides
            return await self.routed.predict(
                app, sender, inputs, is_batch, request.user_id, request.fields, self._answer
            )
        if app.linked_model is None:
            raise NotFound(f"application {name!r} has no linked model; link one first", app=name)
        check_inputs(app.input_type, inputs)
        version = await self.router.version_for(app.linked_model, None)
        try:
            outputs = await self.backend.predict(
                app.linked_model, version, inputs, timeout_s=app.latency_slo_micros / 1e6
            )
        except BusError as error:
            self.status.served_default += 1
            logger.info("app %s served its default output: %s", name, error.message)
            return self._answer(
                app.linked_model,
                version,
                [app.default_output] * len(inputs),
                is_batch,
                f"{error.code}: {error.message}",
            )
        return self._answer(app.linked_model, version, outputs, is_batch, None)

    def _answer(
        self, model: str, version: str, outputs: list[Any], is_batch: bool, why: str | None
    ) -> dict[str, Any]:
        def one(output: Any) -> dict[str, Any]:
            item = {"query_id": next(self._query_ids), "output": output, "default": why is not None}
            if why is not None:
                item["default_explanation"] = why
            return item

        base = {"model": model, "version": version}
        if is_batch:
            return base | {"batch_predictions": [one(output) for output in outputs]}
        return base | one(outputs[0])
