"""The client side of forecasts by meaning, the XBOS prediction API (``bus/PROTOCOL.md`` §17.8).

``ForecastCalls`` is a part of :class:`container_manager.service.ServiceClient`:

    answer = await service.forecast("thermal", "zone=A", "2018-01-30 00:00 PST",
                                    "2018-01-31 00:00 PST", "30min")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bus import Grant
from bus.grants import encode_chain

__all__ = ["ForecastCalls"]


class ForecastCalls:
    async def call(
        self, slot: str, op: str, *, reply_timeout_s: float | None = None, **body: Any
    ) -> Any:
        raise NotImplementedError  # ServiceClient's

    async def forecast(
        self,
        type: str,
        context: Mapping[str, str] | str,
        start: str,
        end: str,
        granularity: str,
        *,
        aggregation: str | None = None,
        proofs: Sequence[Sequence[Grant]] = (),
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``type`` at ``context`` (``{"zone": "A"}`` or ``"zone=A"``) from ``start`` to ``end``
        (with a zone: ``"2018-01-30 00:00 PST"``) by ``granularity`` (``"30min"``), answered by
        the models the service chooses; ``proofs``: grant chains proving this key may consume
        the models' training streams. The reply: ``points`` ``[ts_ns, value, [[name, version],
        ...]]``, ``gaps`` ``[start_ns, end_ns, reason]``, ``problems``, ``composed``, ``cached``."""
        body: dict[str, Any] = {
            "type": type,
            "context": dict(context) if isinstance(context, Mapping) else context,
            "start": start,
            "end": end,
            "granularity": granularity,
            "proofs": [encode_chain(list(chain)) for chain in proofs],
        }
        if aggregation is not None:
            body["aggregation"] = aggregation
        return dict(await self.call("predict", "forecast", reply_timeout_s=timeout_s, **body))

    async def forecast_models(
        self,
        type: str,
        context: Mapping[str, str] | str,
        *,
        start: str | None = None,
        end: str | None = None,
        proofs: Sequence[Sequence[Grant]] = (),
    ) -> list[dict[str, Any]]:
        """The models this key may use for ``type`` at ``context`` (and the places around it),
        with their declared coverage and, given ``start`` and ``end``, what they cover there."""
        body: dict[str, Any] = {
            "type": type,
            "context": dict(context) if isinstance(context, Mapping) else context,
            "proofs": [encode_chain(list(chain)) for chain in proofs],
        }
        if start is not None or end is not None:
            body |= {"start": start, "end": end}
        return list(await self.call("predict", "forecast.models", **body))
