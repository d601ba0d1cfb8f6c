"""A model that can be fitted: ``predict`` closed over a state, and ``fit`` making a new state.

A closure archive (:mod:`bus.artifact`) holds one callable. A *fittable* model is a
:class:`Fittable` in that place — the archive format is unchanged::

    def fit(data, context):             # data: {stream URI: [[ts_ns, value], ...]}, or the
        values = [v for points in data.values() for _, v in points]   # uploaded JSON document
        return {"mean": sum(values) / len(values)}

    def predict(state, inputs):         # a list of inputs -> a list of outputs, as always
        return [state["mean"] for _ in inputs]

    model = Fittable(predict, fit, state={"mean": 0.0})
    await service.deploy_function("thermal", "1", model, "doubles")

Serving calls ``model(inputs)``, that is ``predict(state, inputs)``. A fit (``fit.start``,
:mod:`proxy.fitting`) loads the archive in a sandboxed one-shot worker, calls
``fit(data, context)`` and packs ``model.with_state(new_state)`` — the same ``predict`` and
``fit`` closed over the new state — as the new version's closure archive, so a fitted version
can itself be fitted again. ``context`` holds ``model``, ``parent_version``, ``new_version``,
``since_ns``, ``until_ns``, ``streams`` and ``progress``, a function taking a short text that
``modelbus fit status`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Fittable"]


@dataclass(frozen=True, slots=True)
class Fittable:
    """``predict(state, inputs) -> outputs`` and ``fit(data, context) -> state``, with a state."""

    predict: Callable[[Any, list[Any]], Any]
    fit: Callable[[Any, dict[str, Any]], Any]
    state: Any = None

    def __call__(self, inputs: list[Any]) -> Any:
        return self.predict(self.state, inputs)

    def with_state(self, state: Any) -> Fittable:
        return replace(self, state=state)
