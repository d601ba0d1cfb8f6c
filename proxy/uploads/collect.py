"""Collecting artifacts: the files under ``artifacts/`` that no registered version refers to.

An artifact is kept while a version refers to it (versions are immutable and never deleted, so
it is kept for good), and for a grace time after it was last committed or announced as already
held (``upload.begin`` answering ``complete: true`` touches it), so a client may upload and then
deploy. Past that, it is deleted: uploads that were never deployed do not fill the disk.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Set
from pathlib import Path

__all__ = ["DEFAULT_UNUSED_FOR_S", "collect_artifacts"]

logger = logging.getLogger(__name__)

DEFAULT_UNUSED_FOR_S = 24 * 3600.0
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def collect_artifacts(
    artifact_dir: Path,
    referenced: Set[str],
    *,
    unused_for_s: float = DEFAULT_UNUSED_FOR_S,
    now_s: float | None = None,
) -> list[str]:
    """Delete the artifacts not in ``referenced`` untouched for ``unused_for_s``; their digests.
    Blocking (it stats every artifact): run it in a worker thread."""
    horizon = (time.time() if now_s is None else now_s) - unused_for_s
    deleted = []
    for path in sorted(artifact_dir.iterdir()):
        if not _DIGEST.match(path.name) or path.name in referenced or not path.is_file():
            continue
        try:
            if path.stat().st_mtime < horizon:
                path.unlink()
                deleted.append(path.name)
        except FileNotFoundError:
            continue
    if deleted:
        logger.info("collected %d artifacts no version refers to", len(deleted))
    return deleted
