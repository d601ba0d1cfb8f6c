"""Fittable models the fit tests deploy (pickled by value: this module is not installed)."""

from __future__ import annotations

import os
import time
from typing import Any

from bus.fittable import Fittable


def predict_mean(state: dict[str, float], inputs: list[Any]) -> list[float]:
    return [state["mean"] for _ in inputs]


def fit_mean(data: Any, context: dict[str, Any]) -> dict[str, float]:
    """The mean of every value of every stream (or of the uploaded list)."""
    context["progress"]("averaging")
    values = [v for pts in data.values() for _, v in pts] if isinstance(data, dict) else data
    return {"mean": sum(values) / len(values)}


def fit_raises(data: Any, context: dict[str, Any]) -> dict[str, float]:
    raise ValueError("the data is all wrong")


def fit_hangs(data: Any, context: dict[str, Any]) -> dict[str, float]:
    context["progress"]("hanging")
    while True:
        time.sleep(0.1)


def fit_slow(data: Any, context: dict[str, Any]) -> dict[str, float]:
    context["progress"]("slow fit started")
    time.sleep(30)
    return fit_mean(data, context)


def fit_pause(data: Any, context: dict[str, Any]) -> dict[str, float]:
    """A fit that takes 3 s: long enough to stop the service during it."""
    context["progress"]("pausing")
    time.sleep(3)
    return fit_mean(data, context)


def fit_greedy(data: Any, context: dict[str, Any]) -> dict[str, float]:
    """A fit that wants two gigabytes."""
    hoard = bytearray(2048 * 1024 * 1024)
    return {"mean": float(len(hoard))}


def mean_model(fit: Any = fit_mean, mean: float = 0.0) -> Fittable:
    return Fittable(predict_mean, fit, state={"mean": mean})


def fit_by_data(data: Any, context: dict[str, Any]) -> dict[str, float]:
    """The mean, unless a value asks for a failure: 666 raises, 777 exits with status 7 (no
    result), 888 wants two gigabytes, 999 hangs. One model for every case of an image's fit."""
    values = [v for pts in data.values() for _, v in pts] if isinstance(data, dict) else data
    context["progress"](f"fitting {len(values)} values")
    if 666 in values:
        raise ValueError("the data is all wrong")
    if 777 in values:
        os._exit(7)
    if 888 in values:
        hoard = bytearray(2048 * 1024 * 1024)
        return {"mean": float(len(hoard))}
    if 999 in values:
        while True:
            time.sleep(0.1)
    return {"mean": sum(values) / len(values)}
