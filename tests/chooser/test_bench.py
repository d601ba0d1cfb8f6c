"""The decision-time benchmark's building blocks (the timing itself is not asserted)."""

from __future__ import annotations

from chooser import bench_plan, plan
from chooser.bench import bench_index, bench_query


def test_the_bench_index_has_the_asked_size_and_three_zone_a_models() -> None:
    index = bench_index(1000)
    assert len(index) == 1000
    result = plan(bench_query(), index)
    assert {segment.model.name for segment in result.segments} == {"zoneA-0", "zoneA-1", "zoneA-2"}
    assert len(result.gaps) == 1


def test_bench_plan_returns_a_duration() -> None:
    assert bench_plan(10, repeats=3) > 0
