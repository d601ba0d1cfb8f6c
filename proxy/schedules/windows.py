"""What the scheduler (:mod:`proxy.schedules.scheduler`) works with around a window: the data a
run reads (:class:`WindowData`), its seams — the inputs it reads (:class:`WindowInputs`), the
model it calls (:data:`Predict`, a batch of windows at a time) and the outputs it publishes
(:class:`WindowOutputs`) — and a window as one model input (:func:`model_input`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bus.errors import BusError, InternalError

__all__ = [
    "Outcome",
    "Point",
    "Predict",
    "PredictOne",
    "WindowData",
    "WindowInputs",
    "WindowOutputs",
    "model_input",
    "one_at_a_time",
]

logger = logging.getLogger(__name__)

Point = tuple[int, Any]
"""One data point of an input series: its time (ns) and its value."""


@dataclass(frozen=True, slots=True)
class WindowData:
    """What a window's model call gets: its key and bounds and each input's points in it."""

    schedule: str
    key: str
    start_ns: int
    end_ns: int
    series: dict[str, list[Point]]


class WindowInputs(Protocol):
    def new_pass(self) -> None:
        """A scheduler pass begins: what was read before may have changed."""
        ...

    async def read(self, uris: Sequence[str], start_ns: int, end_ns: int) -> dict[str, list[Point]]:
        """Each input URI's points with ``start_ns <= time < end_ns``, oldest first."""
        ...


class WindowOutputs(Protocol):
    async def publish(self, output_uri: str, key: str, document: dict[str, Any]) -> None:
        """Publish a window's result (persisted, so a re-run replaces it)."""
        ...


Outcome = tuple[str, Any] | BusError
"""What a model call gave one window: (the version that answered, its output), or its error."""

Predict = Callable[[str, Sequence[WindowData]], Awaitable[Sequence[Outcome]]]
"""Call a model with windows of one pass (of any schedules using it): one outcome per window,
in order. An exception raised out of the call fails every window of it."""

PredictOne = Callable[[str, WindowData], Awaitable[tuple[str, Any]]]
"""Call a model with one window: (the version that answered, its output), or raise."""


def one_at_a_time(predict: PredictOne) -> Predict:
    """A :data:`Predict` calling ``predict`` once per window, in order: what it raises is that
    window's outcome (anything but a BusError, a bug, is logged and becomes an InternalError
    naming only its type)."""

    async def each(model: str, windows: Sequence[WindowData]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for data in windows:
            try:
                outcomes.append(await predict(model, data))
            except BusError as error:
                outcomes.append(error)
            except Exception as exc:  # a bug in one window's call fails that window only
                logger.error("window %s of %s failed", data.key, data.schedule, exc_info=exc)
                outcomes.append(InternalError(type(exc).__name__))
        return outcomes

    return each


def model_input(input_type: str, data: WindowData) -> Any:
    """A window as one model input: for a numeric model (doubles, floats, integers) the values
    of every input series, in input order then time order — values that are not numbers of
    that kind are left out, so one stray message cannot fail every window —; for a strings
    model a JSON document ``{schedule, window, start_ns, end_ns, series: {uri: [[ts_ns, value],
    ...]}}`` (its UTF-8 bytes for a bytes model)."""
    if input_type in ("doubles", "floats", "integers"):
        kinds: tuple[type, ...] = (int,) if input_type == "integers" else (int, float)
        return [
            value
            for points in data.series.values()
            for _, value in points
            if isinstance(value, kinds) and not isinstance(value, bool)
        ]
    document = {
        "schedule": data.schedule,
        "window": data.key,
        "start_ns": data.start_ns,
        "end_ns": data.end_ns,
        "series": {uri: [[ts, value] for ts, value in pts] for uri, pts in data.series.items()},
    }
    if input_type == "bytes":
        return json.dumps(document).encode()
    return json.dumps(document)
