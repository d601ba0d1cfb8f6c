"""The routing policies' part of the service, built in one place for ``startup``.

``build_policies`` makes the keeper of contracts and selection policies, the background runner
(shadow copies, the prediction log, state flushes), the pending-feedback table, the routed
predict path (``operations.routed``) and the bus operations (``operations.routes``). The
background runner must run in the service's task group (``Policies.background.run``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from bus import BusClient
from bus.po import PO_MSGPACK, PayloadObject
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.registry import Registry
from proxy.routing import Background, Pending, PolicyKeeper
from proxy.service.operations.routed import RoutedPredict
from proxy.service.operations.routes import RouteOps
from proxy.service.versions import VersionRouter

__all__ = ["Policies", "build_policies"]


@dataclass(frozen=True, slots=True)
class Policies:
    routed: RoutedPredict
    ops: RouteOps
    background: Background


def build_policies(
    registry: Registry,
    backend: EmbeddedBackend,
    router: VersionRouter,
    client: BusClient,
    service_uri: str,
    *,
    shadow_timeout_s: float,
    rng: random.Random | None = None,
) -> Policies:
    async def predictor(model: str, version: str, inputs: list[Any], timeout_s: float) -> Any:
        return await backend.predict(model, version, inputs, timeout_s=timeout_s)

    async def publish(uri: str, record: dict[str, Any]) -> None:
        await client.publish(uri, PayloadObject.msgpack(record, PO_MSGPACK), persist=True)

    async def version_for(model: str) -> str:
        return await router.version_for(model, None)

    keeper = PolicyKeeper(registry, time.time_ns)
    background = Background(
        keeper, predictor, publish, service_uri=service_uri, shadow_timeout_s=shadow_timeout_s
    )
    pending = Pending()
    routed = RoutedPredict(
        keeper, background, pending, predictor, version_for, rng=rng or random.Random()
    )
    return Policies(routed, RouteOps(keeper, background, pending), background)
