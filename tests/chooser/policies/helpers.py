"""Shared builders for the policy tests: contracts from short specs, an injected clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from chooser.policies import Contract, ContractSpec

S = 10**9  # one second in ns


def contract(*releases: dict[str, Any], **options: Any) -> Contract:
    return Contract.new(ContractSpec.parse({"releases": list(releases), **options}), 0)


def measured(c: Contract, now_ns: int, n: int = 20_000, seed: int = 7) -> dict[str, float]:
    """The fraction of ``n`` requests each release served at ``now_ns``."""
    rng = random.Random(seed)
    counts = Counter(c.route(now_ns, rng).version for _ in range(n))
    return {version: count / n for version, count in counts.items() if version is not None}
