"""Covers transports/mqtt/inbox.py: calls posted from another thread run on the event loop in
order, a burst wakes the loop once, a failing call loses none of the others."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from transports.mqtt.inbox import Inbox


async def test_a_burst_from_a_thread_runs_in_order_with_one_wake_up() -> None:
    loop = asyncio.get_running_loop()
    inbox, seen, done = Inbox(), list[int](), asyncio.Event()
    inbox.loop = loop
    wake_ups = 0
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal wake_ups
        wake_ups += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:

        def burst() -> None:
            for i in range(1000):
                inbox.post(seen.append, i)

        thread = threading.Thread(target=burst)
        thread.start()  # the loop is busy until the thread is done: all 1000 queue up
        thread.join()
        inbox.post(lambda: done.set())
        await asyncio.wait_for(done.wait(), 5)
    finally:
        del loop.call_soon_threadsafe
    assert seen == list(range(1000))
    assert wake_ups == 1


async def test_a_failing_call_loses_none_of_the_others(caplog: pytest.LogCaptureFixture) -> None:
    inbox, seen, done = Inbox(), list[int](), asyncio.Event()
    inbox.loop = asyncio.get_running_loop()

    def fail() -> None:
        raise ValueError("a bug")

    def posts() -> None:
        inbox.post(fail)
        inbox.post(seen.append, 1)

    thread = threading.Thread(target=posts)
    thread.start()
    thread.join()
    inbox.post(done.set)
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [1]
    assert "a callback from paho failed" in caplog.text


def test_posts_without_a_loop_or_after_it_closed_are_dropped() -> None:
    inbox = Inbox()
    inbox.post(print, "never")  # no loop yet: dropped
    loop = asyncio.new_event_loop()
    loop.close()
    inbox.loop = loop
    inbox.post(print, "never")
    inbox.post(print, "never")  # the queue was cleared: this one asks the closed loop again
