"""The bus operations of routing and selection policies (``bus/PROTOCOL.md`` §17.9).

On ``slot/admin``: ``route.set``/``route.show``/``route.delete`` (an application's release
contract), ``route.feed_metric``, ``route.expire``, ``route.restore``, ``route.log`` (the
prediction log), ``policy.set``/``policy.show``/``policy.delete`` (its selection policy). On
``slot/predict``: ``feedback`` for an answered query — a reward or the true value; it teaches a
selection policy, or feeds the serving release of a contract the metric ``feedback_error`` (the
difference from the truth) or ``feedback_reward``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from bus.errors import Conflict, InvalidRequest, NotFound
from chooser.policies import Contract, PolicyError, difference, learn, reward_from_truth
from proxy.registry.records import AppName, ModelName
from proxy.routing import Background, Pending, PolicyKeeper
from proxy.routing.keeper import invalid
from proxy.service.slots import Body, Op

__all__ = ["RouteOps"]

MAX_LOG_READ = 1000


class AppBody(Body):
    app: AppName


class ContractBody(AppBody):
    contract: dict[str, Any]


class SelectionBody(AppBody):
    selection: dict[str, Any]


class ReleaseBody(AppBody):
    version: ModelName


class MetricBody(ReleaseBody):
    metric: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    value: float = Field(allow_inf_nan=False)


class LogBody(AppBody):
    key: str | None = Field(default=None, max_length=4096)
    limit: int = Field(default=100, ge=1, le=MAX_LOG_READ)


class PolicyShowBody(AppBody):
    user_id: str = Field(default="", max_length=128)


class FeedbackBody(AppBody):
    query_id: int = Field(ge=0)
    reward: float | None = Field(default=None, ge=0, le=1)
    truth: Any = None

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackBody:
        if (self.reward is None) == (self.truth is None):
            raise ValueError("give exactly one of 'reward' (0 to 1) or 'truth'")
        return self


class RouteOps:
    def __init__(
        self,
        keeper: PolicyKeeper,
        background: Background,
        pending: Pending,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.keeper = keeper
        self.background = background
        self.pending = pending
        self.clock = clock

    def admin_table(self) -> dict[str, Op[Any]]:
        return {
            "route.set": Op(ContractBody, self.route_set),
            "route.show": Op(AppBody, self.route_show),
            "route.delete": Op(AppBody, self.route_delete),
            "route.feed_metric": Op(MetricBody, self.feed_metric),
            "route.expire": Op(ReleaseBody, self.expire),
            "route.restore": Op(ReleaseBody, self.restore),
            "route.log": Op(LogBody, self.log),
            "policy.set": Op(SelectionBody, self.policy_set),
            "policy.show": Op(PolicyShowBody, self.policy_show),
            "policy.delete": Op(AppBody, self.policy_delete),
        }

    def predict_table(self) -> dict[str, Op[Any]]:
        return {"feedback": Op(FeedbackBody, self.feedback)}

    def _shown(self, app: str, contract: Contract) -> dict[str, Any]:
        return {
            "app": app,
            "contract": contract.spec.to_data(),
            "releases": contract.show(self.clock()),
            "counters": self.background.counters(),
        }

    async def route_set(self, sender: str, body: ContractBody) -> dict[str, Any]:
        contract = await self.keeper.set_contract(body.app, body.contract, self._check_releases)
        return self._shown(body.app, contract)

    async def _check_releases(self, app: str, versions: list[str]) -> None:
        """Every release is a registered version of the application's linked model."""
        registry = self.keeper.registry
        linked = (await registry.get_application(app)).linked_model
        if linked is None:
            raise Conflict(f"application {app!r} has no linked model; link one first", app=app)
        for version in versions:
            await registry.get_model(linked, version)

    async def route_show(self, sender: str, body: AppBody) -> dict[str, Any]:
        contract = await self.keeper.contract(body.app)
        if contract is None:
            raise NotFound(f"application {body.app!r} has no release contract", app=body.app)
        if contract.refresh(self.clock()):
            self.keeper.touch(body.app, "contract")
        return self._shown(body.app, contract)

    async def route_delete(self, sender: str, body: AppBody) -> dict[str, Any]:
        await self.keeper.delete(body.app, "contract")
        return {"app": body.app, "deleted": "contract"}

    async def feed_metric(self, sender: str, body: MetricBody) -> dict[str, Any]:
        contract = await self.keeper.change_contract(
            body.app, lambda c: c.feed_metric(body.version, body.metric, body.value)
        )
        return self._shown(body.app, contract)

    async def expire(self, sender: str, body: ReleaseBody) -> dict[str, Any]:
        now = self.clock()
        contract = await self.keeper.change_contract(
            body.app, lambda c: c.expire(body.version, now)
        )
        return self._shown(body.app, contract)

    async def restore(self, sender: str, body: ReleaseBody) -> dict[str, Any]:
        contract = await self.keeper.change_contract(body.app, lambda c: c.restore(body.version))
        return self._shown(body.app, contract)

    async def log(self, sender: str, body: LogBody) -> list[dict[str, Any]]:
        return await self.keeper.registry.read_log(body.app, body.key, body.limit)

    async def policy_set(self, sender: str, body: SelectionBody) -> dict[str, Any]:
        await self.keeper.set_selection(body.app, body.selection)
        return await self.policy_show(sender, PolicyShowBody(app=body.app))

    async def policy_show(self, sender: str, body: PolicyShowBody) -> dict[str, Any]:
        selection = await self.keeper.selection(body.app)
        if selection is None:
            raise NotFound(f"application {body.app!r} has no selection policy", app=body.app)
        return {
            "app": body.app,
            "selection": selection.spec.to_data(),
            "user_id": body.user_id,
            "state": selection.users.peek(body.user_id),
            "users": len(selection.users),
            "evicted": selection.users.evicted,
        }

    async def policy_delete(self, sender: str, body: AppBody) -> dict[str, Any]:
        await self.keeper.delete(body.app, "selection")
        return {"app": body.app, "deleted": "selection"}

    async def feedback(self, sender: str, body: FeedbackBody) -> dict[str, Any]:
        answered = self.pending.take(body.query_id, body.app, sender)
        if answered.kind == "selection":
            return await self._learn(body, answered.choice, answered)
        if body.reward is not None:
            metric, value = "feedback_reward", body.reward
        else:
            metric, value = "feedback_error", difference(answered.output, body.truth)
        if not math.isfinite(value):
            raise InvalidRequest("the feedback gives no finite value")
        await self.keeper.change_contract(
            body.app, lambda c: c.feed_metric(answered.choice, metric, value)
        )
        return {"query_id": body.query_id, "version": answered.choice, metric: value}

    async def _learn(self, body: FeedbackBody, model: str, answered: Any) -> dict[str, Any]:
        selection = await self.keeper.selection(body.app)
        if selection is None:
            raise NotFound(f"application {body.app!r} has no selection policy", app=body.app)
        try:
            reward = (
                body.reward
                if body.reward is not None
                else reward_from_truth(answered.output, body.truth, selection.spec.reward_scale)
            )
            candidates = list(selection.spec.candidates)
            arms = selection.users.arms(answered.user_id, candidates)
            learn(
                selection.spec.policy,
                arms,
                model,
                reward,
                answered.probability,
                answered.candidates,
            )
        except PolicyError as error:
            raise invalid(error, "feedback") from None
        self.keeper.touch(body.app, "selection")
        return {"query_id": body.query_id, "model": model, "reward": reward}
