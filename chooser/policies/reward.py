"""Feedback to reward: a selection policy learns from a reward in ``[0, 1]``.

Feedback carries either a ``reward`` (used as is, after a range check) or the ``truth``, which
is compared with what the chosen model predicted: for numbers (or lists of numbers of one
length, by their mean absolute error) ``1 / (1 + err / scale)``, so an exact answer is 1 and an
error of ``scale`` is 0.5; for any other value, 1 when equal and 0 otherwise.
"""

from __future__ import annotations

import math
from typing import Any

from chooser.policies.spec import PolicyError

__all__ = ["difference", "reward_from_truth"]


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)] if math.isfinite(value) else None
    if isinstance(value, list | tuple) and value:
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float):
                return None
            if not math.isfinite(item):
                return None
            out.append(float(item))
        return out
    return None


def difference(a: Any, b: Any) -> float:
    """How far apart two answers are: the mean absolute difference of numbers (or lists of
    numbers of one length); otherwise 0.0 when equal and 1.0 when not. Shadow comparisons
    record this."""
    left, right = _numbers(a), _numbers(b)
    if left is not None and right is not None and len(left) == len(right):
        return math.fsum(abs(x - y) for x, y in zip(left, right, strict=True)) / len(left)
    return 0.0 if a == b else 1.0


def reward_from_truth(predicted: Any, truth: Any, scale: float = 1.0) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise PolicyError([("scale", "must be a positive number")])
    left, right = _numbers(predicted), _numbers(truth)
    if left is not None and right is not None and len(left) == len(right):
        return 1.0 / (1.0 + difference(left, right) / scale)
    return 1.0 if predicted == truth else 0.0
