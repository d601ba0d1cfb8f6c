"""The decision-time measurement behind ``modelbus bench choose`` (the program is in proxy/).

``bench_plan(models)`` registers ``models`` models spread over many zones and four types, three
of them thermal models of zone A with adjacent and overlapping ranges and a gap, then times
``plan`` for a one-day, 30-minute thermal query on zone A (index lookup, coverage, ranking,
segments). The clock is the only thing it touches.
"""

from __future__ import annotations

import time

from chooser.index import Candidate, CandidateIndex, ModelRef
from chooser.metadata import KNOWN_TYPES, ModelMetadata
from chooser.places import Place, PlaceTree
from chooser.plan import Query
from chooser.planner import plan

__all__ = ["bench_index", "bench_plan", "bench_query"]

_DAY = "2018-01-30"


def _at(hour: int) -> str:
    return f"{_DAY} {hour:02}:00" if hour < 24 else "2018-01-31 00:00"


def _metadata(model_type: str, zone: str, start_h: int, end_h: int) -> ModelMetadata:
    return ModelMetadata.parse(
        {
            "type": model_type,
            "context": {"zone": zone},
            "resolution_s": 900,
            "coverage": {
                "timezone": "America/Los_Angeles",
                "ranges": [{"start": _at(start_h), "end": _at(end_h)}],
            },
        }
    )


def bench_index(models: int) -> CandidateIndex:
    """``models`` candidates: three on thermal zone A (0-10h, 8-18h, 20-24h), the rest elsewhere."""
    index = CandidateIndex()
    for number, (start_h, end_h) in enumerate([(0, 10), (8, 18), (20, 24)][:models]):
        meta = _metadata("thermal", "A", start_h, end_h)
        index.add(Candidate(ModelRef(f"zoneA-{number}", "1"), meta, created_ns=number))
    shared = {t: _metadata(t, "Z", 0, 24) for t in KNOWN_TYPES}  # one metadata per type
    for number in range(3, models):
        model_type = KNOWN_TYPES[number % len(KNOWN_TYPES)]
        meta = shared[model_type].model_copy(update={"context": {"zone": f"z{number % 997}"}})
        index.add(Candidate(ModelRef(f"m{number}", "1"), meta, created_ns=number))
    return index


def bench_query() -> Query:
    return Query.parse("thermal", "zone=A", f"{_DAY} 00:00 PST", "2018-01-31 00:00 PST", "30min")


def bench_plan(models: int, repeats: int = 200) -> float:
    """Median seconds per ``plan`` call with ``models`` registered models."""
    index, query = bench_index(models), bench_query()
    places = PlaceTree([(Place("floor", "1"), Place("zone", "A"))])
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        plan(query, index, places)
        samples.append(time.perf_counter() - began)
    return sorted(samples)[len(samples) // 2]
