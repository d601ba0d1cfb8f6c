"""The per-segment model call: its input, and every way an output can be wrong."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chooser import ModelOutputError, ModelRef, Place, SegmentRequest, validate_output

NS = 10**9
START = 1_517_299_200 * NS  # 2018-01-30T08:00:00Z
MODEL = ModelRef("thermal-a", "3")
REQUEST = SegmentRequest(MODEL, "thermal", Place("zone", "A"), START, START + 3600 * NS, 900)


def test_the_input_is_plain_and_complete() -> None:
    assert REQUEST.to_input() == {
        "type": "thermal",
        "context": {"zone": "A"},
        "start_ns": START,
        "end_ns": START + 3600 * NS,
        "step_s": 900,
        "points": 4,
        "start": "2018-01-30T08:00:00Z",
        "end": "2018-01-30T09:00:00Z",
    }


def test_one_value_per_step() -> None:
    series = validate_output(REQUEST, [1, 2.5, -3, 4])
    assert series.values == (1.0, 2.5, -3.0, 4.0)
    assert (series.start_ns, series.step_ns, series.model) == (START, 900 * NS, MODEL)


def test_timestamped_points_in_any_order_missing_ones_are_none() -> None:
    series = validate_output(REQUEST, [(START + 2700 * NS, 4), [START, 1.0]])
    assert series.values == (1.0, None, None, 4.0)


@pytest.mark.parametrize(
    ("output", "reason", "index"),
    [
        ({"values": [1, 2, 3, 4]}, "not a list", None),
        ("1234", "not a list", None),
        (b"\x00", "not a list", None),
        (None, "not a list", None),
        ([1, 2, 3], "3 values for 4 points", None),
        ([1, 2, 3, 4, 5], "5 values for 4 points", None),
        ([], "0 values for 4 points", None),
        ([1, "2", 3, 4], "not a number", 1),
        ([1, 2, True, 4], "not a number", 2),
        ([1, 2, 3, None], "not a number", 3),
        ([math.nan, 2, 3, 4], "NaN or infinite", 0),
        ([1, math.inf, 3, 4], "NaN or infinite", 1),
        ([1, 2, 3, 10**400], "out of range", 3),
        ([[START, 1], [START + 60 * NS, 2]], "off the segment's grid", 1),
        ([[START - 900 * NS, 1]], "outside the segment", 0),
        ([[START + 3600 * NS, 1]], "outside the segment", 0),
        ([[START, 1], [START, 2]], "appears twice", 1),
        ([[START, 1, 2]], "not a [ts_ns, value] pair", 0),
        ([[START, 1], 5], "not a [ts_ns, value] pair", 1),
        ([[float(START), 1]], "not integer nanoseconds", 0),
        ([[START, "warm"]], "not a number", 0),
        ([[START + 900 * k * NS, 1] for k in range(5)], "more than 4", None),
    ],
)
def test_wrong_outputs_raise_a_typed_error_naming_the_model(
    output: object, reason: str, index: int | None
) -> None:
    with pytest.raises(ModelOutputError) as caught:
        validate_output(REQUEST, output)
    error = caught.value
    assert isinstance(error, ValueError)
    assert reason in error.reason and error.index == index and error.model == MODEL
    assert str(error).startswith("model thermal-a:3: ")


def test_the_message_never_repeats_the_models_values() -> None:
    with pytest.raises(ModelOutputError) as caught:
        validate_output(REQUEST, [1, 2, 3, "<script>secret</script>"])
    assert "secret" not in str(caught.value)


ITEMS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
OUTPUTS = (
    ITEMS
    | st.lists(ITEMS, max_size=6)
    | st.lists(
        st.lists(ITEMS, max_size=3) | st.tuples(st.integers(START - NS, START + 4000 * NS), ITEMS),
        max_size=6,
    )
)


@settings(max_examples=300, deadline=1000, derandomize=True)
@given(OUTPUTS)
def test_any_output_is_a_series_or_a_model_output_error(output: object) -> None:
    try:
        series = validate_output(REQUEST, output)
    except ModelOutputError as error:
        assert error.model == MODEL
        return
    assert len(series.values) == REQUEST.points
    assert all(value is None or math.isfinite(value) for value in series.values)
