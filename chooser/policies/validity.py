"""Validity gates: may a release serve yet, and if not, why not (a sentence a person can act on).

``verdict(gate, state, now_ns)`` is pure. A time gate knows when it opened
(``added_ns + seconds``); a count or metric gate opens when it is first observed open, so the
contract latches ``valid_since_ns`` when it refreshes (``Contract.refresh``) and the phase-in
counts from there. A latched release is valid whatever the gate says later.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from chooser.policies.spec import (
    AfterRequests,
    AfterTime,
    Gate,
    Immediately,
    MetricGate,
    Never,
)
from chooser.policies.state import ReleaseState

__all__ = ["Verdict", "verdict"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``valid`` with ``since_ns`` (None: "now", for a gate that cannot know), or a reason."""

    valid: bool
    since_ns: int | None = None
    reason: str = ""


def verdict(gate: Gate, state: ReleaseState, now_ns: int) -> Verdict:
    if state.valid_since_ns is not None:
        return Verdict(True, state.valid_since_ns)
    if isinstance(gate, Immediately):
        return Verdict(True, state.added_ns)
    if isinstance(gate, Never):
        return Verdict(False, reason="never valid: shadow only")
    if isinstance(gate, AfterTime):
        opens_ns = state.added_ns + round(gate.seconds * 1e9)
        if now_ns >= opens_ns:
            return Verdict(True, opens_ns)
        waited = max(0, now_ns - state.added_ns) / 1e9
        return Verdict(False, reason=f"not yet valid: {waited:.0f} of {gate.seconds:g} s")
    if isinstance(gate, AfterRequests):
        if state.served >= gate.count:
            return Verdict(True)
        return Verdict(False, reason=f"not yet valid: {state.served} of {gate.count} answers")
    return _metric(gate, state)


def _metric(gate: MetricGate, state: ReleaseState) -> Verdict:
    fed = state.metrics.get(gate.metric)
    samples = 0 if fed is None else fed.samples
    if fed is None or samples < gate.min_samples:
        return Verdict(
            False,
            reason=f"not yet valid: {samples} of {gate.min_samples} values of {gate.metric} fed",
        )
    if _OPS[gate.op](fed.value, gate.threshold):
        return Verdict(True)
    return Verdict(
        False,
        reason=f"not yet valid: {gate.metric} = {fed.value:g}, needs {gate.op} {gate.threshold:g}",
    )
