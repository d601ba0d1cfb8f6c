"""Model functions the backend tests deploy: each takes a list of inputs, returns a list of outputs.

They are pickled by value (this module is not installed), so workers need not import it.
A model cannot name its worker by pid: each sandboxed worker has its own PID namespace, where its
pid is the same small number; :func:`process_id` tells worker processes apart instead.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

_PROCESS_ID: list[str] = []  # pickled empty with each model; filled in the worker process


def process_id() -> str:
    """A random name of the worker process running the model, the same for all its calls."""
    if not _PROCESS_ID:
        _PROCESS_ID.append(os.urandom(8).hex())
    return _PROCESS_ID[0]


def double(inputs: list[float]) -> list[float]:
    return [x * 2 for x in inputs]


def with_pid(inputs: list[Any]) -> list[list[Any]]:
    """Echo each input with the worker's :func:`process_id`, to tell replicas apart."""
    return [[x, process_id()] for x in inputs]


def batch_lengths(inputs: list[Any]) -> list[int]:
    """Each output is the size of the list the model was called with."""
    return [len(inputs)] * len(inputs)


def slow_square(inputs: list[float]) -> list[float]:
    """0.3 s per call whatever the batch size: a model that gains from batching."""
    time.sleep(0.3)
    return [x * x for x in inputs]


def sleepy(inputs: list[Any]) -> list[list[Any]]:
    """1 s per call, long enough to kill the worker mid-batch; outputs carry its process_id."""
    time.sleep(1.0)
    return [[x, process_id()] for x in inputs]


def fragile(inputs: list[Any]) -> list[Any]:
    """Raise on the input "boom", echo the rest."""
    if "boom" in inputs:
        raise ValueError("cannot predict boom")
    return list(inputs)


def short(inputs: list[Any]) -> list[Any]:
    """Drop the last output: a broken model."""
    return list(inputs)[:-1]


def opaque(inputs: list[Any]) -> list[Any]:
    """Return outputs msgpack cannot carry."""
    return [object() for _ in inputs]


def suicidal(inputs: list[Any]) -> list[Any]:
    """Kill its own worker on every call."""
    os.kill(os.getpid(), signal.SIGKILL)
    return list(inputs)


def scaler(factor: float) -> Any:
    """A closure capturing a value."""

    def scale(inputs: list[float]) -> list[float]:
        return [x * factor for x in inputs]

    return scale
