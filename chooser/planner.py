"""Planning: cover the asked grid with the best usable model per point, then group into segments.

A candidate serves grid point ``i`` when all of these hold:

1. its coverage covers the point's whole interval (declared ranges and rules), or, for a model
   with ``has_can_predict``, a ``True`` verdict was given for a request containing the interval;
2. its resolution is no coarser than the asked step and divides the interval's length (so its own
   points tile the interval: a 15-minute model serves 30-minute, 1-hour and 1-day steps; a 1-hour
   model cannot serve a 30-minute step, nor a 20-minute model a 30-minute one);
3. its place is the asked place, or an ancestor of it when the query's aggregation is ``mean``.

Among the candidates serving a point, the best is the first by this key (the tie-break is total):
place distance (the asked place 0, its parent 1…), current version before others, newest deployment
(``created_ns``) first, then ``(name, version)`` ascending. Consecutive points with the same best
model form one segment; its fallbacks are the other candidates serving every point of it, in the
same order. Points no candidate serves are gaps; for an additive (``sum``) query, a gap run where
every child of the place has a plan with no gap becomes a composition of the children's plans
(recursively, down the tree).

``usable`` is the requester's access filter: a model it rejects is never chosen and never shapes a
gap's reason. Two-phase use with ``can_predict`` models: ``verdict_requests`` lists the questions,
the wiring answers them, ``plan`` takes the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import TypeVar

from chooser.coverage import covered_points
from chooser.index import Candidate, CandidateIndex, ModelRef
from chooser.places import Place, PlaceTree
from chooser.plan import Choice, Composition, Gap, Plan, Query, Segment, VerdictRequest, Verdicts
from chooser.timegrid import NS, Grid

__all__ = ["MAX_VERDICT_SEGMENTS", "plan", "verdict_requests"]

MAX_VERDICT_SEGMENTS = 32
MAX_COMPOSED_PLACES = 1024
T = TypeVar("T")
Usable = Callable[[Candidate], bool]


@dataclass(frozen=True, slots=True, eq=False)
class _Ranked:
    candidate: Candidate
    distance: int

    @property
    def key(self) -> tuple[int, bool, int, str, str]:
        c = self.candidate
        return (self.distance, not c.is_current, -c.created_ns, c.ref.name, c.ref.version)

    @property
    def choice(self) -> Choice:
        meta = self.candidate.metadata
        return Choice(self.candidate.ref, meta.resolution_s, meta.aggregation_rule)


class _Planner:
    def __init__(
        self,
        query: Query,
        index: CandidateIndex,
        places: PlaceTree | None,
        verdicts: Verdicts | None,
        usable: Usable | None,
    ) -> None:
        self.query, self.index, self.usable = query, index, usable
        self.places = places or PlaceTree()
        self.verdicts = verdicts
        self.grid = query.grid
        self.ranked = cache(self._ranked)
        self._able_by_ref: dict[ModelRef, tuple[bool, ...]] = {}
        self._serves_by_ref: dict[ModelRef, tuple[bool, ...]] = {}
        self._changes: tuple[int, ...] | None = None

    def _ranked(self, place: Place) -> tuple[_Ranked, ...]:
        """Candidates for ``place`` (and its ancestors for mean queries), best first."""
        places = [place]
        if self.query.aggregation == "mean":
            places += self.places.ancestors(place)
        found = [
            _Ranked(candidate, distance)
            for distance, at in enumerate(places)
            for candidate in self.index.find(self.query.model_type, at, self.usable)
        ]
        return tuple(sorted(found, key=lambda ranked: ranked.key))

    def able(self, candidate: Candidate) -> tuple[bool, ...]:
        """Per point: does the candidate's coverage (or its verdicts) include the interval?"""
        found = self._able_by_ref.get(candidate.ref)
        if found is None:
            found = self._able_by_ref[candidate.ref] = self._able(candidate)
        return found

    def serves(self, candidate: Candidate) -> tuple[bool, ...]:
        """Per point: able, and at a resolution that tiles the point's interval."""
        found = self._serves_by_ref.get(candidate.ref)
        if found is None:
            found = self._serves_by_ref[candidate.ref] = self._serves(candidate)
        return found

    def _able(self, candidate: Candidate) -> tuple[bool, ...]:
        meta = candidate.metadata
        if meta.coverage is not None:
            return tuple(covered_points(meta.coverage, self.grid))
        able = [False] * len(self.grid)
        for request, (lo, hi) in _requests_for(candidate, self.grid, self._change_points()):
            if _verdict(self.verdicts, request):
                able[lo:hi] = [True] * (hi - lo)
        return tuple(able)

    def _serves(self, candidate: Candidate) -> tuple[bool, ...]:
        resolution_ns = candidate.metadata.resolution_s * NS
        edges = self.grid.edges_ns
        return tuple(
            able and (edges[i + 1] - edges[i]) % resolution_ns == 0
            for i, able in enumerate(self.able(candidate))
        )

    def _change_points(self) -> tuple[int, ...]:
        """Grid indices where some declared coverage starts or stops: where a ``can_predict``
        model's verdicts are asked separately (so it can fill the others' gaps)."""
        if self._changes is None:
            found: set[int] = set()
            for place in self._places_consulted():
                for ranked in self.ranked(place):
                    if ranked.candidate.metadata.coverage is not None:
                        able = self.able(ranked.candidate)
                        found.update(i for i in range(1, len(able)) if able[i] != able[i - 1])
            self._changes = tuple(sorted(found))
        return self._changes

    def _places_consulted(self) -> list[Place]:
        """The asked place and, for additive queries, every place below it."""
        found: list[Place] = []
        pending = [self.query.place]
        while pending and len(found) < MAX_COMPOSED_PLACES:
            place = pending.pop()
            found.append(place)
            if self.query.aggregation == "sum":
                pending.extend(self.places.children(place))
        return found

    def requests(self) -> tuple[VerdictRequest, ...]:
        found: dict[VerdictRequest, None] = {}
        for place in self._places_consulted():
            for ranked in self.ranked(place):
                if ranked.candidate.metadata.has_can_predict:
                    for request, _ in _requests_for(
                        ranked.candidate, self.grid, self._change_points()
                    ):
                        found[request] = None
        return tuple(found)

    def plan(self, place: Place, lo: int, hi: int) -> Plan:
        ranked = self.ranked(place)
        best = [self._best(ranked, i) for i in range(lo, hi)]
        segments: list[Segment] = []
        gaps: list[Gap] = []
        compositions: list[Composition] = []
        for run_lo, run_hi, chosen in _runs(best, lo):
            if chosen is not None:
                segments.append(self._segment(place, ranked, chosen, run_lo, run_hi))
                continue
            for sub_lo, sub_hi, parts in self._compose(place, run_lo, run_hi):
                if parts:
                    start, end = self._span(sub_lo, sub_hi)
                    compositions.append(Composition(place, start, end, parts))
                else:
                    gaps += self._gaps(ranked, sub_lo, sub_hi)
        sub_grid = Grid(self.grid.edges_ns[lo : hi + 1], self.grid.step)
        return Plan(
            self.query.model_type,
            place,
            sub_grid,
            self.query.aggregation,
            tuple(segments),
            tuple(compositions),
            tuple(_merge_gaps(gaps)),
        )

    def _best(self, ranked: tuple[_Ranked, ...], i: int) -> _Ranked | None:
        return next((r for r in ranked if self.serves(r.candidate)[i]), None)

    def _segment(
        self, place: Place, ranked: tuple[_Ranked, ...], chosen: _Ranked, lo: int, hi: int
    ) -> Segment:
        others = [
            r.choice for r in ranked if r is not chosen and all(self.serves(r.candidate)[lo:hi])
        ]
        return Segment(place, *self._span(lo, hi), (chosen.choice, *others))

    def _compose(self, place: Place, lo: int, hi: int) -> list[tuple[int, int, tuple[Plan, ...]]]:
        """Sub-runs of ``[lo, hi)``, each with the children's plans, or () where none compose."""
        children = self.places.children(place)
        if self.query.aggregation != "sum" or not children:
            return [(lo, hi, ())]
        trial = [self.plan(child, lo, hi) for child in children]
        covered = [all(self._has_value(p, i) for p in trial) for i in range(lo, hi)]
        found: list[tuple[int, int, tuple[Plan, ...]]] = []
        for run_lo, run_hi, ok in _runs(covered, lo):
            parts = tuple(self.plan(child, run_lo, run_hi) for child in children) if ok else ()
            found.append((run_lo, run_hi, parts))
        return found

    def _has_value(self, plan: Plan, i: int) -> bool:
        instant = self.grid.edges_ns[i]
        return not any(gap.start_ns <= instant < gap.end_ns for gap in plan.gaps)

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        return self.grid.edges_ns[lo], self.grid.edges_ns[hi]

    def _gaps(self, ranked: tuple[_Ranked, ...], lo: int, hi: int) -> list[Gap]:
        reasons = [self._reason(ranked, i) for i in range(lo, hi)]
        return [Gap(*self._span(a, b), reason) for a, b, reason in _runs(reasons, lo)]

    def _reason(self, ranked: tuple[_Ranked, ...], i: int) -> str:
        if not ranked:
            return f"no usable {self.query.model_type} model for this place"
        if not any(self.able(r.candidate)[i] for r in ranked):
            return "no usable model can predict this time"
        return f"no usable model at a resolution dividing the {self.grid.step} step"


def _runs(values: list[T], offset: int) -> list[tuple[int, int, T]]:
    """Maximal runs of equal (``is``/``==``) values: ``(lo, hi, value)`` with absolute indices."""
    found: list[tuple[int, int, T]] = []
    for i, value in enumerate(values, start=offset):
        if found and found[-1][2] == value:
            found[-1] = (found[-1][0], i + 1, value)
        else:
            found.append((i, i + 1, value))
    return found


def _merge_gaps(gaps: list[Gap]) -> list[Gap]:
    merged: list[Gap] = []
    for gap in sorted(gaps, key=lambda g: g.start_ns):
        last = merged[-1] if merged else None
        if last is not None and last.end_ns == gap.start_ns and last.reason == gap.reason:
            merged[-1] = Gap(last.start_ns, gap.end_ns, gap.reason)
        else:
            merged.append(gap)
    return merged


def _verdict(verdicts: Verdicts | None, request: VerdictRequest) -> bool:
    if verdicts is None:
        return False
    answer = verdicts.get(request) if isinstance(verdicts, Mapping) else verdicts(request)
    return answer is True


def _requests_for(
    candidate: Candidate, grid: Grid, change_points: tuple[int, ...]
) -> list[tuple[VerdictRequest, tuple[int, int]]]:
    """The whole grid, then (when few enough) each run between two change points."""
    bounds = [(0, len(grid))]
    if 0 < len(change_points) <= MAX_VERDICT_SEGMENTS:
        cuts = [0, *change_points, len(grid)]
        bounds += list(pairwise(cuts))
    edges, step_s = grid.edges_ns, grid.step.nominal_s
    return [
        (VerdictRequest(candidate.ref, edges[lo], edges[hi], step_s), (lo, hi)) for lo, hi in bounds
    ]


def verdict_requests(
    query: Query,
    index: CandidateIndex,
    places: PlaceTree | None = None,
    usable: Usable | None = None,
) -> tuple[VerdictRequest, ...]:
    """The ``can_predict`` questions ``plan`` will look up for this query: for each usable
    ``has_can_predict`` candidate, the whole range, then each run between the points where a
    declared coverage starts or stops (at most ``MAX_VERDICT_SEGMENTS`` runs)."""
    return _Planner(query, index, places, None, usable).requests()


def plan(
    query: Query,
    index: CandidateIndex,
    places: PlaceTree | None = None,
    verdicts: Verdicts | None = None,
    usable: Usable | None = None,
) -> Plan:
    """Cover ``query``'s grid with the best model per point; see the module docstring."""
    return _Planner(query, index, places, verdicts, usable).plan(query.place, 0, len(query.grid))
