"""Range-API models and their metadata for the forecast tests, defined here so the closure
archives carry them by value (the workers never import this module)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

LA = "America/Los_Angeles"
DAY = ("2018-01-30 00:00:00 PST", "2018-01-31 00:00:00 PST")
HOUR_NS = 3600 * 10**9
DAY_START_NS = 1517299200 * 10**9  # 2018-01-30 00:00 PST


def flat(value: float) -> Callable[[list[Any]], list[Any]]:
    """A range model answering ``value`` at every step of every segment (and ``value`` itself
    to a direct call with a str input)."""

    def predict(inputs: list[Any]) -> list[Any]:
        return [value if isinstance(x, str) else [value] * x["points"] for x in inputs]

    return predict


def counting(value: float, mark: str) -> Callable[[list[Any]], list[Any]]:
    """Like :func:`flat`, printing ``mark`` per call to its replica's log (to count calls: a
    sandboxed model can write nothing else the test can read)."""

    def predict(inputs: list[Any]) -> list[Any]:
        print(mark, flush=True)
        return [[value] * x["points"] for x in inputs]

    return predict


def failing() -> Callable[[list[Any]], list[Any]]:
    def predict(inputs: list[Any]) -> list[Any]:
        raise RuntimeError("the weather service is down")

    return predict


def hanging(delay_s: float) -> Callable[[list[Any]], list[Any]]:
    def predict(inputs: list[Any]) -> list[Any]:
        time.sleep(delay_s)
        return [[0.0] * x["points"] for x in inputs]

    return predict


def short(value: float) -> Callable[[list[Any]], list[Any]]:
    """A model answering one value too few: the wrong shape."""

    def predict(inputs: list[Any]) -> list[Any]:
        return [[value] * (x["points"] - 1) for x in inputs]

    return predict


def with_rule(value: float, rule: Callable[..., Any]) -> Callable[[list[Any]], list[Any]]:
    """A range model shipping ``rule`` as its ``can_predict``."""
    predict = flat(value)
    predict.can_predict = rule  # type: ignore[attr-defined]
    return predict


def until_noon(start: Any, end: Any, resolution: int) -> bool:
    """Able before 2018-01-30 12:00 PST (20:00 UTC) only."""
    return bool(end.timestamp() <= 1517342400)


def raising(start: Any, end: Any, resolution: int) -> bool:
    raise ValueError("no idea")


def stuck(start: Any, end: Any, resolution: int) -> bool:
    time.sleep(30)
    return True


def not_bool(start: Any, end: Any, resolution: int) -> Any:
    return "yes"


def meta(
    first_hour: int,
    last_hour: int,
    *,
    model_type: str = "thermal",
    context: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata covering 2018-01-30 from ``first_hour`` to ``last_hour`` (24: midnight), LA."""
    end = f"2018-01-30 {last_hour:02}:00" if last_hour < 24 else "2018-01-31 00:00"
    return {
        "type": model_type,
        "context": context or {"zone": "A"},
        "resolution_s": 900,
        "coverage": {
            "timezone": LA,
            "ranges": [{"start": f"2018-01-30 {first_hour:02}:00", "end": end}],
        },
        **extra,
    }


def rule_meta(**extra: Any) -> dict[str, Any]:
    return {
        "type": "thermal",
        "context": {"zone": "A"},
        "resolution_s": 900,
        "has_can_predict": True,
        **extra,
    }


def runs(answer: dict[str, Any]) -> list[tuple[int, int, str]]:
    """The reply's points as runs ``(first, end, "name:version")`` of half-hour indices of the
    day (0-48), with the same provenance ("" in a gap)."""
    found: list[tuple[int, int, str]] = []
    for ts, _, refs in answer["points"]:
        index = (ts - DAY_START_NS) // (HOUR_NS // 2)
        made = ",".join(f"{name}:{version}" for name, version in refs)
        if found and found[-1][2] == made and found[-1][1] == index:
            found[-1] = (found[-1][0], index + 1, made)
        else:
            found.append((index, index + 1, made))
    return found


def gaps(answer: dict[str, Any]) -> list[tuple[int, int, str]]:
    """The reply's gaps as ``(first, end, reason)`` in half-hour indices of the day."""
    half = HOUR_NS // 2
    return [
        ((start - DAY_START_NS) // half, (end - DAY_START_NS) // half, reason)
        for start, end, reason in answer["gaps"]
    ]
