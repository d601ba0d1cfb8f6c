"""One service per data directory: an exclusive lock held for the service's whole life.

Two services on one data directory would share the SQLite registry, the artifacts and the
replicas' directories, each believing it owns them. :func:`lock_data_dir` takes an exclusive
``flock`` on ``<data dir>/serve.lock`` — without waiting — and holds it until the context
closes. The kernel releases a ``flock`` when its last descriptor closes, so the lock goes with
the process however it ends (SIGKILL included) and a stale lock file never blocks a restart;
the descriptor is not inherited by the worker processes (PEP 446), so orphaned workers do not
hold it either. The file records the holder's pid, for the refusal's message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bus.errors import Conflict

__all__ = ["LOCK_FILE", "lock_data_dir"]

LOCK_FILE = "serve.lock"


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[Path]:
    """Hold ``data_dir`` (created if missing) for this process; :class:`Conflict` if another
    service holds it. Yields the lock file's path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise Conflict(
                f"the data directory {data_dir} is in use by another modelbus service"
                f"{holder}; stop it, or give this one its own --data-dir",
                data_dir=str(data_dir),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """`` (pid N)`` from the lock file, or nothing if it holds no pid."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""
