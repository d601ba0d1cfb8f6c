"""Rewards from true values, and the shadow difference."""

from __future__ import annotations

import pytest

from chooser.policies import PolicyError, difference, reward_from_truth


def test_numbers_and_lists() -> None:
    assert reward_from_truth(2.0, 2.0) == 1.0
    assert reward_from_truth(3.0, 2.0, scale=1.0) == 0.5
    assert reward_from_truth([1, 2], [2, 4], scale=3.0) == pytest.approx(1 / 1.5)
    assert difference([1, 2], [2, 4]) == 1.5


def test_other_values_by_equality() -> None:
    assert reward_from_truth("warm", "warm") == 1.0
    assert reward_from_truth("warm", "cold") == 0.0
    assert difference({"a": 1}, {"a": 1}) == 0.0
    assert difference([1, 2], [1]) == 1.0
    assert difference(True, 1) == 0.0 and reward_from_truth(True, 1.0) == 1.0


def test_a_bad_scale_is_refused() -> None:
    with pytest.raises(PolicyError):
        reward_from_truth(1, 1, scale=0)
