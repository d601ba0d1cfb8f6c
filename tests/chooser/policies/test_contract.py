"""The contract object: spec changes keep state, state survives as plain data, show is readable."""

from __future__ import annotations

import json
import random

import pytest

from chooser.policies import Contract, ContractSpec, ContractState, PolicyError
from tests.chooser.policies.helpers import S, contract


def test_state_survives_a_json_round_trip() -> None:
    c = contract({"version": "1"}, {"version": "2", "validity": {"gate": "never"}})
    c.record_answer("2")
    c.feed_metric("2", "mae", 0.25)
    data = json.loads(json.dumps(c.state.to_data()))
    again = Contract(c.spec, ContractState.from_data(data))
    assert again.show(S) == c.show(S)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"releases": []},
        {"releases": {"1": {"added_ns": -1}}},
        {"releases": {"1": {"added_ns": 0, "served": True, "metrics": {}, "valid_since_ns": None,
                            "expired_ns": None, "pinned": False}}},
        {"releases": {"1": {"added_ns": 0, "served": 0, "metrics": {"m": {"value": "x"}},
                            "valid_since_ns": None, "expired_ns": None, "pinned": False}}},
    ],
)  # fmt: skip
def test_malformed_stored_state_is_a_policy_error(bad: object) -> None:
    with pytest.raises(PolicyError):
        Contract(ContractSpec.parse({"releases": [{"version": "1"}]}), ContractState.from_data(bad))


def test_a_new_spec_keeps_known_releases_state_and_starts_new_ones_now() -> None:
    c = contract({"version": "1"})
    c.record_answer("1")
    spec = ContractSpec.parse({"releases": [{"version": "1"}, {"version": "2", "share_pct": 5}]})
    c.replace_spec(spec, 9 * S)
    assert c.state.releases["1"].served == 1 and c.state.releases["2"].added_ns == 9 * S
    assert c.route(9 * S, random.Random(1)).version in {"1", "2"}


def test_metrics_are_bounded_and_finite() -> None:
    c = contract({"version": "1"})
    with pytest.raises(PolicyError):
        c.feed_metric("1", "m", float("nan"))
    for k in range(32):
        c.feed_metric("1", f"m{k}", 1.0)
    with pytest.raises(PolicyError):
        c.feed_metric("1", "one-more", 1.0)
    with pytest.raises(PolicyError):
        c.feed_metric("9", "m", 1.0)


def test_show_reports_status_reason_phase_and_share() -> None:
    c = contract(
        {"version": "1"},
        {"version": "2", "share_pct": 20, "phase_in": {"mode": "linear", "span_s": 10}},
        {"version": "3", "validity": {"gate": "after_requests", "count": 5}},
        {"version": "4", "shadow": True, "validity": {"gate": "after_time", "seconds": 99}},
    )
    rows = {row["version"]: row for row in c.show(5 * S)}
    assert rows["2"]["phase"] == 0.5 and rows["2"]["share"] == pytest.approx(0.1)
    assert rows["1"]["share"] == pytest.approx(0.9)
    assert (rows["3"]["status"], rows["3"]["reason"]) == (
        "waiting",
        "not yet valid: 0 of 5 answers",
    )
    assert (rows["4"]["status"], rows["4"]["reason"]) == ("shadow", "not yet valid: 5 of 99 s")
