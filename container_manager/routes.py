"""The client side of routing and selection policies (``bus/PROTOCOL.md`` §17.9).

``RouteCalls`` is a part of :class:`container_manager.service.ServiceClient`:

    await service.set_route("thermal", {"releases": [{"version": "1"},
                                                      {"version": "2", "share_pct": 10}]})
    print(await service.show_route("thermal"))
    answer = await service.predict_routed(app="thermal", input=[1.0], user_id="u7")
    await service.feedback("thermal", answer["query_id"], truth=21.5)
"""

from __future__ import annotations

from typing import Any

__all__ = ["RouteCalls"]


class RouteCalls:
    async def call(
        self, slot: str, op: str, *, reply_timeout_s: float | None = None, **body: Any
    ) -> Any:
        raise NotImplementedError  # ServiceClient's

    async def set_route(self, app: str, contract: dict[str, Any]) -> dict[str, Any]:
        """Set (or replace) the application's release contract; releases known keep state."""
        return dict(await self.call("admin", "route.set", app=app, contract=contract))

    async def show_route(self, app: str) -> dict[str, Any]:
        return dict(await self.call("admin", "route.show", app=app))

    async def delete_route(self, app: str) -> dict[str, Any]:
        return dict(await self.call("admin", "route.delete", app=app))

    async def feed_metric(
        self, app: str, version: str, metric: str, value: float
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "admin", "route.feed_metric", app=app, version=version, metric=metric, value=value
            )
        )

    async def expire_release(self, app: str, version: str) -> dict[str, Any]:
        return dict(await self.call("admin", "route.expire", app=app, version=version))

    async def restore_release(self, app: str, version: str) -> dict[str, Any]:
        return dict(await self.call("admin", "route.restore", app=app, version=version))

    async def prediction_log(
        self, app: str, key: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"app": app, "limit": limit}
        if key is not None:
            body["key"] = key
        return list(await self.call("admin", "route.log", **body))

    async def set_selection(self, app: str, selection: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.call("admin", "policy.set", app=app, selection=selection))

    async def show_policy(self, app: str, user_id: str = "") -> dict[str, Any]:
        return dict(await self.call("admin", "policy.show", app=app, user_id=user_id))

    async def delete_selection(self, app: str) -> dict[str, Any]:
        return dict(await self.call("admin", "policy.delete", app=app))

    async def predict_routed(
        self,
        *,
        app: str,
        input: Any = None,
        inputs: list[Any] | None = None,
        user_id: str | None = None,
        fields: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """A prediction for an application, with the user and request fields its policy uses."""
        body: dict[str, Any] = {"app": app, "user_id": user_id, "fields": fields}
        body["inputs" if inputs is not None else "input"] = inputs if inputs is not None else input
        present = {k: v for k, v in body.items() if v is not None}
        return dict(await self.call("predict", "predict", reply_timeout_s=timeout_s, **present))

    async def feedback(
        self, app: str, query_id: int, *, reward: float | None = None, truth: Any = None
    ) -> dict[str, Any]:
        """Feedback for an answered query: a ``reward`` (0 to 1) or the ``truth``."""
        body: dict[str, Any] = {"app": app, "query_id": query_id}
        if reward is not None:
            body["reward"] = reward
        else:
            body["truth"] = truth
        return dict(await self.call("predict", "feedback", **body))
