"""Each validity gate, driven by time, by counts and by fed metrics, with its visible reason."""

from __future__ import annotations

from chooser.policies.spec import AfterRequests, AfterTime, Immediately, MetricGate, Never
from chooser.policies.state import ReleaseState
from chooser.policies.validity import verdict
from tests.chooser.policies.helpers import S, contract


def test_immediately_is_valid_from_when_it_was_added() -> None:
    assert verdict(Immediately(), ReleaseState(5 * S), 9 * S).since_ns == 5 * S


def test_never_is_never_valid_and_says_shadow_only() -> None:
    found = verdict(Never(gate="never"), ReleaseState(0, served=10**9), 10**18)
    assert not found.valid and "shadow only" in found.reason


def test_after_time_opens_exactly_at_its_instant() -> None:
    gate, state = AfterTime(gate="after_time", seconds=60), ReleaseState(10 * S)
    early = verdict(gate, state, 69 * S)
    assert not early.valid and early.reason == "not yet valid: 59 of 60 s"
    assert verdict(gate, state, 70 * S).since_ns == 70 * S


def test_after_requests_counts_answers() -> None:
    gate = AfterRequests(gate="after_requests", count=3)
    assert verdict(gate, ReleaseState(0, served=2), S).reason == "not yet valid: 2 of 3 answers"
    assert verdict(gate, ReleaseState(0, served=3), S).valid


def test_metric_needs_samples_then_the_threshold() -> None:
    gate = MetricGate(gate="metric", metric="mae", op="<=", threshold=0.5, min_samples=2)
    state = ReleaseState(0)
    assert verdict(gate, state, S).reason == "not yet valid: 0 of 2 values of mae fed"
    state.feed("mae", 0.1)
    assert not verdict(gate, state, S).valid
    state.feed("mae", 0.9)
    assert verdict(gate, state, S).reason == "not yet valid: mae = 0.9, needs <= 0.5"
    state.feed("mae", 0.5)
    assert verdict(gate, state, S).valid


def test_a_contract_latches_validity_when_first_seen() -> None:
    c = contract(
        {"version": "1"},
        {
            "version": "2",
            "validity": {"gate": "metric", "metric": "err", "op": "<", "threshold": 1},
            "phase_in": {"mode": "linear", "span_s": 100},
        },
    )
    assert c.show(S)[1]["status"] == "waiting"
    c.feed_metric("2", "err", 0.5)
    assert c.refresh(7 * S)
    assert c.state.releases["2"].valid_since_ns == 7 * S
    c.feed_metric("2", "err", 5.0)  # worse again: a latched release stays valid
    assert not c.refresh(8 * S)
    assert c.show(57 * S)[1]["phase"] == 0.5


def test_served_answers_open_a_count_gate_in_a_contract() -> None:
    c = contract(
        {"version": "1"}, {"version": "2", "validity": {"gate": "after_requests", "count": 2}}
    )
    c.record_answer("2")
    assert not c.refresh(S)
    c.record_answer("2")
    assert c.refresh(2 * S) and c.state.releases["2"].valid_since_ns == 2 * S
