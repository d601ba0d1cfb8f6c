"""Resample each model's series to the asked grid and stitch one answer, with provenance and gaps.

The wiring calls every segment of ``plan.calls()`` (trying ``segment.choices`` in order), and
hands ``stitch`` one outcome per segment: ``Answered`` (the choice that answered and its validated
series) or ``Failed`` (why every choice failed). A segment with no outcome counts as failed.

Resampling: an asked point ``[a, b)`` is the aggregation of the model's points inside it — the
mean, or the sum for an additive model (``Choice.aggregation``). The planner guarantees the model's
points tile ``[a, b)`` exactly (its resolution divides the step). If any of them is missing the
asked point is a gap ("the model returned no value"); it is never interpolated or filled.

A composition's point is the sum of its children's points, with one provenance entry per child;
if a child has no value there, the point is a gap whose reason names the child.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from chooser.index import ModelRef
from chooser.outputs import ModelSeries
from chooser.plan import Choice, Composition, Gap, Plan, Segment
from chooser.timegrid import Grid

__all__ = ["Answer", "Answered", "Failed", "SegmentOutcome", "stitch"]


@dataclass(frozen=True, slots=True)
class Answered:
    """A segment answered by ``choice`` (the first choice, or a fallback); ``is_cached`` when
    the wiring took it from the model's result cache (``cache_ttl_s``), keyed by the
    ``SegmentRequest`` (hashable: model, type, place, span and step)."""

    choice: Choice
    series: ModelSeries
    is_cached: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """A segment no choice could answer; ``reason`` is shown to the user as the gap's reason."""

    reason: str


SegmentOutcome = Answered | Failed


@dataclass(frozen=True, slots=True)
class Answer:
    """The series on exactly the asked grid: ``values[i]`` for ``grid.points_ns[i]`` (None in a
    gap), ``provenance[i]`` the models that made it (one, or one per child when composed; empty in
    a gap), ``gaps`` sorted and merged, ``is_composed`` when any point was composed, ``cached``
    the ``(start_ns, end_ns)`` spans answered from a result cache."""

    grid: Grid
    values: tuple[float | None, ...]
    provenance: tuple[tuple[ModelRef, ...], ...]
    gaps: tuple[Gap, ...]
    is_composed: bool
    cached: tuple[tuple[int, int], ...] = ()

    def to_wire(self) -> dict[str, object]:
        """A msgpack/JSON-able form: ``points`` as ``[ts_ns, value or None, [[name, version],
        ...]]``, ``gaps`` as ``[start_ns, end_ns, reason]``, ``composed``, ``cached``, ``step``."""
        return {
            "step": str(self.grid.step),
            "points": [
                [instant, value, [[ref.name, ref.version] for ref in refs]]
                for instant, value, refs in zip(
                    self.grid.points_ns, self.values, self.provenance, strict=True
                )
            ],
            "gaps": [[gap.start_ns, gap.end_ns, gap.reason] for gap in self.gaps],
            "composed": self.is_composed,
            "cached": [list(span) for span in self.cached],
        }


def stitch(plan: Plan, outcomes: Mapping[Segment, SegmentOutcome]) -> Answer:
    """One answer on ``plan.grid`` from the segments' outcomes; see the module docstring."""
    index = {edge: i for i, edge in enumerate(plan.grid.edges_ns)}
    size = len(plan.grid)
    values: list[float | None] = [None] * size
    provenance: list[tuple[ModelRef, ...]] = [()] * size
    gaps = list(plan.gaps)
    cached: list[tuple[int, int]] = []
    for segment in plan.segments:
        lo, hi = index[segment.start_ns], index[segment.end_ns]
        outcome = outcomes.get(segment, Failed("the model was not called"))
        if isinstance(outcome, Failed):
            gaps.append(Gap(segment.start_ns, segment.end_ns, outcome.reason))
            continue
        if outcome.is_cached:
            cached.append((segment.start_ns, segment.end_ns))
        edges = plan.grid.edges_ns[lo : hi + 1]
        resampled = _resample(outcome.series, edges, outcome.choice.aggregation)
        for offset, value in enumerate(resampled):
            if value is None:
                start, end = edges[offset], edges[offset + 1]
                gaps.append(Gap(start, end, f"model {outcome.choice.ref} returned no value"))
            else:
                values[lo + offset] = value
                provenance[lo + offset] = (outcome.choice.ref,)
    for composition in plan.compositions:
        lo = index[composition.start_ns]
        gaps += _compose(composition, outcomes, values, provenance, lo, cached)
    return Answer(
        plan.grid,
        tuple(values),
        tuple(provenance),
        tuple(_merge(gaps)),
        plan.is_composed,
        tuple(sorted(cached)),
    )


def _compose(
    composition: Composition,
    outcomes: Mapping[Segment, SegmentOutcome],
    values: list[float | None],
    provenance: list[tuple[ModelRef, ...]],
    lo: int,
    cached: list[tuple[int, int]],
) -> list[Gap]:
    """Sum the children's answers into ``values[lo:]``; return the gaps, named by child."""
    answers = [stitch(part, outcomes) for part in composition.parts]
    cached += [span for answer in answers for span in answer.cached]
    gaps = [
        Gap(gap.start_ns, gap.end_ns, f"{part.place}: {gap.reason}")
        for part, answer in zip(composition.parts, answers, strict=True)
        for gap in answer.gaps
    ]
    for offset in range(len(answers[0].values)):
        parts = [answer.values[offset] for answer in answers]
        if all(value is not None for value in parts):
            values[lo + offset] = math.fsum(v for v in parts if v is not None)
            provenance[lo + offset] = tuple(
                ref for answer in answers for ref in answer.provenance[offset]
            )
    return gaps


def _resample(series: ModelSeries, edges: tuple[int, ...], rule: str) -> list[float | None]:
    found: list[float | None] = []
    for a, b in pairwise(edges):
        inside = series.values[
            (a - series.start_ns) // series.step_ns : (b - series.start_ns) // series.step_ns
        ]
        if not inside or any(value is None for value in inside):
            found.append(None)
            continue
        total = math.fsum(value for value in inside if value is not None)
        found.append(total if rule == "sum" else total / len(inside))
    return found


def _merge(gaps: list[Gap]) -> list[Gap]:
    merged: list[Gap] = []
    for gap in sorted(gaps, key=lambda g: (g.start_ns, g.end_ns)):
        last = merged[-1] if merged else None
        if last is not None and last.end_ns == gap.start_ns and last.reason == gap.reason:
            merged[-1] = Gap(last.start_ns, gap.end_ns, gap.reason)
        else:
            merged.append(gap)
    return merged
