"""Model metadata: the accepted shape, one clear error per bad field, aggregation per type."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chooser import AGGREGATION, MetadataError, ModelMetadata, Place

GOOD: dict[str, Any] = {
    "type": "thermal",
    "context": {"zone": "A"},
    "resolution_s": 900,
    "coverage": {
        "timezone": "America/Los_Angeles",
        "ranges": [{"start": "2018-01-01 00:00", "end": "2019-01-01 00:00"}],
        "rules": [{"days": [0, 1, 2, 3, 4], "hours": [8, 9], "months": [1]}],
    },
    "training_streams": ["soda/sensors/zoneA/temp"],
    "training_range": {"start": "2017-01-01 00:00 PST", "end": "2018-01-01 00:00 PST"},
    "cache_ttl_s": 600,
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def test_good_metadata_is_accepted_and_frozen() -> None:
    meta = ModelMetadata.parse(GOOD)
    assert meta.place == Place("zone", "A")
    assert meta.aggregation_rule == "mean"
    assert meta.coverage is not None and meta.coverage.rules[0].hours == [8, 9]
    with pytest.raises(ValueError, match="frozen"):
        meta.type = "weather"


def test_can_predict_replaces_coverage() -> None:
    data = {k: v for k, v in GOOD.items() if k != "coverage"}
    assert ModelMetadata.parse({**data, "has_can_predict": True}).has_can_predict


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"type": "Thermal!"}, "type", "should match pattern"),
        ({"type": "x" * 65}, "type", "should match pattern"),
        ({"context": {"zone": "A", "floor": "1"}}, "context", "at most 1"),
        ({"context": {"zone": "A B"}}, "metadata", "place id"),
        ({"resolution_s": 0}, "resolution_s", "greater than or equal to 1"),
        ({"resolution_s": "fast"}, "resolution_s", "valid integer"),
        ({"has_can_predict": True}, "metadata", "exactly one of coverage"),
        ({"coverage": None}, "metadata", "exactly one of coverage"),
        ({"training_streams": ["soda/+/temp"]}, "training_streams.0", "not a bus URI"),
        ({"training_streams": ["ok"] * 65}, "training_streams", "at most 64"),
        ({"cache_ttl_s": -1}, "cache_ttl_s", "greater than 0"),
        ({"aggregation": "median"}, "aggregation", "'mean' or 'sum'"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        (
            {"coverage": {**GOOD["coverage"], "timezone": "Mars/Base"}},
            "coverage.timezone",
            "unknown IANA",
        ),
        ({"coverage": {"timezone": "UTC"}}, "coverage", "at least one range or rule"),
        (
            {"coverage": {"timezone": "UTC", "rules": [{"hours": [24]}]}},
            "coverage.rules.0.hours.0",
            "less than or equal to 23",
        ),
        (
            {"coverage": {"timezone": "UTC", "rules": [{"days": [1, 1]}]}},
            "coverage.rules.0.days",
            "distinct",
        ),
        (
            {"coverage": {"timezone": "UTC", "rules": [{}] * 33}},
            "coverage.rules",
            "at most 32",
        ),
        (
            {
                "coverage": {
                    "timezone": "UTC",
                    "ranges": [{"start": "2018-02-01", "end": "2018-01-01"}],
                }
            },
            "coverage",
            "end must be after",
        ),
        (
            {"coverage": {"timezone": "UTC", "ranges": [{"start": "soon", "end": "later"}]}},
            "coverage",
            "not a date-time",
        ),
    ],
)
def test_each_bad_field_is_named(changes: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(MetadataError) as caught:
        ModelMetadata.parse(with_(**changes))
    assert any(f == field and message in m for f, m in caught.value.errors), caught.value.errors


def test_several_bad_fields_are_all_reported() -> None:
    with pytest.raises(MetadataError) as caught:
        ModelMetadata.parse(with_(type="?", resolution_s=-5, cache_ttl_s=0))
    assert {field for field, _ in caught.value.errors} == {"type", "resolution_s", "cache_ttl_s"}


def test_not_a_mapping_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError):
        ModelMetadata.parse(["thermal"])


def test_aggregation_table_and_override() -> None:
    assert AGGREGATION["consumption"] == "sum" and AGGREGATION["thermal"] == "mean"
    assert ModelMetadata.parse(with_(type="consumption")).aggregation_rule == "sum"
    assert ModelMetadata.parse(with_(type="solar-kwh")).aggregation_rule == "mean"
    assert ModelMetadata.parse(with_(type="solar-kwh", aggregation="sum")).aggregation_rule == "sum"
    assert ModelMetadata.parse(with_(type=" Weather ")).type == "weather"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=1000, derandomize=True)
@given(
    st.sampled_from([*sorted(GOOD), "coverage.timezone", "coverage.ranges", "coverage.rules"]), JSON
)
def test_any_field_value_is_accepted_or_a_metadata_error(field: str, value: object) -> None:
    data = dict(GOOD)
    if field.startswith("coverage."):
        data["coverage"] = {**GOOD["coverage"], field.partition(".")[2]: value}
    else:
        data[field] = value
    try:
        ModelMetadata.parse(data)
    except MetadataError as exc:
        assert exc.errors


@settings(max_examples=100, deadline=1000, derandomize=True)
@given(JSON)
def test_any_json_is_metadata_or_a_metadata_error(value: object) -> None:
    with pytest.raises(MetadataError):
        ModelMetadata.parse(value)
