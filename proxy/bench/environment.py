"""The environment a benchmark ran in, printed with its figures: they compare only within it.

Cores (the machine's and those this process may use), the load when it started (the machines
are shared), the event loop our programs run on (:func:`bus.runner.event_loop_name`), Python
and the versions of the libraries on the measured path. A library that is not installed is
said so, never an error.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

from bus import runner

__all__ = ["LIBRARIES", "environment_line"]

LIBRARIES = ("pynacl", "pyzmq", "msgpack", "paho-mqtt", "anyio", "uvloop", "pydantic", "aiohttp")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _usable_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def environment_line() -> str:
    """One line: ``environment: 2 cores (2 usable), load 0.4, uvloop, CPython 3.11.7, ...``."""
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    versions = ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    return (
        f"environment: {os.cpu_count() or '?'} cores ({_usable_cores()} usable), load {load} "
        f"at start, event loop {runner.event_loop_name()}, "
        f"{platform.python_implementation()} {platform.python_version()}; {versions}"
    )
