"""bus.runner: every program's event loop — uvloop (a dependency) unless asked for asyncio."""

from __future__ import annotations

import asyncio

import pytest

from bus import runner


async def _loop_module(value: int) -> tuple[str, int]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__, value * 2


def test_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runner.EVENT_LOOP_ENV, raising=False)
    assert runner.event_loop_name() == "uvloop"
    module, doubled = runner.run(_loop_module, 21)
    assert module.startswith("uvloop")
    assert doubled == 42


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.EVENT_LOOP_ENV, "asyncio")
    module, _ = runner.run(_loop_module, 1)
    assert module.startswith("asyncio")


def test_an_unknown_loop_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.EVENT_LOOP_ENV, "trio")
    with pytest.raises(ValueError, match="choose uvloop or asyncio"):
        runner.run(_loop_module, 1)
