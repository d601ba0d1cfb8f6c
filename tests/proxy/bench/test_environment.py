"""The environment line the benchmarks print (proxy/bench/environment.py)."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from bus import runner
from proxy.bench.environment import LIBRARIES, environment_line


def test_the_line_names_cores_loop_and_each_library_with_its_version() -> None:
    line = environment_line()
    assert line.startswith(f"environment: {os.cpu_count()} cores (")
    assert f"event loop {runner.event_loop_name()}" in line
    for name in LIBRARIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        assert f"{name} {version}" in line


def test_a_missing_library_is_said_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.bench.environment.LIBRARIES", ("no-such-distribution-h18",))
    assert "no-such-distribution-h18 not installed" in environment_line()
