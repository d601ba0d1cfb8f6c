"""Shares over many requests against their definition (seeded source, injected clock)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chooser.policies import pick, shares, stable_unit
from tests.chooser.policies.helpers import S, contract, measured

LINEAR = {"mode": "linear", "span_s": 100}


def test_a_ten_percent_canary_gets_ten_percent_of_requests() -> None:
    c = contract({"version": "1"}, {"version": "2", "share_pct": 10})
    assert shares(c.spec, c.state, S) == [("2", 0.1), ("1", 0.9)]
    got = measured(c, S)
    assert got["2"] == pytest.approx(0.10, abs=0.01)  # not 10/110 = 0.0909
    assert got["2"] > 0.095


@pytest.mark.parametrize(
    ("at_s", "expected"), [(0, 0.0), (25, 0.25), (50, 0.5), (100, 1.0), (400, 1.0)]
)
def test_linear_phase_in_at_several_instants(at_s: int, expected: float) -> None:
    c = contract({"version": "1"}, {"version": "2", "phase_in": LINEAR})
    assert dict(shares(c.spec, c.state, at_s * S))["2"] == pytest.approx(expected)
    assert measured(c, at_s * S).get("2", 0.0) == pytest.approx(expected, abs=0.012)


def test_phase_in_times_share_and_newer_claims_first() -> None:
    c = contract(
        {"version": "1"},
        {"version": "2", "share_pct": 40},
        {"version": "3", "share_pct": 20, "phase_in": LINEAR},
    )
    assert shares(c.spec, c.state, 50 * S) == [("3", 0.1), ("2", 0.4), ("1", 0.5)]
    got = measured(c, 50 * S)
    assert got["3"] == pytest.approx(0.1, abs=0.01) and got["2"] == pytest.approx(0.4, abs=0.012)


def test_claims_are_capped_by_what_is_left() -> None:
    c = contract(
        {"version": "1"}, {"version": "2", "share_pct": 70}, {"version": "3", "share_pct": 60}
    )
    assert shares(c.spec, c.state, S) == [("3", 0.6), ("2", pytest.approx(0.4)), ("1", 0.0)]


def test_latest_takes_all_once_phased_in() -> None:
    c = contract(
        {"version": "1"},
        {"version": "2", "phase_in": LINEAR},
        {"version": "3", "phase_in": LINEAR, "validity": {"gate": "after_time", "seconds": 200}},
        router="latest",
    )
    assert shares(c.spec, c.state, 50 * S) == [("2", 0.5), ("1", 0.5)]
    assert shares(c.spec, c.state, 150 * S) == [("2", 1.0)]
    c.refresh(230 * S)  # 3 valid since 200 s: 30% of the way; 2 (fully phased) takes the rest
    table = shares(c.spec, c.state, 230 * S)
    assert [v for v, _ in table] == ["3", "2"]
    assert dict(table) == pytest.approx({"3": 0.3, "2": 0.7})
    assert measured(c, 230 * S)["3"] == pytest.approx(0.3, abs=0.012)
    assert shares(c.spec, c.state, 300 * S) == [("3", 1.0)]


def test_no_valid_release_routes_nowhere_and_says_why() -> None:
    c = contract({"version": "1", "validity": {"gate": "after_time", "seconds": 60}})
    route = c.route(10 * S, random.Random(1))
    assert route.version is None and "1: not yet valid: 10 of 60 s" in route.reason


def test_sticky_by_requester_keeps_one_release_per_requester() -> None:
    c = contract({"version": "1"}, {"version": "2", "share_pct": 50}, sticky="requester")
    rng = random.Random(3)
    for name in ("alice", "bob", "carol"):
        assert len({c.route(S, rng, requester=name).version for _ in range(50)}) == 1
    spread = {c.route(S, rng, requester=f"user{k}").version for k in range(200)}
    assert spread == {"1", "2"}


def test_sticky_by_field_uses_the_field_and_draws_when_missing() -> None:
    c = contract({"version": "1"}, {"version": "2", "share_pct": 50}, sticky="field:zone")
    rng = random.Random(3)
    assert len({c.route(S, rng, fields={"zone": "A"}).version for _ in range(50)}) == 1
    assert len({c.route(S, rng, fields={}).version for _ in range(200)}) == 2


@settings(max_examples=200, derandomize=True)
@given(st.text(max_size=20), st.floats(0, 1), st.floats(0, 1))
def test_a_sticky_requester_only_moves_to_the_newest_as_phase_in_grows(
    key: str, early: float, late: float
) -> None:
    early, late = sorted((early, late))
    unit = stable_unit(key)
    assert 0.0 <= unit < 1.0
    before = pick([("new", early), ("old", 1 - early)], unit)
    after = pick([("new", late), ("old", 1 - late)], unit)
    assert not (before == "new" and after == "old")


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.floats(1, 100), min_size=1, max_size=6), st.integers(0, 300))
def test_shares_always_sum_to_one(pcts: list[float], at_s: int) -> None:
    releases = [{"version": str(k), "share_pct": p, "phase_in": LINEAR} for k, p in enumerate(pcts)]
    c = contract(*releases)
    table = shares(c.spec, c.state, at_s * S)
    assert sum(part for _, part in table) == pytest.approx(1.0)
    assert all(part >= 0 for _, part in table)


def test_shadow_copies_are_sampled_and_never_served() -> None:
    c = contract(
        {"version": "1"},
        {"version": "2", "validity": {"gate": "never"}},
        {"version": "3", "shadow": True, "validity": {"gate": "after_requests", "count": 10**6}},
        {"version": "4", "validity": {"gate": "after_requests", "count": 10**6}},
        shadow_sample=0.25,
    )
    rng = random.Random(11)
    routes = [c.route(S, rng) for _ in range(20_000)]
    assert {r.version for r in routes} == {"1"}
    copied = [r.shadows for r in routes if r.shadows]
    assert set(copied) == {("2", "3")}
    assert len(copied) / len(routes) == pytest.approx(0.25, abs=0.012)
