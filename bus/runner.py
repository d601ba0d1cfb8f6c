"""Running a coroutine to completion: asyncio, on uvloop's event loop where it is installed.

Every program of ours (``modelbus`` commands, the bus forwarder, benchmarks, the container
manager's background session) starts its event loop here, so all of them get the same loop.
uvloop (libuv) runs the same asyncio code with a cheaper loop: here it takes about a fifth off
the CPU time of a prediction round trip. ``MODELBUS_EVENT_LOOP=asyncio`` selects the standard
library's loop instead (to compare, or to debug with asyncio's debug mode).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio

__all__ = ["EVENT_LOOP_ENV", "event_loop_name", "run"]

EVENT_LOOP_ENV = "MODELBUS_EVENT_LOOP"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses in this environment."""
    wanted = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise ValueError(f"{EVENT_LOOP_ENV}={wanted!r}: choose uvloop or asyncio")
    if wanted == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if wanted == "uvloop":
        raise ValueError(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed")
    return "asyncio"


def run(function: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``function(*args, **kwargs)`` on a new event loop and return its result."""
    return anyio.run(
        functools.partial(function, *args, **kwargs),
        backend="asyncio",
        backend_options={"use_uvloop": event_loop_name() == "uvloop"},
    )
