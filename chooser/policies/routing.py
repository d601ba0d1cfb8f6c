"""Routers: which release answers a request, and which get a shadow copy.

Shares, in release order newest first (the contract lists releases oldest first):

- ``fair_share``: a release at ``p`` (its phase-in times its ``share_pct``) receives exactly
  ``p`` of the requests, newer releases claiming first (a claim is capped by what is left); the
  oldest serving release takes what is left. Two releases, the newer at 10%: 10% and 90% — not
  ForestFlow's ``p / (p + 100)``.
- ``latest``: the newest serving release takes its phase-in (``share_pct`` does not apply); the
  rest goes to the newest older release that is fully phased in (or, if none is, the next
  older one). Once phased in, the newest takes all.

A request is placed by a number ``u`` in ``[0, 1)`` on the shares laid end to end, newest first:
drawn from the seeded source passed in, or, when sticky, a stable hash of the requester's key or
of a request field (``stable_unit``). As a linear phase-in grows, the newest release's interval
``[0, p)`` grows, so a sticky requester only ever moves from an older release to the newest.

Serving releases are valid and not expired. Shadow releases are those not serving, not expired,
and marked ``shadow`` (a ``never`` gate implies it); a request is copied to all of them with
probability ``shadow_sample``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from chooser.policies.spec import ContractSpec, LinearPhaseIn, Never, ReleaseSpec
from chooser.policies.state import ContractState

__all__ = ["Route", "Share", "phase", "pick", "shadows", "shares", "stable_unit"]

Share = tuple[str, float]


@dataclass(frozen=True, slots=True)
class Route:
    """The release that serves (``None``: none is valid, ``reason`` says why) and the shadow
    releases that get a copy of this request."""

    version: str | None
    shadows: tuple[str, ...] = ()
    reason: str = ""


def phase(release: ReleaseSpec, valid_since_ns: int, now_ns: int) -> float:
    """The phase-in, 0 to 1, of a release valid since ``valid_since_ns``."""
    policy = release.phase_in
    if not isinstance(policy, LinearPhaseIn):
        return 1.0
    elapsed_s = (now_ns - valid_since_ns) / 1e9
    return min(1.0, max(0.0, elapsed_s / policy.span_s))


def _serving(spec: ContractSpec, state: ContractState) -> list[tuple[ReleaseSpec, int]]:
    found = []
    for release in reversed(spec.releases):
        own = state.releases[release.version]
        if own.valid_since_ns is not None and own.expired_ns is None:
            found.append((release, own.valid_since_ns))
    return found


def shares(spec: ContractSpec, state: ContractState, now_ns: int) -> list[Share]:
    """Each serving release's fraction of requests, newest first; empty when none serves.
    Reads the latched validity: ``Contract.route`` refreshes before it asks."""
    serving = _serving(spec, state)
    if not serving:
        return []
    if spec.router == "latest":
        return _latest(serving, now_ns)
    left, out = 1.0, []
    for release, since_ns in serving[:-1]:
        take = min(left, phase(release, since_ns, now_ns) * release.share_pct / 100)
        out.append((release.version, take))
        left -= take
    out.append((serving[-1][0].version, max(0.0, left)))
    return out


def _latest(serving: list[tuple[ReleaseSpec, int]], now_ns: int) -> list[Share]:
    newest, since_ns = serving[0]
    part = phase(newest, since_ns, now_ns)
    if part >= 1.0 or len(serving) == 1:
        return [(newest.version, 1.0)]
    base = next(
        (r for r, s in serving[1:] if phase(r, s, now_ns) >= 1.0),
        serving[1][0],
    )
    return [(newest.version, part), (base.version, 1.0 - part)]


def pick(table: Sequence[Share], unit: float) -> str | None:
    """The release whose interval holds ``unit`` (``0 <= unit < 1``), shares laid end to end."""
    edge = 0.0
    for version, part in table:
        edge += part
        if unit < edge:
            return version
    return table[-1][0] if table else None  # rounding: the sum may fall short of 1 by an ulp


def stable_unit(key: str) -> float:
    """A number in ``[0, 1)`` fixed by ``key`` (BLAKE2b, the same on every host and run)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def shadows(spec: ContractSpec, state: ContractState, rng: random.Random) -> tuple[str, ...]:
    """The shadow releases this request is copied to (sampled by ``shadow_sample``)."""
    targets = tuple(
        release.version
        for release in spec.releases
        if (release.shadow or isinstance(release.validity, Never))
        and state.releases[release.version].valid_since_ns is None
        and state.releases[release.version].expired_ns is None
    )
    if not targets or spec.shadow_sample <= 0.0:
        return ()
    if spec.shadow_sample >= 1.0 or rng.random() < spec.shadow_sample:
        return targets
    return ()
