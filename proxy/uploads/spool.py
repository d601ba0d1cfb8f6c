"""An upload's local spool: a sparse file written chunk by chunk at its offset, and beside it
``<spool>.acked``, the acknowledged prefix (8 bytes), so a restarted proxy resumes from exactly
the last acknowledged chunk. Used by one proxy's own uploads; shared uploads keep their chunks
in the artifact store instead (:mod:`proxy.uploads.shared`).
"""

from __future__ import annotations

import os
from pathlib import Path

from proxy.registry.records import Upload

__all__ = ["make_sparse", "progress_path", "unfilled_bytes", "with_progress", "write_progress"]


def progress_path(upload: Upload) -> Path:
    return Path(upload.spool_path + ".acked")


def write_progress(upload: Upload, next_index: int) -> None:
    """The acknowledged prefix, 8 bytes big-endian, rewritten in place (a page-cache write)."""
    fd = os.open(progress_path(upload), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, next_index.to_bytes(8, "big"), 0)
    finally:
        os.close(fd)


def with_progress(upload: Upload) -> Upload:
    """``upload`` with the prefix its progress file records, when that is further along (the
    registry is written less often than the file)."""
    try:
        recorded = int.from_bytes(progress_path(upload).read_bytes()[:8], "big")
    except OSError:
        return upload
    if upload.next_index < recorded <= upload.chunk_count:
        return upload.model_copy(update={"next_index": recorded})
    return upload


def unfilled_bytes(spool_dir: Path) -> int:
    """What the spool files have yet to fill: their sizes less the blocks they hold."""
    total = 0
    for path in spool_dir.iterdir():
        try:
            stat = path.stat()
        except OSError:  # committed or discarded meanwhile
            continue
        total += max(stat.st_size - stat.st_blocks * 512, 0)
    return total


def make_sparse(path: Path, size: int) -> None:
    with path.open("wb") as file:
        file.truncate(size)
