"""The ``forecast`` and ``forecast.models`` operations on ``slot/predict`` (PROTOCOL §17.8).

``forecast``: parse the query (``chooser.Query``: a bad field is ``invalid_request`` naming it),
build the requester's access filter from the proofs it presents (:mod:`.access`), take the
candidate index (:mod:`.catalog`), ask the ``can_predict`` questions the planner needs in the
models' workers, plan, call the chosen models concurrently with fallback (:mod:`.calls`),
stitch, and reply ``Answer.to_wire()`` plus the query as understood and the problems met.

``forecast.models``: the usable models of a type for a place — the place's own, its ancestors'
(types averaged: they may answer for it) or its children's (additive types: they compose it) —
with their declared coverage and, given ``start`` and ``end``, the intervals it covers there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
from pydantic import Field

from bus.errors import InvalidRequest
from chooser import (
    AGGREGATION,
    Candidate,
    Place,
    PlacesError,
    PlaceTree,
    Query,
    QueryError,
    covered_intervals,
    parse_context,
    parse_instant,
    plan,
    stitch,
    verdict_requests,
)
from chooser.timegrid import to_ns
from proxy.service.forecast.access import MAX_PROOF_BYTES, MAX_PROOFS, Access
from proxy.service.forecast.calls import Caller, Problem
from proxy.service.forecast.catalog import Catalog
from proxy.service.slots import Body, Op

__all__ = ["ForecastBody", "ForecastOps", "ModelsBody"]

MAX_WINDOW_DAYS = 731
MAX_PROBLEMS = 100
OFFLOAD_POINTS = 2_000
T = TypeVar("T")
_TYPE = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
Text64 = Annotated[str, Field(min_length=1, max_length=64)]
Context = dict[Text64, Text64] | Text64
Proofs = Annotated[
    list[Annotated[bytes, Field(max_length=MAX_PROOF_BYTES)]], Field(max_length=MAX_PROOFS)
]


class ForecastBody(Body):
    type: Text64
    context: Context
    start: Text64
    end: Text64
    granularity: Annotated[str, Field(min_length=1, max_length=16)]
    aggregation: Literal["mean", "sum"] | None = None
    proofs: Proofs = []


class ModelsBody(Body):
    type: Text64
    context: Context
    start: Text64 | None = None
    end: Text64 | None = None
    proofs: Proofs = []


class ForecastOps:
    def __init__(
        self, catalog: Catalog, caller: Caller, access: Access, places: PlaceTree | None = None
    ) -> None:
        self.catalog = catalog
        self.caller = caller
        self.access = access
        self.places = places or PlaceTree()

    def table(self) -> dict[str, Op[Any]]:
        return {
            "forecast": Op(ForecastBody, self.forecast),
            "forecast.models": Op(ModelsBody, self.models),
        }

    async def forecast(self, sender: str, body: ForecastBody) -> dict[str, Any]:
        try:
            query = Query.parse(
                body.type,
                body.context,
                body.start,
                body.end,
                body.granularity,
                aggregation=body.aggregation,
            )
        except QueryError as exc:
            raise InvalidRequest(f"bad 'forecast' request: {exc}", field=exc.field) from None
        usable = self.access.usable_for(sender, body.proofs)
        index = await self.catalog.index()
        problems: list[Problem] = []
        # Large grids are planned and stitched off the event loop (the index is never mutated,
        # only replaced, so a thread may read it).
        offload = len(query.grid) > OFFLOAD_POINTS
        asked = await _cpu(offload, verdict_requests, query, index, self.places, usable)
        verdicts = await self.caller.verdicts_for(asked, problems) if asked else {}
        chosen = await _cpu(offload, plan, query, index, self.places, verdicts, usable)
        outcomes = await self.caller.call_segments(
            query.model_type, chosen.calls(), self.catalog.metadata, problems
        )
        answer = await _cpu(offload, stitch, chosen, outcomes)
        problems.sort(key=lambda p: (p["start_ns"], p["model"], p["version"]))
        return answer.to_wire() | {
            "type": query.model_type,
            "context": query.place.as_context(),
            "aggregation": query.aggregation,
            "problems": problems[:MAX_PROBLEMS],
        }

    async def models(self, sender: str, body: ModelsBody) -> list[dict[str, Any]]:
        model_type = body.type.strip().lower()
        if not _TYPE.fullmatch(model_type):
            raise InvalidRequest(
                "bad 'forecast.models' request: type: a model type is [a-z][a-z0-9_-]{0,63}",
                field="type",
            )
        try:
            place = parse_context(body.context)
        except PlacesError as exc:
            raise InvalidRequest(
                f"bad 'forecast.models' request: context: {exc.reason}", field="context"
            ) from None
        window = _window(body.start, body.end)
        usable = self.access.usable_for(sender, body.proofs)
        index = await self.catalog.index()
        places: list[tuple[str, Place]] = [("place", place)]
        if AGGREGATION.get(model_type, "mean") == "mean":
            places += [("ancestor", at) for at in self.places.ancestors(place)]
        else:
            places += [("child", at) for at in self.places.children(place)]
        return [
            _view(candidate, relation, window)
            for relation, at in places
            for candidate in index.find(model_type, at, usable)
        ]


async def _cpu(offload: bool, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, on a worker thread when ``offload``."""
    if offload:
        return await anyio.to_thread.run_sync(function, *args)
    return function(*args)


def _window(start: str | None, end: str | None) -> tuple[int, int] | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise InvalidRequest("give both 'start' and 'end', or neither", field="start")
    try:
        window = to_ns(parse_instant(start, field="start")), to_ns(parse_instant(end, field="end"))
    except ValueError as exc:
        raise InvalidRequest(f"bad 'forecast.models' request: {exc}", field="start") from None
    if window[1] <= window[0]:
        raise InvalidRequest("'end' must be after 'start'", field="end")
    if window[1] - window[0] > MAX_WINDOW_DAYS * 86_400 * 10**9:
        raise InvalidRequest(f"the window is at most {MAX_WINDOW_DAYS} days", field="end")
    return window


def _view(candidate: Candidate, relation: str, window: tuple[int, int] | None) -> dict[str, Any]:
    meta = candidate.metadata
    view: dict[str, Any] = {
        "name": candidate.ref.name,
        "version": candidate.ref.version,
        "is_current": candidate.is_current,
        "type": meta.type,
        "context": meta.context,
        "relation": relation,
        "resolution_s": meta.resolution_s,
        "aggregation": meta.aggregation_rule,
        "coverage": meta.coverage.model_dump() if meta.coverage is not None else None,
        "has_can_predict": meta.has_can_predict,
        "training_streams": list(meta.training_streams),
        "cache_ttl_s": meta.cache_ttl_s,
    }
    if window is not None:
        view["covered"] = (
            [list(span) for span in covered_intervals(meta.coverage, *window)]
            if meta.coverage is not None
            else None
        )
    return view
