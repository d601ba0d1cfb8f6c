"""Expiry: which releases stop serving when a contract keeps only the latest or the top ``n``.

Only releases that are valid, fully phased in, not expired and not pinned (restored by hand)
are ranked; a release still under evaluation or still phasing in is neither counted nor
expired, so the release it replaces keeps serving until it is fully phased in.

- ``latest``: the newest ``n`` (contract order: later is newer) are kept.
- ``top``: ranked by the latest fed value of ``metric`` (highest first, or lowest first when
  ``higher_is_better`` is false); releases with no value rank after every release with one;
  equal values (and releases with none) rank newer first.

An expired release keeps its state and artifacts; ``Contract.restore`` brings it back pinned.
"""

from __future__ import annotations

from chooser.policies.routing import phase
from chooser.policies.spec import ContractSpec
from chooser.policies.state import ContractState

__all__ = ["to_expire"]


def to_expire(spec: ContractSpec, state: ContractState, now_ns: int) -> list[str]:
    """The versions the contract's expiry policy expires now (empty without a policy)."""
    policy = spec.expiry
    if policy is None:
        return []
    ranked = []  # newest first
    for age, release in reversed(list(enumerate(spec.releases))):
        own = state.releases[release.version]
        if (
            own.valid_since_ns is None
            or own.expired_ns is not None
            or own.pinned
            or phase(release, own.valid_since_ns, now_ns) < 1.0
        ):
            continue
        ranked.append((age, release.version))
    if policy.keep == "top":
        metric = policy.metric or ""
        sign = -1.0 if policy.higher_is_better else 1.0

        def rank(item: tuple[int, str]) -> tuple[int, float, int]:
            fed = state.releases[item[1]].metrics.get(metric)
            if fed is None:
                return (1, 0.0, -item[0])
            return (0, sign * fed.value, -item[0])

        ranked.sort(key=rank)
    return [version for _, version in ranked[policy.n :]]
