"""What the planner is asked (``Query``) and what it answers (``Plan``): plain frozen values.

A plan splits the asked grid into runs of points, each exactly one of:

- a ``Segment``: one call to one model for ``[start_ns, end_ns)``; ``choices[0]`` is the model
  chosen, ``choices[1:]`` the next-best models able to serve the whole segment, in rank order — the
  wiring tries them in turn when a model fails or times out (fallback), and turns the segment into a
  gap only when all fail;
- a ``Composition``: the place's children each planned over the run (``parts``, one ``Plan`` per
  child, in child order), summed point by point — only for additive types;
- a ``Gap``: no usable model, with the reason.

``Plan.calls()`` lists every segment to call, those inside compositions included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from chooser.index import ModelRef
from chooser.metadata import AGGREGATION, Aggregation
from chooser.places import Place, PlacesError, parse_context
from chooser.timegrid import (
    MAX_POINTS,
    Grid,
    TimeGridError,
    build_grid,
    parse_instant,
    parse_step,
)

__all__ = [
    "Choice",
    "Composition",
    "Gap",
    "Plan",
    "Query",
    "QueryError",
    "Segment",
    "VerdictRequest",
    "Verdicts",
]

_TYPE = re.compile(r"[a-z][a-z0-9_\-]{0,63}")


class QueryError(ValueError):
    """A query that cannot be answered as asked; ``field`` is type, context, start, end or
    granularity, ``reason`` says what to fix (``GridTooLargeError`` is the ``__cause__`` when the
    grid is too large)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Query:
    """Type, place and grid asked; ``aggregation`` is the type's (``AGGREGATION``, else mean)."""

    model_type: str
    place: Place
    grid: Grid
    aggregation: Aggregation

    @classmethod
    def parse(
        cls,
        model_type: str,
        context: Mapping[str, str] | str,
        start: str,
        end: str,
        granularity: str,
        *,
        aggregation: Aggregation | None = None,
        max_points: int = MAX_POINTS,
    ) -> Query:
        """From a user's (untrusted) terms; every failure is a ``QueryError`` naming the field."""
        if not isinstance(model_type, str) or not _TYPE.fullmatch(model_type):
            raise QueryError("type", "a model type is [a-z][a-z0-9_-]{0,63}, e.g. thermal")
        try:
            place = parse_context(context)
        except PlacesError as exc:
            raise QueryError("context", exc.reason) from None
        try:
            grid = build_grid(
                parse_instant(start, field="start"),
                parse_instant(end, field="end"),
                parse_step(granularity),
                max_points=max_points,
            )
        except TimeGridError as exc:
            raise QueryError(exc.field, exc.reason) from exc
        rule = aggregation or AGGREGATION.get(model_type, "mean")
        return cls(model_type, place, grid, rule)


@dataclass(frozen=True, slots=True)
class VerdictRequest:
    """One ``can_predict(start, end, resolution)`` question for one model, answered by the wiring
    (in the model's worker, with a time limit) before planning. Instants in epoch nanoseconds."""

    ref: ModelRef
    start_ns: int
    end_ns: int
    resolution_s: int


# Verdicts: a mapping from the requests to their answers, or a function answering them. A request
# with no verdict (missing, timed out, raised, not a bool) counts as "cannot predict".
Verdicts = Mapping[VerdictRequest, bool] | Callable[[VerdictRequest], bool]


@dataclass(frozen=True, slots=True)
class Choice:
    """A model able to serve a segment, at its own resolution, resampled by its aggregation."""

    ref: ModelRef
    resolution_s: int
    aggregation: Aggregation


@dataclass(frozen=True, slots=True)
class Segment:
    """One model call for ``[start_ns, end_ns)`` at ``place``; ``choices[0]`` first."""

    place: Place
    start_ns: int
    end_ns: int
    choices: tuple[Choice, ...]

    @property
    def model(self) -> ModelRef:
        return self.choices[0].ref

    @property
    def fallbacks(self) -> tuple[Choice, ...]:
        return self.choices[1:]


@dataclass(frozen=True, slots=True)
class Gap:
    """``[start_ns, end_ns)`` with no value, and why."""

    start_ns: int
    end_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class Composition:
    """``[start_ns, end_ns)`` of ``place`` answered as the sum of its children's plans."""

    place: Place
    start_ns: int
    end_ns: int
    parts: tuple[Plan, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer ``place`` on ``grid``: segments, compositions and gaps, each sorted, together
    covering the grid exactly once."""

    model_type: str
    place: Place
    grid: Grid
    aggregation: Aggregation
    segments: tuple[Segment, ...]
    compositions: tuple[Composition, ...]
    gaps: tuple[Gap, ...]

    @property
    def is_composed(self) -> bool:
        return bool(self.compositions)

    def calls(self) -> tuple[Segment, ...]:
        """Every model call the answer needs, compositions' included."""
        return tuple(self._walk())

    def _walk(self) -> Iterator[Segment]:
        yield from self.segments
        for composition in self.compositions:
            for part in composition.parts:
                yield from part._walk()
