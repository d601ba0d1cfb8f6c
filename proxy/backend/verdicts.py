"""``can_predict`` questions: asked of a model in its own worker, never in the service.

A closure archive (or function file) may ship ``can_predict(start, end, resolution) -> bool`` as
an attribute of its model function (``predict.can_predict = rule``; cloudpickle keeps function
attributes). The question travels as an ordinary input of a ``batch`` (replica protocol, §18.8 of
``bus/PROTOCOL.md``), in a shape no model input takes by accident::

    {"modelbus.can_predict": {"start_ns": int, "end_ns": int, "resolution_s": int,
                              "time_limit_s": float}}

The worker answers it instead of passing it to the model (the other inputs of the batch go to the
model as usual) with one output::

    {"verdict": true | false}                 the rule's answer
    {"verdict": null, "reason": str}           no rule, it raised, it ran past the time limit,
                                               or it returned something other than a bool

The rule runs on a thread of its own, with ``start`` and ``end`` as timezone-aware UTC datetimes
and ``resolution`` in seconds; past ``time_limit_s`` the worker answers with a reason and leaves
the thread behind (a daemon: it cannot be killed, and it never blocks the model's batches).
:func:`ask` is the backend's call; a verdict that is not ``True`` means "cannot".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "QUESTION_KEY",
    "Verdict",
    "answer",
    "answer_questions",
    "ask",
    "is_question",
    "question",
]

QUESTION_KEY = "modelbus.can_predict"
_NS = 10**9
_MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class Verdict:
    """A model's answer: ``able`` True only for a ``True`` from its rule; else ``reason``."""

    able: bool
    reason: str = ""


class Predictor(Protocol):
    async def predict(
        self, name: str, version: str, inputs: list[Any], timeout_s: float
    ) -> list[Any]: ...


def question(start_ns: int, end_ns: int, resolution_s: int, time_limit_s: float) -> dict[str, Any]:
    """The input asking a model's ``can_predict`` about ``[start_ns, end_ns)``."""
    return {
        QUESTION_KEY: {
            "start_ns": start_ns,
            "end_ns": end_ns,
            "resolution_s": resolution_s,
            "time_limit_s": time_limit_s,
        }
    }


def is_question(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and QUESTION_KEY in value


async def ask(
    backend: Predictor,
    name: str,
    version: str,
    start_ns: int,
    end_ns: int,
    resolution_s: int,
    *,
    time_limit_s: float,
) -> Verdict:
    """Ask ``name:version``'s ``can_predict`` in its worker; a bus error (no replica, the backend
    timed out) propagates, so the caller can tell "cannot" from "could not ask"."""
    asked = question(start_ns, end_ns, resolution_s, time_limit_s)
    [output] = await backend.predict(name, version, [asked], timeout_s=time_limit_s + 5.0)
    return _read(output)


def _read(output: object) -> Verdict:
    if isinstance(output, dict) and output.get("verdict") is True:
        return Verdict(True)
    if isinstance(output, dict) and output.get("verdict") is False:
        return Verdict(False, "can_predict said no")
    if isinstance(output, dict) and isinstance(output.get("reason"), str):
        return Verdict(False, str(output["reason"])[:_MAX_REASON])
    return Verdict(False, "the worker's answer to can_predict is not a verdict")


def answer_questions(
    inputs: list[Any], run_model: Callable[[list[Any]], list[Any]], func: Callable[..., Any]
) -> list[Any]:
    """The outputs of a chunk of inputs: questions answered here, the rest by ``run_model``."""
    if not any(is_question(value) for value in inputs):
        return run_model(inputs)
    rest = [value for value in inputs if not is_question(value)]
    outputs = iter(run_model(rest) if rest else [])
    return [answer(func, value) if is_question(value) else next(outputs) for value in inputs]


def answer(func: Callable[..., Any], value: dict[str, Any]) -> dict[str, Any]:
    """Run ``func.can_predict`` on one question, with its time limit (worker side)."""
    rule = getattr(func, "can_predict", None)
    spec = value[QUESTION_KEY]
    if not callable(rule):
        return {"verdict": None, "reason": "the model ships no can_predict"}
    try:
        start = datetime.fromtimestamp(int(spec["start_ns"]) / _NS, UTC)
        end = datetime.fromtimestamp(int(spec["end_ns"]) / _NS, UTC)
        resolution, limit = int(spec["resolution_s"]), float(spec["time_limit_s"])
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return {"verdict": None, "reason": "a malformed can_predict question"}
    found: list[Any] = []

    def run() -> None:
        try:
            found.append(rule(start, end, resolution))
        except BaseException as exc:  # the model's own code: any failure is "cannot"
            found.append(_Raised(f"can_predict raised {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name="can_predict", daemon=True)
    thread.start()
    thread.join(max(0.0, limit))
    if not found:
        return {"verdict": None, "reason": f"can_predict did not answer within {limit:g} s"}
    result = found[0]
    if isinstance(result, _Raised):
        return {"verdict": None, "reason": result.reason[:_MAX_REASON]}
    if not isinstance(result, bool):
        return {"verdict": None, "reason": f"can_predict returned a {type(result).__name__}"}
    return {"verdict": result}


@dataclass(frozen=True, slots=True)
class _Raised:
    reason: str
