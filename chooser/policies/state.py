"""What a contract remembers between requests, as plain data (JSON/msgpack-able dicts).

Per release: when it was added (``added_ns``), answers it produced (``served``, shadow copies
included), the metrics fed to it (latest ``value`` and the number of ``samples``), the instant it
became valid (``valid_since_ns``, latched), when it expired (``expired_ns``) and whether it was
restored by hand (``pinned``: exempt from automatic expiry). ``ContractState.to_data`` and
``from_data`` convert; ``from_data`` validates untrusted (stored) data and raises only
``PolicyError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chooser.policies.spec import ContractSpec, PolicyError

__all__ = ["ContractState", "Metric", "ReleaseState"]

MAX_METRICS = 32


@dataclass
class Metric:
    value: float
    samples: int


@dataclass
class ReleaseState:
    added_ns: int
    served: int = 0
    metrics: dict[str, Metric] = field(default_factory=dict)
    valid_since_ns: int | None = None
    expired_ns: int | None = None
    pinned: bool = False

    def feed(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise PolicyError([("value", "a metric value must be a finite number")])
        known = self.metrics.get(name)
        if known is None:
            if len(self.metrics) >= MAX_METRICS:
                raise PolicyError([("metric", f"at most {MAX_METRICS} metrics per release")])
            self.metrics[name] = Metric(value, 1)
        else:
            known.value, known.samples = value, known.samples + 1

    def to_data(self) -> dict[str, Any]:
        return {
            "added_ns": self.added_ns,
            "served": self.served,
            "metrics": {
                k: {"value": m.value, "samples": m.samples} for k, m in self.metrics.items()
            },
            "valid_since_ns": self.valid_since_ns,
            "expired_ns": self.expired_ns,
            "pinned": self.pinned,
        }

    @classmethod
    def from_data(cls, data: Any) -> ReleaseState:
        try:
            metrics = {
                _name(k): Metric(_finite(v["value"]), _count(v["samples"]))
                for k, v in data["metrics"].items()
            }
            return cls(
                added_ns=_count(data["added_ns"]),
                served=_count(data["served"]),
                metrics=metrics,
                valid_since_ns=_optional_count(data["valid_since_ns"]),
                expired_ns=_optional_count(data["expired_ns"]),
                pinned=_bool(data["pinned"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, PolicyError):
                raise
            raise PolicyError([("state", "malformed release state")]) from None


@dataclass
class ContractState:
    """State per release version of one contract."""

    releases: dict[str, ReleaseState] = field(default_factory=dict)

    @classmethod
    def fresh(cls, spec: ContractSpec, now_ns: int) -> ContractState:
        return cls({release.version: ReleaseState(now_ns) for release in spec.releases})

    def follow(self, spec: ContractSpec, now_ns: int) -> ContractState:
        """The state for a changed spec: known releases keep theirs, new ones start now,
        releases no longer in the spec are dropped."""
        return ContractState(
            {
                release.version: self.releases.get(release.version) or ReleaseState(now_ns)
                for release in spec.releases
            }
        )

    def of(self, version: str) -> ReleaseState:
        try:
            return self.releases[version]
        except KeyError:
            raise PolicyError([("version", "no such release in the contract")]) from None

    def to_data(self) -> dict[str, Any]:
        return {"releases": {v: state.to_data() for v, state in self.releases.items()}}

    @classmethod
    def from_data(cls, data: Any) -> ContractState:
        try:
            items = data["releases"].items()
        except (KeyError, TypeError, AttributeError):
            raise PolicyError([("state", "malformed contract state")]) from None
        return cls({_name(k): ReleaseState.from_data(v) for k, v in items})


def _name(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise PolicyError([("state", "a name must be a string of 1 to 64 characters")])
    return value


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError([("state", "a metric value must be a finite number")])
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError([("state", "a count or instant must be a non-negative integer")])
    return value


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError([("state", "a flag must be a boolean")])
    return value
