"""Starting and stopping the real services tests run as subprocesses (brokers, engines)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

__all__ = ["stop_process", "wait_until_serving"]


def wait_until_serving(
    process: subprocess.Popen[bytes],
    is_ready: Callable[[], bool],
    *,
    what: str,
    log_tail: Callable[[], str],
    timeout_s: float,
    poll_s: float = 0.02,
) -> None:
    """Return once ``is_ready()``; RuntimeError (with the log's tail) if the process exits or
    ``timeout_s`` passes first — then the process is stopped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log_tail()}")
        if is_ready():
            return
        time.sleep(poll_s)
    stop_process(process, timeout_s=5.0)
    raise RuntimeError(f"{what} did not start within {timeout_s:g} s: {log_tail()}")


def stop_process(process: subprocess.Popen[bytes] | None, *, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; nothing if it already exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)
