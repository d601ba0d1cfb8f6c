"""Prediction-log records: keyed by configured fields, sampled by level, joinable with actuals."""

from __future__ import annotations

import random

import pytest

from bus import uri
from chooser.policies import LogRecord, LogSpec, join_actuals, key_segment, log_key, should_log


def test_key_joins_the_configured_fields() -> None:
    spec = LogSpec(level="full", key_fields=("zone", "day", "hour"), separator="|")
    assert log_key(spec, {"zone": "A", "day": "2018-01-30", "hour": 7, "x": 1}) == "A|2018-01-30|7"
    assert log_key(spec, {"zone": "A", "hour": [1]}) == "A||"


def test_levels() -> None:
    rng = random.Random(4)
    assert not any(should_log(LogSpec(), rng) for _ in range(100))
    assert all(should_log(LogSpec(level="full"), rng) for _ in range(100))
    got = sum(should_log(LogSpec(level="sample", sample=0.2), rng) for _ in range(20_000))
    assert got / 20_000 == pytest.approx(0.2, abs=0.01)


def test_records_join_with_actuals_by_key_and_by_query_id() -> None:
    spec = LogSpec(level="full", key_fields=("zone", "day"))
    records = [
        LogRecord(log_key(spec, {"zone": z, "day": "d1"}), f"q{k}", "app", "1", "served",
                  k, "", {"zone": z}, 20.0 + k, None, 0.5).to_data()
        for k, z in enumerate(["A", "B", "C"])
    ]  # fmt: skip
    pairs = join_actuals(records, {"A.d1": 21.0, "C.d1": 19.0})
    assert [(r["query_id"], actual) for r, actual in pairs] == [("q0", 21.0), ("q2", 19.0)]
    assert [r["key"] for r, _ in join_actuals(records, {"q1": 0}, by="query_id")] == ["B.d1"]


@pytest.mark.parametrize("key", ["A.d1", "", "a/b", "x" * 80, "zone A", "é"])
def test_key_segment_is_always_a_valid_uri_segment(key: str) -> None:
    segment = key_segment(key)
    uri.parse(f"ns/log/{segment}")
    assert (segment == key) == (key in ("A.d1",))
