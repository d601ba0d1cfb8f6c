"""Queries from a user's terms: every bad field is a QueryError naming it."""

from __future__ import annotations

import pytest

from chooser import GridTooLargeError, Place, Query, QueryError


def test_a_query_in_user_terms() -> None:
    query = Query.parse(
        "thermal", "zone=A", "2018-01-30 00:00:00 PST", "2018-01-31 00:00:00 PST", "30min"
    )
    assert (query.model_type, query.place, len(query.grid)) == ("thermal", Place("zone", "A"), 48)
    assert query.aggregation == "mean"
    assert Query.parse("consumption", {"floor": "1"}, "2018-01-30 UTC", "2018-01-31 UTC", "1h")\
        .aggregation == "sum"  # fmt: skip
    assert Query.parse("x", "zone=A", "2018-01-30 UTC", "2018-01-31 UTC", "1h", aggregation="sum")\
        .aggregation == "sum"  # fmt: skip


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        (("Thermal", "zone=A", "2018-01-30 UTC", "2018-01-31 UTC", "1h"), "type"),
        (("thermal", "zone:A", "2018-01-30 UTC", "2018-01-31 UTC", "1h"), "context"),
        (
            ("thermal", {"zone": "A", "floor": "1"}, "2018-01-30 UTC", "2018-01-31 UTC", "1h"),
            "context",
        ),
        (("thermal", "zone=A", "tomorrow", "2018-01-31 UTC", "1h"), "start"),
        (("thermal", "zone=A", "2018-01-30 UTC", "2018-01-30 00:00", "1h"), "end"),
        (("thermal", "zone=A", "2018-01-30 UTC", "2018-01-29 UTC", "1h"), "end"),
        (("thermal", "zone=A", "2018-01-30 UTC", "2018-01-31 UTC", "1 hour"), "granularity"),
        (("thermal", "zone=A", "2018-01-30 UTC", "2018-01-31 UTC", "7h"), "end"),
        (("thermal", "zone=A", "2000-01-01 UTC", "2018-01-31 UTC", "1min"), "granularity"),
    ],
)
def test_bad_terms_name_their_field(terms: tuple[str, str, str, str, str], field: str) -> None:
    with pytest.raises(QueryError) as caught:
        Query.parse(*terms)
    assert caught.value.field == field and isinstance(caught.value, ValueError)


def test_too_many_points_keeps_the_figures() -> None:
    with pytest.raises(QueryError) as caught:
        Query.parse("thermal", "zone=A", "2018-01-30 UTC", "2018-01-31 UTC", "1s", max_points=10)
    assert isinstance(caught.value.__cause__, GridTooLargeError)
    assert caught.value.__cause__.points == 86400
