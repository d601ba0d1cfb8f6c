"""A release contract at work: its spec, its state, and the decisions made from both.

``Contract`` is the one object the wiring holds per application. Every method takes the
instant (``now_ns``, epoch nanoseconds) from the caller's clock and randomness from the caller's
seeded ``random.Random``; nothing here reads a clock or does I/O. Mutating methods change
``state`` in place; the wiring persists ``state.to_data()`` after them.

- ``route(now_ns, rng, requester, fields)`` → ``Route``: refreshes, then picks the serving
  release and the shadow copies (see ``chooser.policies.routing``).
- ``record_answer(version)``: one more answer produced by a release (served or shadow).
- ``feed_metric(version, name, value)``: a metric for a validity gate or top-``n`` expiry.
- ``refresh(now_ns)``: latches newly valid releases, applies expiry; true when state changed.
- ``expire(version, now_ns)`` / ``restore(version)``: by hand; a restored release is pinned.
- ``show(now_ns)``: each release's status (``serving``, ``shadow``, ``waiting``, ``expired``),
  the reason it is not serving, its phase-in, share, answers and metrics.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from chooser.policies.expiry import to_expire
from chooser.policies.routing import Route, phase, pick, shadows, shares, stable_unit
from chooser.policies.spec import ContractSpec, Never, PolicyError
from chooser.policies.state import ContractState
from chooser.policies.validity import verdict

__all__ = ["Contract"]


class Contract:
    def __init__(self, spec: ContractSpec, state: ContractState) -> None:
        missing = {r.version for r in spec.releases} - state.releases.keys()
        if missing:
            raise PolicyError([("state", "the state lacks releases of the contract")])
        self.spec = spec
        self.state = state

    @classmethod
    def new(cls, spec: ContractSpec, now_ns: int) -> Contract:
        """A contract whose releases are all added at ``now_ns`` (and refreshed then)."""
        made = cls(spec, ContractState.fresh(spec, now_ns))
        made.refresh(now_ns)
        return made

    def replace_spec(self, spec: ContractSpec, now_ns: int) -> None:
        """A new spec for the same application: known releases keep their state."""
        self.state = self.state.follow(spec, now_ns)
        self.spec = spec

    def refresh(self, now_ns: int) -> bool:
        changed = False
        for release in self.spec.releases:
            own = self.state.releases[release.version]
            if own.valid_since_ns is None and own.expired_ns is None:
                found = verdict(release.validity, own, now_ns)
                if found.valid:
                    own.valid_since_ns = now_ns if found.since_ns is None else found.since_ns
                    changed = True
        for version in to_expire(self.spec, self.state, now_ns):
            self.state.releases[version].expired_ns = now_ns
            changed = True
        return changed

    def route(
        self,
        now_ns: int,
        rng: random.Random,
        requester: str = "",
        fields: Mapping[str, Any] | None = None,
    ) -> Route:
        self.refresh(now_ns)
        table = shares(self.spec, self.state, now_ns)
        copies = shadows(self.spec, self.state, rng)
        if not table:
            return Route(None, copies, self._waiting_reason(now_ns))
        return Route(pick(table, self._unit(rng, requester, fields)), copies)

    def _unit(self, rng: random.Random, requester: str, fields: Mapping[str, Any] | None) -> float:
        sticky = self.spec.sticky
        if sticky == "requester" and requester:
            return stable_unit("r:" + requester)
        if sticky is not None and sticky.startswith("field:") and fields is not None:
            value = fields.get(sticky[6:])
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                return stable_unit("f:" + str(value))
        return rng.random()

    def _waiting_reason(self, now_ns: int) -> str:
        reasons = [
            f"{r.version}: {verdict(r.validity, self.state.releases[r.version], now_ns).reason}"
            for r in self.spec.releases
            if self.state.releases[r.version].expired_ns is None
        ]
        return "no release is valid (" + "; ".join(reasons or ["all expired"]) + ")"

    def record_answer(self, version: str) -> None:
        self.state.of(version).served += 1

    def feed_metric(self, version: str, name: str, value: float) -> None:
        self.spec.release(version)
        self.state.of(version).feed(name, value)

    def expire(self, version: str, now_ns: int) -> None:
        own = self.state.of(version)
        own.pinned = False
        if own.expired_ns is None:
            own.expired_ns = now_ns

    def restore(self, version: str) -> None:
        own = self.state.of(version)
        own.expired_ns = None
        own.pinned = True

    def show(self, now_ns: int) -> list[dict[str, Any]]:
        table = dict(shares(self.spec, self.state, now_ns))
        rows = []
        for release in self.spec.releases:
            own = self.state.releases[release.version]
            found = verdict(release.validity, own, now_ns)
            if own.expired_ns is not None:
                status, reason = "expired", "expired; restore to serve again"
            elif own.valid_since_ns is not None:
                status, reason = "serving", ""
            elif release.shadow or isinstance(release.validity, Never):
                status, reason = "shadow", found.reason
            else:
                status, reason = "waiting", found.reason
            since = own.valid_since_ns
            rows.append(
                {
                    "version": release.version,
                    "status": status,
                    "reason": reason,
                    "phase": 0.0 if since is None else phase(release, since, now_ns),
                    "share": table.get(release.version, 0.0),
                    **own.to_data(),
                }
            )
        return rows
