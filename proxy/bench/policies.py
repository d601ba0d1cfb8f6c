"""``modelbus bench policies``: the per-request decision cost of each routing and selection policy.

Each row times one decision as the wiring makes it per request (``chooser.policies``), median of
several batches: a contract's route (fair share with a canary, a linear phase-in and a shadow
release; latest-takes-all; sticky per requester), each selection policy's choice for a user
among three models (with the bounded per-user state looked up among 10,000 users) and its
learning step, each combine mode over five answers, and the prediction-log key. Target: a
decision under 20 µs. The served p50 with and without a shadow release needs the service wiring
(``proxy/routing/``) and is not measured here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from chooser.policies import (
    COMBINE_MODES,
    POLICIES,
    CombineMode,
    Contract,
    ContractSpec,
    LogSpec,
    Part,
    SelectionPolicy,
    UserStates,
    choose,
    combine,
    learn,
    log_key,
)

__all__ = ["TARGET_US", "run_policies_bench"]

TARGET_US = 20.0
_S = 10**9
_RELEASES = [
    {"version": "1"},
    {"version": "2", "share_pct": 10},
    {"version": "3", "share_pct": 50, "phase_in": {"mode": "linear", "span_s": 3600}},
    {"version": "4", "validity": {"gate": "never"}},
]


def _per_call_us(call: Callable[[], object], calls: int, batches: int = 7) -> float:
    samples = []
    for _ in range(batches):
        began = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - began) / calls)
    return sorted(samples)[len(samples) // 2] * 1e6


def _contract(**options: object) -> Contract:
    return Contract.new(ContractSpec.parse({"releases": _RELEASES, **options}), 0)


def _routing_rows(calls: int) -> list[tuple[str, float]]:
    rng = random.Random(1)
    now = 1800 * _S
    fair, latest = _contract(), _contract(router="latest")
    sticky = _contract(sticky="requester")
    return [
        ("route fair_share, 4 releases", _per_call_us(lambda: fair.route(now, rng), calls)),
        ("route latest, 4 releases", _per_call_us(lambda: latest.route(now, rng), calls)),
        (
            "route sticky per requester",
            _per_call_us(lambda: sticky.route(now, rng, requester="alice-key"), calls),
        ),
    ]


def _selection_rows(calls: int) -> list[tuple[str, float]]:
    rows = []
    candidates = ["m1", "m2", "m3"]
    for name in POLICIES:
        spec = SelectionPolicy(policy=name)
        users = UserStates()
        for k in range(10_000):
            users.arms(f"user-{k}", candidates)
        rng = random.Random(2)

        def decide(
            spec: SelectionPolicy = spec, users: UserStates = users, rng: random.Random = rng
        ) -> None:
            arms = users.arms("user-42", candidates)
            decision = choose(spec, arms, candidates, rng)
            learn(spec, arms, decision.model, 0.5, decision.probability, len(candidates))

        rows.append((f"select {name} + learn, 10k users", _per_call_us(decide, calls)))
    return rows


def _combine_rows(calls: int) -> list[tuple[str, float]]:
    parts = [Part(f"m{k}", 20.0 + k, arrived_ns=k) for k in range(5)]
    weights = {f"m{k}": 1.0 + k for k in range(5)}
    rows = []
    for mode in COMBINE_MODES:

        def merge(mode: CombineMode = mode) -> None:
            combine(mode, parts, weights, deadline_ns=10)

        rows.append((f"combine {mode}, 5 answers", _per_call_us(merge, calls)))
    return rows


def run_policies_bench(calls: int = 2000) -> list[str]:
    """The result table, one line per row (the CLI prints them)."""
    spec = LogSpec(level="full", key_fields=("zone", "day"))
    fields = {"zone": "A", "day": "2018-01-30", "x": 1}
    rows = [
        *_routing_rows(calls),
        *_selection_rows(calls),
        *_combine_rows(calls),
        ("prediction-log key, 2 fields", _per_call_us(lambda: log_key(spec, fields), calls)),
    ]
    lines = [
        "per-request decision cost of each policy (median of 7 batches)",
        f"{'decision':<44}  {'µs':>8}  target < {TARGET_US:g} µs",
    ]
    for name, micros in rows:
        verdict = "ok" if micros < TARGET_US else "MISSED"
        lines.append(f"{name:<44}  {micros:>8.2f}  {verdict}")
    return lines
