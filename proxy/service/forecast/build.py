"""The forecast operations as the service runs them: settings → catalog, caller, access, places.

``brick_path`` (``modelbus serve --brick FILE.ttl``) is read once at start; a file that cannot be
read or is no Brick model stops the start with an ``invalid_request`` naming the file.
"""

from __future__ import annotations

import anyio

from bus import Verifier
from bus.errors import InvalidRequest
from chooser import PlacesError, PlaceTree
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.registry import Registry
from proxy.service.forecast.access import Access
from proxy.service.forecast.calls import Caller
from proxy.service.forecast.catalog import Catalog
from proxy.service.forecast.ops import ForecastOps
from proxy.service.settings import ProxySettings

__all__ = ["forecast_ops", "load_places"]


async def load_places(path: str | None) -> PlaceTree:
    if path is None:
        return PlaceTree()
    try:
        text = await anyio.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read the Brick model {path}: {exc}", path=path) from None
    try:
        return await anyio.to_thread.run_sync(PlaceTree.from_turtle, text)
    except PlacesError as exc:
        raise InvalidRequest(
            f"{path} is not a usable Brick model: {exc.reason}", path=path
        ) from None


async def forecast_ops(
    settings: ProxySettings, registry: Registry, backend: EmbeddedBackend, verifier: Verifier
) -> ForecastOps:
    places = await load_places(None if settings.brick_path is None else str(settings.brick_path))
    caller = Caller(
        backend,
        call_timeout_s=settings.forecast_call_timeout_s,
        can_predict_timeout_s=settings.can_predict_timeout_s,
        deadline_s=settings.forecast_deadline_s,
    )
    return ForecastOps(Catalog(registry), caller, Access(verifier), places)
