"""The service's health, for process supervisors (Kubernetes probes, systemd watchdogs).

``modelbus serve --health-file PATH`` writes the wall-clock time (ns) to PATH once start-up is
done — the registry open and migrated, the backend running, every slot subscribed on the bus —
and again every ``interval_s`` while the service's event loop turns. ``modelbus health --file
PATH --max-age S`` (:func:`check_health_file`) exits 0 while the file is younger than S.

So the file's existence means *ready* (start-up finished) and its freshness means *alive* (the
loop that answers requests is not stuck). It says nothing about the bus broker itself, which
the broker's own probes watch, nor about other instances: each proxy has its own file.
The file is replaced atomically (write, then rename), so a probe never reads half of it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

__all__ = ["check_health_file", "keep_health_file"]


async def keep_health_file(
    path: Path,
    interval_s: float,
    until: anyio.Event,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Write the time to ``path`` now and every ``interval_s`` until ``until`` is set (the
    service begins to stop) or the task is cancelled; then remove it, so a draining or stopped
    service is never read as healthy."""
    try:
        _write(path)
        task_status.started()
        while not until.is_set():
            with anyio.move_on_after(interval_s):
                await until.wait()
            if not until.is_set():
                _write(path)
    finally:
        path.unlink(missing_ok=True)


def check_health_file(path: Path, max_age_s: float, *, now_ns: int | None = None) -> str | None:
    """None if ``path`` holds a time younger than ``max_age_s``; otherwise why not."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return f"{path} does not exist: the service has not finished starting"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    try:
        written_ns = int(text.strip())
    except ValueError:
        return f"{path} does not hold a time"
    age_s = ((time.time_ns() if now_ns is None else now_ns) - written_ns) / 1e9
    if age_s > max_age_s:
        return f"{path} was last written {age_s:.1f} s ago (more than {max_age_s:g} s)"
    return None


def _write(path: Path) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{time.time_ns()}\n")
    partial.replace(path)
