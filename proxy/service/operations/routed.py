"""Predictions for an application that has a release contract or a selection policy.

``predict.PredictOps`` hands an application's request here when ``has_policy`` says it has
one; an application without is answered as before. With a **contract** the
linked model's release picked by ``Contract.route`` answers (sticky per requester or per one
of the request's ``fields``); shadow releases get a copy through the bounded background queue.
With a **selection** the policy picks one candidate model per ``user_id`` — or, with
``combine``, every candidate answers and the answers are combined, each model's part shown in
``parts``. Either way the application's latency SLO and default output apply as without a
policy, the answer is counted for feedback (``Pending``) and logged as the contract says.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from bus.errors import BusError, NotFound
from chooser.policies import (
    LogRecord,
    Part,
    choose,
    combine,
    log_key,
    should_log,
)
from proxy.registry.records import Application
from proxy.routing import Answered, Background, Pending, PolicyKeeper, Predictor, ShadowJob
from proxy.routing.keeper import Selection

__all__ = ["Answer", "RoutedPredict"]

logger = logging.getLogger(__name__)

Answer = Callable[[str, str, list[Any], bool, str | None], dict[str, Any]]


def _query_ids(result: dict[str, Any]) -> list[int]:
    if "batch_predictions" in result:
        return [item["query_id"] for item in result["batch_predictions"]]
    return [result["query_id"]]


class RoutedPredict:
    def __init__(
        self,
        keeper: PolicyKeeper,
        background: Background,
        pending: Pending,
        predictor: Predictor,
        version_for: Callable[[str], Any],
        *,
        rng: random.Random,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.keeper = keeper
        self.background = background
        self.pending = pending
        self.predictor = predictor
        self.version_for = version_for
        self.rng = rng
        self.clock = clock

    async def predict(
        self,
        app: Application,
        requester: str,
        inputs: list[Any],
        is_batch: bool,
        user_id: str | None,
        fields: dict[str, Any] | None,
        answer: Answer,
    ) -> dict[str, Any]:
        """The answer, for an application that ``has_policy``."""
        contract = await self.keeper.contract(app.name)
        if contract is not None and app.linked_model is not None:
            return await self._contract(app, requester, inputs, is_batch, user_id, fields, answer)
        selection = await self.keeper.selection(app.name)
        if selection is None:
            raise NotFound(f"application {app.name!r} has no routing policy", app=app.name)
        if selection.spec.combine is not None:
            return await self._combined(app, selection, inputs, is_batch, answer)
        return await self._selected(app, selection, requester, inputs, is_batch, user_id, answer)

    async def has_policy(self, app: Application) -> bool:
        """A contract (the application needs a linked model for it) or a selection policy."""
        if app.linked_model is not None and await self.keeper.contract(app.name) is not None:
            return True
        return await self.keeper.selection(app.name) is not None

    async def _ask(
        self, app: Application, model: str, version: str, inputs: list[Any]
    ) -> tuple[list[Any], str | None]:
        """Outputs, or the default output for each input and why (as Clipper answers)."""
        try:
            return await self.predictor(model, version, inputs, app.latency_slo_micros / 1e6), None
        except BusError as error:
            logger.info("app %s served its default output: %s", app.name, error.message)
            return [app.default_output] * len(inputs), f"{error.code}: {error.message}"

    async def _contract(
        self,
        app: Application,
        requester: str,
        inputs: list[Any],
        is_batch: bool,
        user_id: str | None,
        fields: dict[str, Any] | None,
        answer: Answer,
    ) -> dict[str, Any]:
        model = app.linked_model
        assert model is not None
        contract = await self.keeper.contract(app.name)
        assert contract is not None
        known = {**(fields or {}), "user_id": user_id or "", "app": app.name}
        route = contract.route(self.clock(), self.rng, requester=requester, fields=known)
        if route.version is None:
            unrouted = f"not_found: {route.reason}"
            return answer(model, "", [app.default_output] * len(inputs), is_batch, unrouted)
        began = time.perf_counter()
        outputs, why = await self._ask(app, model, route.version, inputs)
        latency_ms = (time.perf_counter() - began) * 1e3
        if why is None:
            for _ in inputs:
                contract.record_answer(route.version)
            self.keeper.touch(app.name, "contract")
        result = answer(model, route.version, outputs, is_batch, why)
        ids = _query_ids(result)
        for query_id, output in zip(ids, outputs, strict=True):
            self.pending.add(
                query_id,
                Answered(app.name, requester, "contract", route.version, output, user_id or ""),
            )
        spec = contract.spec.log
        is_logged = should_log(spec, self.rng)
        records = [
            LogRecord(
                log_key(spec, known),
                str(query_id),
                app.name,
                route.version,
                "served",
                self.clock(),
                user_id or "",
                value,
                output,
                why,
                latency_ms,
            )
            for query_id, value, output in zip(ids, inputs, outputs, strict=True)
        ]
        if is_logged:
            for record in records:
                self.background.submit_log(app.name, record)
        if why is None:
            for version in route.shadows:
                job = ShadowJob(app.name, model, version, inputs, outputs, records, is_logged)
                self.background.submit_shadow(job)
        return result

    async def _selected(
        self,
        app: Application,
        selection: Selection,
        requester: str,
        inputs: list[Any],
        is_batch: bool,
        user_id: str | None,
        answer: Answer,
    ) -> dict[str, Any]:
        candidates = list(selection.spec.candidates)
        arms = selection.users.arms(user_id or "", candidates)
        decision = choose(selection.spec.policy, arms, candidates, self.rng)
        self.keeper.touch(app.name, "selection")
        version = await self.version_for(decision.model)
        outputs, why = await self._ask(app, decision.model, version, inputs)
        result = answer(decision.model, version, outputs, is_batch, why)
        if why is None:
            for query_id, output in zip(_query_ids(result), outputs, strict=True):
                self.pending.add(
                    query_id,
                    Answered(
                        app.name,
                        requester,
                        "selection",
                        decision.model,
                        output,
                        user_id or "",
                        decision.probability,
                        len(candidates),
                    ),
                )
        return result

    async def _combined(
        self,
        app: Application,
        selection: Selection,
        inputs: list[Any],
        is_batch: bool,
        answer: Answer,
    ) -> dict[str, Any]:
        spec = selection.spec
        began = time.monotonic_ns()
        slo_s = app.latency_slo_micros / 1e6
        wait_s = min(slo_s, spec.deadline_ms / 1e3) if spec.deadline_ms else slo_s
        got: dict[str, tuple[list[Any] | None, str | None, int]] = {}

        async def ask(model: str, group: TaskGroup) -> None:
            try:
                version = await self.version_for(model)
                outputs = await self.predictor(model, version, inputs, slo_s)
                got[model] = (outputs, None, time.monotonic_ns() - began)
                if spec.combine == "first":  # the first answer is the answer: stop the others
                    group.cancel_scope.cancel()
            except BusError as error:
                got[model] = (None, f"{error.code}: {error.message}", time.monotonic_ns() - began)

        with anyio.move_on_after(wait_s):
            async with anyio.create_task_group() as group:
                for model in spec.candidates:
                    group.start_soon(ask, model, group)
        values: list[Any] = []
        parts_per_input: list[list[dict[str, Any]]] = []
        why: str | None = None
        for position in range(len(inputs)):
            parts = []
            for model in spec.candidates:
                outputs, error, arrived = got.get(model, (None, "no answer in time", 0))
                if outputs is None:
                    parts.append(Part(model, error=error))
                else:
                    parts.append(Part(model, outputs[position], arrived_ns=arrived))
            try:
                merged = combine(spec.combine or "mean", parts, spec.weights)
                values.append(merged.value)
                parts_per_input.append(merged.parts)
            except ValueError as error:
                values.append(app.default_output)
                parts_per_input.append([])
                why = f"internal: {error}"
        result = answer(app.name, spec.combine or "", values, is_batch, why)
        if is_batch:
            for item, shown in zip(result["batch_predictions"], parts_per_input, strict=True):
                item["parts"] = shown
        else:
            result["parts"] = parts_per_input[0]
        return result
