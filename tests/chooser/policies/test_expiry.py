"""Expiry: keep latest N or top N by a metric, the tie-breaks, and restore."""

from __future__ import annotations

import random

from chooser.policies import Contract, ContractSpec
from chooser.policies.expiry import to_expire
from tests.chooser.policies.helpers import S, contract


def _five() -> list[dict[str, object]]:
    return [{"version": str(k)} for k in range(1, 6)]


def _ranked(expiry: dict[str, object], values: dict[str, float], metric: str) -> Contract:
    """Five releases with metrics fed before the expiry policy is attached."""
    c = contract(*_five())
    for version, value in values.items():
        c.feed_metric(version, metric, value)
    c.replace_spec(ContractSpec.parse({"releases": _five(), "expiry": expiry}), S)
    return c


def test_keep_latest_expires_the_oldest() -> None:
    c = contract(*_five(), expiry={"keep": "latest", "n": 2})
    assert [row["status"] for row in c.show(S)] == ["expired"] * 3 + ["serving"] * 2
    assert {c.route(S, random.Random(1)).version for _ in range(100)} == {"5"}


def test_top_by_metric_with_ties_newer_first_and_missing_last() -> None:
    expiry = {"keep": "top", "n": 3, "metric": "mae", "higher_is_better": False}
    c = _ranked(expiry, {"1": 0.2, "2": 0.5, "3": 0.2, "4": 0.9}, "mae")
    # 1 and 3 tie at 0.2: both kept, 3 (newer) ranked first; then 2; 4 is worse; 5 has no value
    assert to_expire(c.spec, c.state, S) == ["4", "5"]


def test_releases_without_a_value_rank_last_newer_first() -> None:
    c = _ranked({"keep": "top", "n": 2, "metric": "mae"}, {"1": 0.1}, "mae")
    assert to_expire(c.spec, c.state, S) == ["4", "3", "2"]


def test_top_higher_is_better_and_a_tie_at_the_cut_keeps_the_newer() -> None:
    expiry = {"keep": "top", "n": 2, "metric": "acc"}
    c = _ranked(expiry, {"1": 0.9, "2": 0.8, "3": 0.8, "4": 0.7, "5": 0.1}, "acc")
    assert to_expire(c.spec, c.state, S) == ["2", "4", "5"]


def test_a_release_still_phasing_in_does_not_push_out_what_it_replaces() -> None:
    c = contract(
        {"version": "1"},
        {"version": "2", "phase_in": {"mode": "linear", "span_s": 100}},
        expiry={"keep": "latest", "n": 1},
    )
    c.refresh(50 * S)
    assert c.state.releases["1"].expired_ns is None
    c.refresh(100 * S)
    assert c.state.releases["1"].expired_ns == 100 * S


def test_an_expired_release_keeps_its_state_and_can_be_restored() -> None:
    c = contract(*_five(), expiry={"keep": "latest", "n": 1})
    c.record_answer("1")
    c.restore("1")
    c.refresh(2 * S)
    assert c.state.releases["1"].expired_ns is None and c.state.releases["1"].served == 1
    assert c.show(2 * S)[0]["status"] == "serving" and c.show(2 * S)[0]["pinned"]
    c.expire("1", 3 * S)
    assert c.show(3 * S)[0]["status"] == "expired"
