"""Properties of plan + stitch against a brute-force oracle, over random models and queries.

Models cover one random interval (quarter-hour bounds, UTC) at a random resolution; each answers
its own constant. The oracle says a model serves a point when the interval contains the point's
interval and the resolution divides the point's length.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chooser import (
    Answer,
    Answered,
    ModelMetadata,
    Query,
    SegmentOutcome,
    SegmentRequest,
    plan,
    stitch,
    validate_output,
)
from chooser.plan import Segment
from tests.chooser.helpers import day_query, index_of

QUARTER_NS = 900 * 10**9
BOUNDED = settings(
    max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

Model = tuple[int, int, int]  # (first quarter, last quarter exclusive, resolution_s)

days = st.sampled_from([("2018-01-30", "2018-01-31"), ("2018-03-11", "2018-03-12"),
                        ("2018-11-04", "2018-11-05")])  # fmt: skip
steps = st.sampled_from(["5min", "15min", "30min", "1h", "1d"])  # each divides 23 h and 25 h
models = st.lists(
    st.tuples(
        st.integers(0, 100), st.integers(1, 40), st.sampled_from([300, 900, 1800, 3600, 7200])
    ),
    max_size=5,
).map(lambda found: [(start, start + length, res) for start, length, res in found])


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 10**9, UTC).strftime("%Y-%m-%d %H:%M")


def metadata(query: Query, model: Model) -> ModelMetadata:
    base = query.grid.start_ns
    start, end, resolution = model
    rng = {"start": iso(base + start * QUARTER_NS), "end": iso(base + end * QUARTER_NS)}
    return ModelMetadata.parse({
        "type": "thermal", "context": {"zone": "A"}, "resolution_s": resolution,
        "coverage": {"timezone": "UTC", "ranges": [rng]},
    })  # fmt: skip


def serves(query: Query, model: Model, point: int) -> bool:
    a, b = query.grid.interval(point)
    start, end, resolution = model
    base = query.grid.start_ns
    inside = base + start * QUARTER_NS <= a and b <= base + end * QUARTER_NS
    return inside and (b - a) % (resolution * 10**9) == 0


def answer(query: Query, found: list[Model]) -> Answer:
    index = index_of(*[(f"m{n}", metadata(query, model)) for n, model in enumerate(found)])
    result = plan(query, index)
    outcomes: dict[Segment, SegmentOutcome] = {}
    for segment in result.calls():
        choice = segment.choices[0]
        request = SegmentRequest.for_choice("thermal", segment, choice)
        constant = float(choice.ref.name[1:])
        outcomes[segment] = Answered(choice, validate_output(request, [constant] * request.points))
    return stitch(result, outcomes)


def gap_points(query: Query, result: Answer) -> set[int]:
    return {
        i
        for i, start in enumerate(query.grid.points_ns)
        if any(gap.start_ns <= start < gap.end_ns for gap in result.gaps)
    }


@BOUNDED
@given(days, steps, models)
def test_the_answer_is_the_asked_grid_served_by_able_models(
    day: tuple[str, str], step: str, found: list[Model]
) -> None:
    query = day_query(*day, step)
    result = answer(query, found)
    assert result.grid == query.grid and len(result.values) == len(query.grid)
    for point, (value, provenance) in enumerate(zip(result.values, result.provenance, strict=True)):
        if value is None:
            assert provenance == ()
            continue
        (ref,) = provenance
        number = int(ref.name[1:])
        assert serves(query, found[number], point)
        assert value == float(number)


@BOUNDED
@given(days, steps, models)
def test_gaps_are_exactly_where_no_model_serves(
    day: tuple[str, str], step: str, found: list[Model]
) -> None:
    query = day_query(*day, step)
    result = answer(query, found)
    unserved = {
        point
        for point in range(len(query.grid))
        if not any(serves(query, model, point) for model in found)
    }
    assert gap_points(query, result) == unserved
    assert {i for i, value in enumerate(result.values) if value is None} == unserved


@BOUNDED
@given(days, steps, models, models)
def test_adding_models_never_creates_a_gap(
    day: tuple[str, str], step: str, found: list[Model], more: list[Model]
) -> None:
    query = day_query(*day, step)
    before = gap_points(query, answer(query, found))
    assert gap_points(query, answer(query, found + more)) <= before
