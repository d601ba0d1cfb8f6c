"""Selection policies converge to the better model on a synthetic reward (seeded)."""

from __future__ import annotations

import json
import random

import pytest

from chooser.policies import POLICIES, Arms, PolicyError, SelectionPolicy, choose, learn

MEANS = {"good": 0.8, "fair": 0.5, "poor": 0.2}


def _run(policy: str, rounds: int, seed: int = 5) -> tuple[Arms, list[str]]:
    spec = SelectionPolicy(policy=policy)  # type: ignore[arg-type]
    rng, world = random.Random(seed), random.Random(seed + 1)
    arms: Arms = {}
    picks = []
    candidates = list(MEANS)
    for _ in range(rounds):
        decision = choose(spec, arms, candidates, rng)
        reward = 1.0 if world.random() < MEANS[decision.model] else 0.0
        learn(spec, arms, decision.model, reward, decision.probability, len(candidates))
        picks.append(decision.model)
    return arms, picks


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_converges_to_the_better_model(policy: str) -> None:
    arms, picks = _run(policy, 3000)
    late = picks[-1000:]
    assert late.count("good") / len(late) > 0.6, (policy, {m: late.count(m) for m in MEANS})
    json.dumps(arms)  # the state is plain data


def test_exp3_probabilities_are_returned_and_sum_to_one() -> None:
    spec = SelectionPolicy(policy="exp3", gamma=0.3)
    arms: Arms = {"a": {"logw": 2.0}, "b": {"logw": 0.0}}
    rng = random.Random(1)
    seen = {}
    for _ in range(200):
        d = choose(spec, arms, ["a", "b"], rng)
        seen[d.model] = d.probability
    assert seen["a"] + seen["b"] == pytest.approx(1.0)
    assert seen["a"] > seen["b"] > 0.15


def test_untried_models_are_tried_first_by_greedy_and_ucb() -> None:
    for policy in ("epsilon_greedy", "ucb1"):
        spec = SelectionPolicy(policy=policy)
        arms: Arms = {}
        tried = []
        for _ in range(3):
            d = choose(spec, arms, ["x", "y", "z"], random.Random(0))
            learn(spec, arms, d.model, 0.0)
            tried.append(d.model)
        assert tried == ["x", "y", "z"]


def test_rewards_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(PolicyError):
        learn(SelectionPolicy(), {}, "a", 1.5)
    with pytest.raises(PolicyError):
        learn(SelectionPolicy(), {}, "a", float("nan"))
    with pytest.raises(PolicyError):
        choose(SelectionPolicy(), {}, [], random.Random(0))


def test_exp3_log_weights_stay_bounded() -> None:
    spec = SelectionPolicy(policy="exp3", gamma=1.0)
    arms: Arms = {"a": {"logw": 0.0}, "b": {"logw": 0.0}}
    for _ in range(10_000):
        learn(spec, arms, "a", 1.0, 0.01, 2)
    assert max(own["logw"] for own in arms.values()) <= 200.0
