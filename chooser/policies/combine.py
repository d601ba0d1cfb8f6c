"""Select and combine: one answer from several models' answers, each model's part shown.

``combine(mode, parts, weights, deadline_ns)`` where each ``Part`` is one model's answer (its
``output``) or failure (its ``error``) and, for ``first``, when it arrived (``arrived_ns``):

- ``mean``, ``median``, ``weighted``: numbers, or lists of numbers of one length (element by
  element). The first usable answer fixes the shape; an answer of another shape is left out
  (``used`` false, with a note). ``weighted`` is ``sum(w·x) / sum(w)`` over the models that
  answered (weights given per model; a model without one weighs 0); the median of an even
  count is the mean of the middle two.
- ``vote``: the most frequent answer (any msgpack-able value, compared by value); a tie goes to
  the answer given first in the models' order.
- ``first``: the answer that arrived first, no later than ``deadline_ns``; ties by models' order.

Failed models are shown with their error and never used. No usable answer is a
``PolicyError``. The result's ``parts`` list each model: ``model``, ``output``, ``error``,
``weight`` (``weighted``), ``used`` and ``note``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chooser.policies.spec import PolicyError

__all__ = ["COMBINE_MODES", "CombineMode", "Combined", "Part", "combine"]

CombineMode = Literal["mean", "median", "weighted", "vote", "first"]
COMBINE_MODES: tuple[CombineMode, ...] = ("mean", "median", "weighted", "vote", "first")


@dataclass(frozen=True, slots=True)
class Part:
    model: str
    output: Any = None
    error: str | None = None
    arrived_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Combined:
    value: Any
    parts: list[dict[str, Any]]


def combine(
    mode: CombineMode,
    parts: Sequence[Part],
    weights: Mapping[str, float] | None = None,
    deadline_ns: int | None = None,
) -> Combined:
    rows = [
        {"model": p.model, "output": p.output, "error": p.error, "used": False, "note": ""}
        for p in parts
    ]
    for row, part in zip(rows, parts, strict=True):
        if part.error is not None:
            row["note"] = "failed"
    if mode == "vote":
        value = _vote(parts, rows)
    elif mode == "first":
        value = _first(parts, rows, deadline_ns)
    else:
        value = _numeric(mode, parts, rows, weights or {})
    return Combined(value, rows)


def _answered(parts: Sequence[Part]) -> list[int]:
    return [k for k, part in enumerate(parts) if part.error is None]


def _none_usable() -> PolicyError:
    return PolicyError([("outputs", "no model gave a usable answer")])


def _key(value: Any) -> Any:
    """A hashable stand-in for a msgpack-able value, equal exactly when the values are."""
    if isinstance(value, list | tuple):
        return ("l", tuple(_key(item) for item in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((repr(_key(k)), _key(v)) for k, v in value.items())))
    if isinstance(value, bool) or value is None:
        return ("b", value)
    return ("v", value)


def _vote(parts: Sequence[Part], rows: list[dict[str, Any]]) -> Any:
    counts: dict[Any, list[int]] = {}
    for k in _answered(parts):
        counts.setdefault(_key(parts[k].output), []).append(k)
    if not counts:
        raise _none_usable()
    winners = max(counts.values(), key=lambda ks: (len(ks), -ks[0]))
    for k in winners:
        rows[k]["used"] = True
    for k in _answered(parts):
        if not rows[k]["used"]:
            rows[k]["note"] = "outvoted"
    return parts[winners[0]].output


def _first(parts: Sequence[Part], rows: list[dict[str, Any]], deadline_ns: int | None) -> Any:
    timely = []
    for k in _answered(parts):
        arrived = parts[k].arrived_ns
        if arrived is None or (deadline_ns is not None and arrived > deadline_ns):
            rows[k]["note"] = "after the deadline"
        else:
            timely.append((arrived, k))
    if not timely:
        raise _none_usable()
    _, chosen = min(timely)
    rows[chosen]["used"] = True
    for _, k in timely:
        if k != chosen:
            rows[k]["note"] = "not first"
    return parts[chosen].output


def _shape(value: Any) -> int | None:
    """-1 for a number, the length for a list of numbers, None for anything else."""
    if _is_number(value):
        return -1
    if isinstance(value, list | tuple) and value and all(_is_number(x) for x in value):
        return len(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numeric(
    mode: CombineMode,
    parts: Sequence[Part],
    rows: list[dict[str, Any]],
    weights: Mapping[str, float],
) -> Any:
    used: list[int] = []
    shape: int | None = None
    for k in _answered(parts):
        own = _shape(parts[k].output)
        if own is None or (shape is not None and own != shape):
            rows[k]["note"] = (
                "not a number or a list of numbers" if own is None else "shape differs"
            )
            continue
        shape = own
        used.append(k)
    if mode == "weighted":
        for k, row in enumerate(rows):
            row["weight"] = float(weights.get(parts[k].model, 0.0))
        used = [k for k in used if rows[k]["weight"] > 0]
    if not used or shape is None:
        raise _none_usable()
    for k in used:
        rows[k]["used"] = True
    columns = [[parts[k].output] for k in used] if shape == -1 else [parts[k].output for k in used]
    width = 1 if shape == -1 else shape
    merged = []
    for j in range(width):
        column = [float(values[j]) for values in columns]
        if mode == "mean":
            merged.append(math.fsum(column) / len(column))
        elif mode == "median":
            merged.append(_median(column))
        else:
            ws = [rows[k]["weight"] for k in used]
            merged.append(math.fsum(w * x for w, x in zip(ws, column, strict=True)) / math.fsum(ws))
    return merged[0] if shape == -1 else merged


def _median(column: list[float]) -> float:
    ordered = sorted(column)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
