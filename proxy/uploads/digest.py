"""The running SHA-256 of an upload's acknowledged prefix, so that commit does not hash the whole
spool file again, serially, after the last chunk.

Chunks are hashed in index order as the contiguous prefix advances: from the bytes just received
when they are held (a chunk that arrives ahead of the prefix is held in memory only within
``window`` chunks of it), else read back from the spool file. The uploads module calls
:meth:`PrefixDigest.store` in a worker thread with the upload's lock held, so writes, held bytes
and hashing follow one order, and never writes a chunk again once it is acknowledged (hashed).
The state lives in memory only: after a restart of the service a resumed upload has none, and
commit hashes the spool file instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["PrefixDigest", "read_at", "write_at"]


class PrefixDigest:
    """SHA-256 of chunks ``0 .. next_index - 1`` of one upload's spool file."""

    def __init__(self, spool: Path, chunk_size: int, window: int) -> None:
        self.spool = spool
        self.chunk_size = chunk_size
        self.window = window
        self.next_index = 0
        self._hash = hashlib.sha256()
        self._held: dict[int, bytes] = {}

    @property
    def held(self) -> int:
        """How many chunks ahead of the prefix are held in memory (at most ``window``)."""
        return len(self._held)

    def store(self, index: int, data: bytes, next_index: int) -> None:
        """Write chunk ``index`` at its offset and hash the prefix up to ``next_index`` (blocking:
        call it in a worker thread, the upload's lock held)."""
        write_at(self.spool, index * self.chunk_size, data)
        if index < self.next_index + self.window:
            self._held[index] = data
        else:
            self._held.pop(index, None)  # an older copy held must not outlive the file's bytes
        for pending in range(self.next_index, next_index):
            chunk = self._held.pop(pending, None)
            if chunk is None:
                chunk = read_at(self.spool, pending * self.chunk_size, self.chunk_size)
            self._hash.update(chunk)
            self.next_index = pending + 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_at(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
