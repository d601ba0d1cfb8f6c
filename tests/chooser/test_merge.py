"""Resampling to the asked grid, stitching, failures as gaps, composition sums."""

from __future__ import annotations

from chooser import (
    Answer,
    Answered,
    Failed,
    ModelRef,
    PlaceTree,
    Plan,
    SegmentOutcome,
    SegmentRequest,
    plan,
    stitch,
    validate_output,
)
from chooser.plan import Segment
from tests.chooser.helpers import SODA_TTL, day_query, index_of, ranged

DAY = "2018-01-30"
NS = 10**9


def answer_all(result: Plan, value_of: dict[str, float] | None = None) -> Answer:
    """Call every segment's first choice; a model answers its constant, or k for point k."""
    outcomes: dict[Segment, SegmentOutcome] = {}
    for segment in result.calls():
        choice = segment.choices[0]
        request = SegmentRequest.for_choice(result.model_type, segment, choice)
        constant = (value_of or {}).get(choice.ref.name)
        raw = [float(k) if constant is None else constant for k in range(request.points)]
        outcomes[segment] = Answered(choice, validate_output(request, raw))
    return stitch(result, outcomes)


def test_a_finer_model_is_averaged_onto_a_coarser_grid() -> None:
    result = plan(day_query(granularity="1h"), index_of(("q", ranged(0, 24, resolution_s=900))))
    answer = answer_all(result)
    assert answer.values[:3] == (1.5, 5.5, 9.5)  # mean of 0..3, 4..7, 8..11
    assert len(answer.values) == 24 and answer.gaps == ()
    assert set(answer.provenance) == {(ModelRef("q", "1"),)}


def test_an_additive_model_is_summed() -> None:
    index = index_of(("q", ranged(0, 24, model_type="consumption", resolution_s=900)))
    answer = answer_all(plan(day_query(granularity="1h", model_type="consumption"), index))
    assert answer.values[:2] == (6.0, 22.0)


def test_a_model_at_the_asked_step_passes_through() -> None:
    answer = answer_all(plan(day_query(), index_of(("h", ranged(0, 24, resolution_s=1800)))))
    assert answer.values == tuple(float(k) for k in range(48))


def test_stitched_answer_has_provenance_and_gaps_exactly_where_plan_says() -> None:
    index = index_of(("a", ranged(0, 10)), ("b", ranged(8, 18)), ("c", ranged(20, 24)))
    result = plan(day_query(), index)
    answer = answer_all(result, {"a": 1.0, "b": 2.0, "c": 3.0})
    assert answer.grid == result.grid
    expected = [1.0] * 16 + [2.0] * 20 + [None] * 4 + [3.0] * 8
    assert list(answer.values) == expected
    assert [p[0].name if p else None for p in answer.provenance] == [
        {1.0: "a", 2.0: "b", 3.0: "c", None: None}[v] for v in expected
    ]
    assert answer.gaps == result.gaps and not answer.is_composed


def test_a_failed_segment_becomes_a_gap_with_its_reason_and_the_rest_arrives() -> None:
    index = index_of(("a", ranged(0, 12)), ("b", ranged(12, 24)))
    result = plan(day_query(), index)
    first, second = result.segments
    request = SegmentRequest.for_choice("thermal", first, first.choices[0])
    outcomes: dict[Segment, SegmentOutcome] = {
        first: Answered(first.choices[0], validate_output(request, [7.0] * request.points)),
        second: Failed("model b:1 timed out"),
    }
    answer = stitch(result, outcomes)
    assert answer.values == (7.0,) * 24 + (None,) * 24
    assert [(g.start_ns, g.end_ns, g.reason) for g in answer.gaps] == [
        (second.start_ns, second.end_ns, "model b:1 timed out")
    ]
    assert stitch(result, {}).gaps[0].reason == "the model was not called"


def test_a_fallback_at_another_resolution_is_resampled_with_its_own_step() -> None:
    index = index_of(("coarse", ranged(0, 24, resolution_s=1800)), ("fine", ranged(0, 24)))
    result = plan(day_query(), index)
    (segment,) = result.segments
    fallback = segment.fallbacks[0]
    assert fallback.ref.name == "coarse"
    request = SegmentRequest.for_choice("thermal", segment, fallback)
    series = validate_output(request, [2.0] * request.points)
    answer = stitch(result, {segment: Answered(fallback, series)})
    assert answer.values == (2.0,) * 48
    assert answer.provenance[0] == (fallback.ref,)


def test_missing_timestamped_points_make_gaps_never_fills() -> None:
    result = plan(day_query(granularity="1h"), index_of(("q", ranged(0, 24))))
    (segment,) = result.segments
    request = SegmentRequest.for_choice("thermal", segment, segment.choices[0])
    points = [[request.start_ns + k * 900 * NS, 1.0] for k in range(96) if k != 5]
    answer = stitch(
        result, {segment: Answered(segment.choices[0], validate_output(request, points))}
    )
    assert answer.values[1] is None and answer.values[0] == 1.0 and answer.values[2] == 1.0
    (gap,) = answer.gaps
    assert (gap.start_ns, gap.end_ns) == result.grid.interval(1)
    assert gap.reason == "model q:1 returned no value"


def test_composed_points_are_sums_with_provenance_per_child() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(
        ("a", ranged(0, 24, model_type="consumption", context="zone=A")),
        ("b", ranged(0, 24, model_type="consumption", context="zone=B")),
    )
    result = plan(day_query(model_type="consumption", context="floor=1"), index, tree)
    answer = answer_all(result, {"a": 1.0, "b": 2.5})
    assert answer.values == (7.0,) * 48 and answer.is_composed  # (1 + 2.5) * 2 quarters
    assert answer.provenance[0] == (ModelRef("a", "1"), ModelRef("b", "1"))


def test_a_failed_child_makes_a_gap_naming_the_child() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(
        ("a", ranged(0, 24, model_type="consumption", context="zone=A")),
        ("b", ranged(0, 24, model_type="consumption", context="zone=B")),
    )
    result = plan(day_query(model_type="consumption", context="floor=1"), index, tree)
    a_segment, b_segment = result.calls()
    request = SegmentRequest.for_choice("consumption", a_segment, a_segment.choices[0])
    outcomes: dict[Segment, SegmentOutcome] = {
        a_segment: Answered(a_segment.choices[0], validate_output(request, [1.0] * 96)),
        b_segment: Failed("model b:1 failed"),
    }
    answer = stitch(result, outcomes)
    assert answer.values == (None,) * 48
    assert [gap.reason for gap in answer.gaps] == ["zone=B: model b:1 failed"]


def test_cached_spans_and_the_wire_form() -> None:
    index = index_of(("a", ranged(0, 12)), ("b", ranged(12, 24, resolution_s=1800)))
    result = plan(day_query(), index)
    first, second = result.segments
    outcomes: dict[Segment, SegmentOutcome] = {}
    for segment, cached in ((first, True), (second, False)):
        request = SegmentRequest.for_choice("thermal", segment, segment.choices[0])
        series = validate_output(request, [1.0] * request.points)
        outcomes[segment] = Answered(segment.choices[0], series, is_cached=cached)
    answer = stitch(result, outcomes)
    assert answer.cached == ((first.start_ns, first.end_ns),)
    wire = answer.to_wire()
    assert wire["step"] == "30min" and wire["composed"] is False and wire["gaps"] == []
    assert wire["cached"] == [[first.start_ns, first.end_ns]]
    points = wire["points"]
    assert isinstance(points, list) and len(points) == 48
    assert points[0] == [result.grid.start_ns, 1.0, [["a", "1"]]]
    assert points[-1][2] == [["b", "1"]]
