"""Selection policies: which candidate model answers this user, learnt from feedback.

Each policy works on one user's state for one candidate set: ``arms``, a plain dict
``{model: {stat: float}}`` (JSON/msgpack-able; never pickled). ``choose(arms, candidates, rng)``
returns a ``Decision`` (the model and the probability it had of being chosen, which Exp3 needs
back with the feedback); ``learn(arms, model, reward, probability)`` folds one reward in
``[0, 1]`` into the state, in place. Candidates the state has not seen start from the prior.

=====================  =======================  ==================================================
policy                 state per model          choice
=====================  =======================  ==================================================
``epsilon_greedy``     ``n``, ``mean``          untried first; else with ``epsilon`` a uniform
                                                draw, otherwise the best mean (ties: order)
``exp3``               ``logw``                 ``p = (1-gamma)·w/Σw + gamma/K``; learn adds
                                                ``gamma·(r/p)/K`` to the chosen ``logw``
``thompson_beta``      ``a``, ``b`` (from 1, 1)  the largest Beta(a, b) draw; learn ``a += r``,
                                                ``b += 1-r``
``thompson_gaussian``  ``n``, ``mean``          the largest ``mean + sigma/sqrt(n+1)·N(0,1)``
``ucb1``               ``n``, ``sum``           untried first; else the largest
                                                ``mean + c·sqrt(2·ln N / n)``
=====================  =======================  ==================================================
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chooser.policies.spec import PolicyError

__all__ = ["POLICIES", "Arms", "Decision", "PolicyName", "SelectionPolicy", "choose", "learn"]

Arms = dict[str, dict[str, float]]
PolicyName = Literal["epsilon_greedy", "exp3", "thompson_beta", "thompson_gaussian", "ucb1"]
POLICIES: tuple[PolicyName, ...] = (
    "epsilon_greedy",
    "exp3",
    "thompson_beta",
    "thompson_gaussian",
    "ucb1",
)


class SelectionPolicy(BaseModel):
    """A policy and its parameters, as configured (untrusted data enters here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: PolicyName = "epsilon_greedy"
    epsilon: float = Field(default=0.1, ge=0, le=1)
    gamma: float = Field(default=0.1, gt=0, le=1)
    sigma: float = Field(default=0.5, gt=0, le=1e6)
    c: float = Field(default=1.0, ge=0, le=1e6)


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    probability: float


def _prior(policy: PolicyName) -> dict[str, float]:
    if policy == "exp3":
        return {"logw": 0.0}
    if policy == "thompson_beta":
        return {"a": 1.0, "b": 1.0}
    if policy == "ucb1":
        return {"n": 0.0, "sum": 0.0}
    return {"n": 0.0, "mean": 0.0}


def _stats(arms: Arms, policy: PolicyName, model: str) -> dict[str, float]:
    found = arms.get(model)
    if found is None:
        found = arms[model] = _prior(policy)
    return found


def choose(
    spec: SelectionPolicy, arms: Arms, candidates: Sequence[str], rng: random.Random
) -> Decision:
    if not candidates:
        raise PolicyError([("candidates", "at least one candidate model is needed")])
    stats = [_stats(arms, spec.policy, model) for model in candidates]
    k = len(candidates)
    if spec.policy == "exp3":
        probabilities = _exp3_probabilities(stats, spec.gamma)
        unit, edge = rng.random(), 0.0
        for model, p in zip(candidates, probabilities, strict=True):
            edge += p
            if unit < edge:
                return Decision(model, p)
        return Decision(candidates[-1], probabilities[-1])
    if spec.policy in ("epsilon_greedy", "ucb1"):
        for model, own in zip(candidates, stats, strict=True):
            if own["n"] == 0:
                return Decision(model, 1.0)
    if spec.policy == "epsilon_greedy":
        best = max(range(k), key=lambda j: (stats[j]["mean"], -j))
        if rng.random() < spec.epsilon:
            drawn = rng.randrange(k)
            return Decision(
                candidates[drawn], spec.epsilon / k + (1 - spec.epsilon) * (drawn == best)
            )
        return Decision(candidates[best], 1 - spec.epsilon + spec.epsilon / k)
    if spec.policy == "ucb1":
        total = math.log(sum(own["n"] for own in stats))
        scores = [own["sum"] / own["n"] + spec.c * math.sqrt(2 * total / own["n"]) for own in stats]
    elif spec.policy == "thompson_beta":
        scores = [rng.betavariate(own["a"], own["b"]) for own in stats]
    else:
        scores = [
            own["mean"] + spec.sigma / math.sqrt(own["n"] + 1) * rng.gauss(0.0, 1.0)
            for own in stats
        ]
    best = max(range(k), key=lambda j: (scores[j], -j))
    return Decision(candidates[best], 1.0)  # deterministic given the draws; not needed back


def _exp3_probabilities(stats: list[dict[str, float]], gamma: float) -> list[float]:
    top = max(own["logw"] for own in stats)
    weights = [math.exp(own["logw"] - top) for own in stats]
    total = math.fsum(weights)
    k = len(stats)
    return [(1 - gamma) * w / total + gamma / k for w in weights]


def learn(
    spec: SelectionPolicy,
    arms: Arms,
    model: str,
    reward: float,
    probability: float = 1.0,
    candidates: int = 1,
) -> None:
    """Fold ``reward`` (``0..1``) for ``model`` into ``arms``; ``probability`` and the number
    of ``candidates`` of the decision are Exp3's."""
    if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
        raise PolicyError([("reward", "a reward is a number from 0 to 1")])
    own = _stats(arms, spec.policy, model)
    if spec.policy == "exp3":
        if not 0.0 < probability <= 1.0:
            raise PolicyError([("probability", "must be in (0, 1]")])
        own["logw"] += spec.gamma * (reward / probability) / max(1, candidates)
        _renormalise(arms)
    elif spec.policy == "thompson_beta":
        own["a"] += reward
        own["b"] += 1.0 - reward
    elif spec.policy == "ucb1":
        own["n"] += 1.0
        own["sum"] += reward
    else:
        own["n"] += 1.0
        own["mean"] += (reward - own["mean"]) / own["n"]


def _renormalise(arms: Arms) -> None:
    """Keep Exp3's log-weights near zero (only their differences matter)."""
    top = max(own["logw"] for own in arms.values())
    if top > 100.0:
        for own in arms.values():
            own["logw"] = max(own["logw"] - top, -700.0)
