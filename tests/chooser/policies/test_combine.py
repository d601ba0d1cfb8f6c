"""Combine modes against hand-computed answers; each model's part shown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chooser.policies import Part, PolicyError, combine

A, B, C, D = Part("a", 1.0), Part("b", 2.0), Part("c", 6.0), Part("d", error="timeout")


def test_mean_median_weighted_by_hand() -> None:
    assert combine("mean", [A, B, C, D]).value == 3.0
    assert combine("median", [A, B, C, D]).value == 2.0
    assert combine("median", [A, B, C, Part("e", 7.0)]).value == 4.0
    # (1·1 + 3·2 + 0·6) / (1 + 3) = 1.75; c weighs 0 (none given), d failed
    got = combine("weighted", [A, B, C, D], weights={"a": 1, "b": 3, "d": 5})
    assert got.value == 1.75
    assert [(p["model"], p["used"], p.get("weight")) for p in got.parts] == [
        ("a", True, 1.0),
        ("b", True, 3.0),
        ("c", False, 0.0),
        ("d", False, 5.0),
    ]


def test_lists_are_combined_element_by_element_and_odd_shapes_left_out() -> None:
    parts = [Part("a", [1, 10]), Part("b", [3, 30]), Part("c", [5]), Part("d", "x")]
    got = combine("mean", parts)
    assert got.value == [2.0, 20.0]
    assert [p["note"] for p in got.parts] == [
        "",
        "",
        "shape differs",
        "not a number or a list of numbers",
    ]


def test_vote_majority_and_ties_by_order() -> None:
    parts = [Part("a", "cold"), Part("b", "warm"), Part("c", "warm"), Part("d", [1, 2])]
    got = combine("vote", parts)
    assert got.value == "warm" and [p["used"] for p in got.parts] == [False, True, True, False]
    assert combine("vote", [Part("a", "cold"), Part("b", "warm")]).value == "cold"
    assert combine("vote", [Part("a", [1, 2]), Part("b", [1, 2]), Part("c", 1)]).value == [1, 2]


def test_first_available_by_the_deadline() -> None:
    parts = [
        Part("a", 1.0, arrived_ns=30),
        Part("b", 2.0, arrived_ns=10),
        Part("c", error="boom", arrived_ns=5),
        Part("d", 4.0, arrived_ns=50),
    ]
    got = combine("first", parts, deadline_ns=40)
    assert got.value == 2.0
    assert [p["note"] for p in got.parts] == ["not first", "", "failed", "after the deadline"]
    with pytest.raises(PolicyError):
        combine("first", parts, deadline_ns=5)


@pytest.mark.parametrize("mode", ["mean", "median", "weighted", "vote", "first"])
def test_no_usable_answer_is_a_policy_error(mode: str) -> None:
    with pytest.raises(PolicyError):
        combine(mode, [Part("x", error="down")])  # type: ignore[arg-type]


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=9))
def test_mean_and_median_lie_within_the_answers(values: list[float]) -> None:
    parts = [Part(str(k), v) for k, v in enumerate(values)]
    for mode in ("mean", "median"):
        got = combine(mode, parts).value
        assert min(values) - 1e-6 <= got <= max(values) + 1e-6
