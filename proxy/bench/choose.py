"""``modelbus bench choose``: the chooser's decision time with 10, 1,000 and 10,000 models.

For each size it builds a candidate index (``chooser.bench.bench_index``: three thermal models of
zone A with adjacent and overlapping ranges and a gap, the rest spread over other zones and
types), then times, median of many runs, the decision (``plan``: lookup, coverage, ranking,
segments) of a one-day, 30-minute query on zone A, and the merge (``stitch``) of the three
models' answers. Target: a decision under 1 ms at 10,000 models. Then, unless turned off, the
end-to-end comparison of :mod:`proxy.bench.choose_e2e`: a one-day query stitched by a real service
from three models next to the same three model calls made directly over the bus.
"""

from __future__ import annotations

import time

from chooser import (
    Answered,
    SegmentOutcome,
    SegmentRequest,
    bench_plan,
    plan,
    stitch,
    validate_output,
)
from chooser.bench import bench_index, bench_query
from chooser.plan import Segment

__all__ = ["SIZES", "run_choose_bench"]

SIZES = (10, 1_000, 10_000)
TARGET_MS = 1.0


def _index_build_ms(models: int) -> float:
    began = time.perf_counter()
    bench_index(models)
    return (time.perf_counter() - began) * 1e3


def _stitch_ms(repeats: int) -> float:
    """Median time to merge the three zone-A models' answers onto the 48-point grid."""
    result = plan(bench_query(), bench_index(10))
    outcomes: dict[Segment, SegmentOutcome] = {}
    for segment in result.calls():
        choice = segment.choices[0]
        request = SegmentRequest.for_choice(result.model_type, segment, choice)
        series = [20.0 + k % 7 for k in range(request.points)]
        outcomes[segment] = Answered(choice, validate_output(request, series))
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        stitch(result, outcomes)
        samples.append(time.perf_counter() - began)
    return sorted(samples)[len(samples) // 2] * 1e3


def run_choose_bench(
    sizes: tuple[int, ...] = SIZES, repeats: int = 300, *, end_to_end_rounds: int = 0
) -> list[str]:
    """The result table, one line per row (the CLI prints them)."""
    lines = [
        "chooser decision, one-day 30-minute thermal query on zone A (3 models cover it)",
        f"{'models':>8}  {'index build ms':>14}  {'plan p50 ms':>11}  target < {TARGET_MS} ms",
    ]
    for models in sizes:
        build_ms = _index_build_ms(models)
        plan_ms = bench_plan(models, repeats) * 1e3
        verdict = "ok" if plan_ms < TARGET_MS else "MISSED"
        lines.append(f"{models:>8}  {build_ms:>14.1f}  {plan_ms:>11.3f}  {verdict}")
    lines.append(f"stitch of the three answers (48 points): p50 {_stitch_ms(repeats):.3f} ms")
    if end_to_end_rounds:
        from proxy.bench.choose_e2e import run_end_to_end  # starts a service: only when asked

        lines += run_end_to_end(end_to_end_rounds)
    return lines
