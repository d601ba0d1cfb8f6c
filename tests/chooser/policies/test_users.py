"""Per-user state is bounded: a flood of user ids stays within the limit, LRU evicted."""

from __future__ import annotations

import json

import pytest

from chooser.policies import PolicyError, UserStates, candidate_key


def test_a_flood_of_distinct_users_stays_within_the_bound() -> None:
    states = UserStates(limit=100)
    states.arms("keeper", ["a", "b"])["a"] = {"n": 1.0, "mean": 1.0}
    for k in range(10_000):
        states.arms(f"user-{k}", ["a", "b"])
        if k % 50 == 0:
            states.arms("keeper", ["b", "a"])  # recently used: never evicted
    assert len(states) == 100 and states.evicted == 10_001 - 100
    assert states.peek("keeper") == {"a|b": {"a": {"n": 1.0, "mean": 1.0}}}
    assert states.peek("user-0") is None


def test_state_round_trips_through_json_in_recency_order() -> None:
    states = UserStates(limit=3)
    for user in ("u1", "u2", "u3"):
        states.arms(user, ["m"])["m"] = {"a": 2.0, "b": 1.0}
    states.arms("u1", ["m"])
    again = UserStates.from_data(json.loads(json.dumps(states.to_data())))
    again.arms("u4", ["m"])
    assert again.peek("u2") is None and again.peek("u1") is not None


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"limit": 3, "evicted": 0, "users": [["u", {"k": {"m": {"n": "1"}}}]]},
        {"limit": 3, "evicted": 0, "users": [["u", {"k": {"m": {"n": float("inf")}}}]]},
        {"limit": 3, "evicted": 0, "users": [[1, {}]]},
        {"limit": 3, "evicted": 0, "users": "x"},
        {"limit": float("inf"), "evicted": 0, "users": []},
        {"limit": 0, "evicted": 0, "users": []},
        {"limit": 3, "evicted": True, "users": []},
    ],
)
def test_malformed_stored_state_is_a_policy_error(bad: object) -> None:
    with pytest.raises(PolicyError):
        UserStates.from_data(bad)


def test_long_user_ids_are_refused_and_sets_are_order_free() -> None:
    with pytest.raises(PolicyError):
        UserStates().arms("x" * 129, ["a"])
    assert candidate_key(["b", "a"]) == candidate_key(["a", "b"]) == "a|b"
