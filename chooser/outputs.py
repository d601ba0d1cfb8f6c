"""The model call for range queries: one input per segment, and the validation of what comes back.

Input (``SegmentRequest.to_input()``, a msgpack/JSON-able dict)::

    {"type": "thermal", "context": {"zone": "A"},
     "start_ns": 1517299200000000000,   # segment start, epoch nanoseconds (UTC), inclusive
     "end_ns": 1517385600000000000,     # segment end, exclusive
     "step_s": 900,                      # the model's own resolution
     "points": 96,                       # (end_ns - start_ns) / step: the values expected
     "start": "2018-01-30T08:00:00Z", "end": "2018-01-31T08:00:00Z"}   # the same, readable

The integers are authoritative; the ISO strings are a convenience for model authors. Point ``k``
stands for ``[start_ns + k * step, start_ns + (k + 1) * step)``.

Output, either form:

- values: a list of exactly ``points`` numbers, point ``k`` at index ``k``;
- timestamped points: a list of ``[ts_ns, value]`` pairs, ``ts_ns`` one of the point instants,
  each at most once, in any order; points not given are missing (their asked points become gaps).

Numbers are ints or floats (not bools), finite. Anything else raises ``ModelOutputError`` naming
the model and the index of the first bad item; its message never repeats the model's values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from chooser.index import ModelRef
from chooser.places import Place
from chooser.plan import Choice, Segment
from chooser.timegrid import NS

__all__ = ["ModelOutputError", "ModelSeries", "SegmentRequest", "validate_output"]


class ModelOutputError(ValueError):
    """A model's answer is not a series on its segment's grid. Facts: ``model``, ``reason``,
    ``index`` (the first bad item, or None)."""

    def __init__(self, model: ModelRef, reason: str, index: int | None = None) -> None:
        where = "" if index is None else f" (item {index})"
        super().__init__(f"model {model}: {reason}{where}")
        self.model = model
        self.reason = reason
        self.index = index


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """One call of one model for one segment, at the model's resolution."""

    model: ModelRef
    model_type: str
    place: Place
    start_ns: int
    end_ns: int
    step_s: int

    @classmethod
    def for_choice(cls, model_type: str, segment: Segment, choice: Choice) -> SegmentRequest:
        return cls(
            choice.ref,
            model_type,
            segment.place,
            segment.start_ns,
            segment.end_ns,
            choice.resolution_s,
        )

    @property
    def points(self) -> int:
        return (self.end_ns - self.start_ns) // (self.step_s * NS)

    def to_input(self) -> dict[str, object]:
        return {
            "type": self.model_type,
            "context": self.place.as_context(),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "step_s": self.step_s,
            "points": self.points,
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
        }


def _iso(ns: int) -> str:
    instant = datetime.fromtimestamp(ns // NS, UTC).replace(microsecond=ns % NS // 1000)
    return instant.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """A validated answer: ``values[k]`` for ``start_ns + k * step_ns``, None where missing."""

    model: ModelRef
    start_ns: int
    step_ns: int
    values: tuple[float | None, ...]


def validate_output(request: SegmentRequest, output: object) -> ModelSeries:
    """Check a model's raw answer against its request; see the module docstring."""
    if not isinstance(output, Sequence) or isinstance(output, str | bytes):
        raise ModelOutputError(request.model, "the output is not a list")
    if output and isinstance(output[0], list | tuple):
        values = _from_points(request, output)
    else:
        values = _from_values(request, output)
    return ModelSeries(request.model, request.start_ns, request.step_s * NS, values)


def _number(model: ModelRef, item: object, index: int) -> float:
    if isinstance(item, bool) or not isinstance(item, int | float):
        raise ModelOutputError(model, "a value is not a number", index)
    try:
        value = float(item)
    except OverflowError:
        raise ModelOutputError(model, "a value is out of range", index) from None
    if not math.isfinite(value):
        raise ModelOutputError(model, "a value is NaN or infinite", index)
    return value


def _from_values(request: SegmentRequest, output: Sequence[object]) -> tuple[float | None, ...]:
    if len(output) != request.points:
        raise ModelOutputError(
            request.model, f"{len(output)} values for {request.points} points of the segment"
        )
    return tuple(_number(request.model, item, index) for index, item in enumerate(output))


def _from_points(request: SegmentRequest, output: Sequence[object]) -> tuple[float | None, ...]:
    model, step_ns = request.model, request.step_s * NS
    if len(output) > request.points:
        raise ModelOutputError(model, f"more than {request.points} timestamped points")
    values: list[float | None] = [None] * request.points
    for index, pair in enumerate(output):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ModelOutputError(model, "a timestamped point is not a [ts_ns, value] pair", index)
        instant, item = pair
        if isinstance(instant, bool) or not isinstance(instant, int):
            raise ModelOutputError(model, "a timestamp is not integer nanoseconds", index)
        if not request.start_ns <= instant < request.end_ns:
            raise ModelOutputError(model, "a timestamp is outside the segment", index)
        slot, off_grid = divmod(instant - request.start_ns, step_ns)
        if off_grid:
            raise ModelOutputError(model, "a timestamp is off the segment's grid", index)
        if values[slot] is not None:
            raise ModelOutputError(model, "a timestamp appears twice", index)
        values[slot] = _number(model, item, index)
    return tuple(values)
