"""Room on the disk of the data directory: a reserve kept free for the registry.

The registry (SQLite, its write-ahead log) and the spooled uploads share one disk. An upload
that fills it leaves the registry unable to commit anything — not even the upload's own
abort — so writers that can grow by a lot (uploads) ask :func:`ensure_room` first: it refuses,
with a :class:`~bus.errors.LimitExceeded` naming the free space and the reserve, any write that
would leave less than the reserve free. When the disk fills anyway (another program wrote to
it), SQLite's "database or disk is full" becomes :func:`disk_full` — the same typed error,
saying which disk and what to do — instead of an internal error.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from bus.errors import LimitExceeded

__all__ = ["DEFAULT_RESERVE_BYTES", "disk_full", "ensure_room", "free_bytes", "is_disk_full"]

DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024
"""Kept free for the registry and its write-ahead log (a few MB in use) with a wide margin."""


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def ensure_room(path: Path, need_bytes: int, reserve_bytes: int, *, what: str) -> None:
    """Refuse ``what`` (writing ``need_bytes`` under ``path``) when it would leave less than
    ``reserve_bytes`` free there. A reserve of 0 turns the check off: a full disk is then met
    as it comes (ENOSPC, SQLITE_FULL)."""
    if reserve_bytes <= 0:
        return
    free = free_bytes(path)
    if free - need_bytes >= reserve_bytes:
        return
    raise LimitExceeded(
        f"{what} needs {_mib(need_bytes)} but the service's disk ({path}) has {_mib(free)} "
        f"free, of which {_mib(reserve_bytes)} are kept for its registry: free space on that "
        "disk, or upload something smaller",
        path=str(path),
        need_bytes=need_bytes,
        free_bytes=free,
        reserve_bytes=reserve_bytes,
    )


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk is full: ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    return code == _SQLITE_FULL or (code is not None and "disk is full" in str(error))


def disk_full(path: Path, *, what: str) -> LimitExceeded:
    """The error for ``what`` failing because the disk holding ``path`` is full."""
    try:
        free = free_bytes(path)
    except OSError:
        free = -1
    return LimitExceeded(
        f"{what} failed: the disk holding {path} is full ({_mib(max(free, 0))} free); free "
        "space on it, then retry",
        path=str(path),
        free_bytes=free,
    )


_SQLITE_FULL = 13


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
